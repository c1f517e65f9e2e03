//! Every bus subject tether uses (section 8 of `docs/protocol.md`), built in one place.
//!
//! Names embedded in subjects are validated by the caller first ([`super::valid_device_id`],
//! [`super::check_topic`], [`super::valid_service`]), so they never contain `.`, `*`, `>` or
//! whitespace except the dots that separate topic tokens.

/// Direct messages to every session of a device.
pub fn device(device: &str) -> String {
    format!("tether.dev.{device}")
}

/// Backend requests to a device (NATS request/reply).
pub fn request(device: &str) -> String {
    format!("tether.req.{device}")
}

/// Presence requests for a device, answered by each shard holding a session.
pub fn presence(device: &str) -> String {
    format!("tether.presence.{device}")
}

/// The three exact subjects addressed to a device (direct, request, presence).
pub fn device_all(device: &str) -> [String; 3] {
    [self::device(device), request(device), presence(device)]
}

/// One NATS subscription covering [`device_all`]: `tether.*.<device>`. It also matches
/// `tether.topic.<device>` and `tether.up.<device>` when a one-token topic or a service has the
/// same name as the device; the shard classifies every subject it receives ([`parse`]), so such
/// a message only costs a wasted delivery, never a wrong one.
pub fn device_wildcard(device: &str) -> String {
    format!("tether.*.{device}")
}

/// Prefix of topic subjects.
pub const TOPIC_PREFIX: &str = "tether.topic.";

/// Messages published on a topic.
pub fn topic(topic: &str) -> String {
    format!("{TOPIC_PREFIX}{topic}")
}

/// Upstream messages to a backend service.
pub fn upstream(service: &str) -> String {
    format!("tether.up.{service}")
}

/// Prefix of the inbox subjects of one shard of one node: `tether.inbox.<node>.<shard>.`.
pub fn inbox_prefix(node: &str, shard: usize) -> String {
    format!("tether.inbox.{node}.{shard}.")
}

/// What kind of subject a shard received a message on, with the name it carries.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    Device(&'a str),
    Request(&'a str),
    Presence(&'a str),
    Topic(&'a str),
    Inbox {
        node: &'a str,
        shard: usize,
        seq: u64,
    },
    Other,
}

/// Classifies a subject.
pub fn parse(subject: &str) -> Parsed<'_> {
    if let Some(rest) = subject.strip_prefix("tether.dev.") {
        Parsed::Device(rest)
    } else if let Some(rest) = subject.strip_prefix("tether.req.") {
        Parsed::Request(rest)
    } else if let Some(rest) = subject.strip_prefix("tether.presence.") {
        Parsed::Presence(rest)
    } else if let Some(rest) = subject.strip_prefix(TOPIC_PREFIX) {
        Parsed::Topic(rest)
    } else if let Some(rest) = subject.strip_prefix("tether.inbox.") {
        let mut it = rest.split('.');
        match (it.next(), it.next(), it.next(), it.next()) {
            (Some(node), Some(shard), Some(seq), None) => match (shard.parse(), seq.parse()) {
                (Ok(shard), Ok(seq)) => Parsed::Inbox { node, shard, seq },
                _ => Parsed::Other,
            },
            _ => Parsed::Other,
        }
    } else {
        Parsed::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(parse(&device("tv-1")), Parsed::Device("tv-1"));
        assert_eq!(parse(&request("tv-1")), Parsed::Request("tv-1"));
        assert_eq!(parse(&presence("tv-1")), Parsed::Presence("tv-1"));
        assert_eq!(parse(&topic("news.a")), Parsed::Topic("news.a"));
        assert_eq!(
            parse(&format!("{}42", inbox_prefix("n1", 3))),
            Parsed::Inbox {
                node: "n1",
                shard: 3,
                seq: 42
            }
        );
        assert_eq!(parse("tether.inbox.n1.x.1"), Parsed::Other);
        assert_eq!(parse("other"), Parsed::Other);
        assert_eq!(upstream("billing"), "tether.up.billing");
    }
}

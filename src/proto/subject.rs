//! Every bus subject tether uses (section 8 of `docs/protocol.md`), built in one place.
//!
//! Names embedded in subjects are validated by the caller first ([`super::valid_device_id`],
//! [`super::check_topic`], [`super::valid_service`]), so they never contain `.`, `*`, `>` or
//! whitespace except the dots that separate topic tokens.

/// Direct messages to every session of a device.
pub fn device(device: &str) -> String {
    format!("tether.dev.{device}")
}

/// Direct messages one device `send`s to another, published by nodes only (nodes stamp `from`
/// with the sender's authenticated id; NATS permissions keep backends off this subject, see
/// `docs/operations.md`, "Security"). Received exactly like [`device`]: [`parse`] gives
/// [`Parsed::Device`] for both.
pub fn peer(device: &str) -> String {
    format!("tether.peer.{device}")
}

/// True for a subject backends publish on with a `from` of their own choosing: a node delivers
/// what arrives there only with a backend `from` (`svc:...` or none), never as a device.
pub fn is_backend_push(subject: &str) -> bool {
    subject.starts_with("tether.dev.")
}

/// Backend requests to a device (NATS request/reply).
pub fn request(device: &str) -> String {
    format!("tether.req.{device}")
}

/// Presence requests for a device, answered by each shard holding a session.
pub fn presence(device: &str) -> String {
    format!("tether.presence.{device}")
}

/// The exact subjects addressed to a device (direct from backends, direct from devices,
/// request, presence).
pub fn device_all(device: &str) -> [String; 4] {
    [
        self::device(device),
        peer(device),
        request(device),
        presence(device),
    ]
}

/// One NATS subscription covering [`device_all`]: `tether.*.<device>`. NATS also matches it
/// with every other two-token subject that ends in the device id (`tether.topic.<device>` for a
/// one-token topic of that name, `tether.up.<device>`, `tether.event.<device>`, ...), so whoever
/// receives through it keeps only what [`is_device_subject`] accepts: without that filter a
/// device subscribed to a topic named like itself would get each publish twice.
pub fn device_wildcard(device: &str) -> String {
    format!("{DEVICE_WILDCARD_PREFIX}{device}")
}

/// What [`device_wildcard`] puts before the device id.
pub const DEVICE_WILDCARD_PREFIX: &str = "tether.*.";

/// True when `subject` is one of [`device_all`]`(device)` or its mailbox announcement
/// ([`mailbox_notify`]): what a message received through
/// [`device_wildcard`]`(device)` must be to be kept.
pub fn is_device_subject(subject: &str, device: &str) -> bool {
    match parse(subject) {
        Parsed::Device(d) | Parsed::Request(d) | Parsed::Presence(d) | Parsed::MailboxNotify(d) => {
            d == device
        }
        _ => false,
    }
}

/// Prefix of the durable mailbox subjects: a backend publishes (with JetStream) to
/// `tether.mbox.<device>`, or to `tether.mbox.<device>.<collapse-key>`.
pub const MAILBOX_PREFIX: &str = "tether.mbox.";

/// Every mailbox subject of a device as the stream stores it (the plain subject is stored as
/// `tether.mbox.<device>._`, see [`crate::bus::jetstream`]): the filter of a replay.
pub fn mailbox_filter(device: &str) -> String {
    format!("{MAILBOX_PREFIX}{device}.>")
}

/// Where the mailbox stream republishes (headers only) each message it stored for `device`.
/// It matches [`device_wildcard`], so the shard holding the device hears of it without another
/// subscription.
pub fn mailbox_notify(device: &str) -> String {
    format!("tether.mboxn.{device}")
}

/// Receipts: published when `device` acknowledged a durable message.
pub fn receipt(device: &str) -> String {
    format!("tether.receipt.{device}")
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

/// Connection events of a device (`connect` / `disconnect`), published by the node holding
/// the session: `tether.event.<device>`.
pub fn event(device: &str) -> String {
    format!("tether.event.{device}")
}

/// A node's heartbeat: `tether.node.<node>`.
pub fn node_heartbeat(node: &str) -> String {
    format!("tether.node.{node}")
}

/// Prefix of the inbox subjects of one shard of one node: `tether.inbox.<node>.<shard>.`.
pub fn inbox_prefix(node: &str, shard: usize) -> String {
    format!("tether.inbox.{node}.{shard}.")
}

/// What kind of subject a shard received a message on, with the name it carries.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// `tether.dev.<device>` (a backend push) or `tether.peer.<device>` (another device's
    /// `send`): a message for this device's sessions.
    Device(&'a str),
    /// `tether.req.<device>`: a backend's NATS request for this device.
    Request(&'a str),
    /// `tether.presence.<device>`: a backend asks which shards hold this device.
    Presence(&'a str),
    /// `tether.topic.<topic>`: a publish on this topic.
    Topic(&'a str),
    /// The mailbox stream stored a message for this device.
    MailboxNotify(&'a str),
    /// `tether.inbox.<node>.<shard>.<seq>`: a receipt for a `send` with `ack` made by that
    /// shard.
    Inbox {
        /// The node that sent the message.
        node: &'a str,
        /// The shard that sent it (0-based).
        shard: usize,
        /// The shard's sequence number of the send awaiting this receipt.
        seq: u64,
    },
    /// Any other subject (not one a shard subscribes to, or malformed): ignored.
    Other,
}

/// Classifies a subject.
pub fn parse(subject: &str) -> Parsed<'_> {
    if let Some(rest) = subject
        .strip_prefix("tether.dev.")
        .or_else(|| subject.strip_prefix("tether.peer."))
    {
        Parsed::Device(rest)
    } else if let Some(rest) = subject.strip_prefix("tether.req.") {
        Parsed::Request(rest)
    } else if let Some(rest) = subject.strip_prefix("tether.presence.") {
        Parsed::Presence(rest)
    } else if let Some(rest) = subject.strip_prefix("tether.mboxn.") {
        Parsed::MailboxNotify(rest)
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
        assert_eq!(parse(&peer("tv-1")), Parsed::Device("tv-1"));
        assert!(is_backend_push(&device("tv-1")) && !is_backend_push(&peer("tv-1")));
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
        assert_eq!(
            parse(&mailbox_notify("tv-1")),
            Parsed::MailboxNotify("tv-1")
        );
        assert_eq!(parse("tether.mbox.tv-1"), Parsed::Other);
        assert_eq!(mailbox_filter("tv-1"), "tether.mbox.tv-1.>");
        assert_eq!(upstream("billing"), "tether.up.billing");
    }

    #[test]
    fn the_device_wildcard_keeps_only_device_subjects() {
        for kept in device_all("tv-1") {
            assert!(is_device_subject(&kept, "tv-1"), "{kept}");
        }
        for dropped in [
            topic("tv-1"),
            upstream("tv-1"),
            "tether.event.tv-1".to_string(),
            device("tv-2"),
        ] {
            assert!(!is_device_subject(&dropped, "tv-1"), "{dropped}");
        }
    }
}

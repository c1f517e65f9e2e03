//! The run plan and its schedules: what to connect to, from which source addresses, when each
//! client connects (constant, ramped or Poisson arrivals), and how the one global schedule is
//! split between worker processes.
//!
//! Splitting is exact by construction: every worker computes the same global schedule (same
//! formula, same seed) and takes the events whose global index `i` satisfies
//! `i % workers == worker`. Client `i` connects to target `i % targets` from source
//! `(i / targets) % sources`, so every (source, target) pair carries an equal share.

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// One WebSocket endpoint, resolved once before the run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Target {
    /// The URL as given.
    pub url: String,
    /// Resolved IPv4 socket address.
    pub addr: SocketAddr,
    /// `Host` header value (`host:port` as written in the URL).
    pub host: String,
    /// Request target: path plus optional `?query`.
    pub resource: String,
    /// A `wss://` URL: TLS, with the host (without the port) as SNI and certificate name.
    #[serde(default)]
    pub tls: bool,
}

impl Target {
    /// The host part of `host` (no port, no IPv6 brackets): the TLS server name.
    pub fn host_name(&self) -> &str {
        let h = match self.host.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => &self.host,
        };
        h.trim_start_matches('[').trim_end_matches(']')
    }
}

/// Parses and resolves a `ws://host:port/path?query` or `wss://...` URL.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let (rest, tls, default_port) = if let Some(r) = url.strip_prefix("ws://") {
        (r, false, 80)
    } else if let Some(r) = url.strip_prefix("wss://") {
        (r, true, 443)
    } else {
        return Err(format!("{url}: the URL must start with ws:// or wss://"));
    };
    let (authority, resource) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if authority.is_empty() {
        return Err(format!("{url}: missing host"));
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty())
    {
        authority.to_string()
    } else {
        format!("{}:{default_port}", authority.trim_end_matches(':'))
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("{url}: cannot resolve {with_port}: {e}"))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| format!("{url}: {with_port} has no IPv4 address"))?;
    Ok(Target {
        url: url.to_string(),
        addr,
        host: authority.to_string(),
        resource,
        tls,
    })
}

/// Parses `--source`: `A`, `A-B` (inclusive IPv4 range) or a comma-separated list of both.
pub fn parse_sources(spec: &str) -> Result<Vec<Ipv4Addr>, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parse = |s: &str| {
            s.trim()
                .parse::<Ipv4Addr>()
                .map_err(|_| format!("--source {part}: {s} is not an IPv4 address"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (u32::from(parse(a)?), u32::from(parse(b)?));
                if b < a {
                    return Err(format!("--source {part}: the range is reversed"));
                }
                if b - a >= 1 << 20 {
                    return Err(format!("--source {part}: more than 2^20 addresses"));
                }
                out.extend((a..=b).map(Ipv4Addr::from));
            }
            None => out.push(parse(part)?),
        }
    }
    if out.is_empty() {
        return Err("--source: no address given".into());
    }
    Ok(out)
}

/// How inter-arrival times are drawn.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Arrivals {
    /// Evenly spaced at the current rate.
    Constant,
    /// Exponential inter-arrival times at the current rate (seeded, identical in all workers).
    Poisson,
}

/// Connect rate: constant (`from == to`) or a linear ramp from `from` to `to` over `ramp_s`
/// seconds, staying at `to` afterwards.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Rate {
    pub from_per_s: f64,
    pub to_per_s: f64,
    pub ramp_s: f64,
}

impl Rate {
    /// Parses `R` or `A:B` (a ramp; its duration comes from `--ramp`).
    pub fn parse(spec: &str, ramp_s: f64) -> Result<Rate, String> {
        let num = |s: &str| {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("--rate {spec}: {s} is not a non-negative number"))
        };
        let (from, to) = match spec.split_once(':') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(spec)?, num(spec)?),
        };
        if to <= 0.0 {
            return Err(format!("--rate {spec}: the final rate must be above 0"));
        }
        if from != to && ramp_s <= 0.0 {
            return Err(format!(
                "--rate {spec} is a ramp: give its duration with --ramp"
            ));
        }
        if from == to && from <= 0.0 {
            return Err(format!("--rate {spec}: must be above 0"));
        }
        Ok(Rate {
            from_per_s: from,
            to_per_s: to,
            ramp_s: if from == to { 0.0 } else { ramp_s },
        })
    }

    /// Instantaneous rate at `t_s` seconds.
    pub fn at(&self, t_s: f64) -> f64 {
        if self.ramp_s <= 0.0 || t_s >= self.ramp_s {
            self.to_per_s
        } else {
            self.from_per_s + (self.to_per_s - self.from_per_s) * t_s / self.ramp_s
        }
    }

    /// Time of the `i`-th evenly spaced event (the inverse of the cumulative count).
    pub fn time_of(&self, i: u64) -> f64 {
        let i = i as f64;
        if self.ramp_s <= 0.0 {
            return i / self.to_per_s;
        }
        let (r0, r1, d) = (self.from_per_s, self.to_per_s, self.ramp_s);
        let in_ramp = r0 * d + (r1 - r0) * d / 2.0;
        if i >= in_ramp {
            return d + (i - in_ramp) / r1;
        }
        // count(t) = r0 t + a t^2 with a = (r1 - r0) / (2d); solve count(t) = i.
        let a = (r1 - r0) / (2.0 * d);
        if a.abs() < 1e-12 {
            return i / r0;
        }
        let disc = (r0 * r0 + 4.0 * a * i).max(0.0);
        (-r0 + disc.sqrt()) / (2.0 * a)
    }
}

/// What connected clients do.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// Binary echo messages to any RFC 6455 echo server; round trips.
    Echo,
    /// tether protocol: each client `send`s to its partner device; one-way delivery latency.
    D2d,
    /// tether protocol: a NATS publisher pushes to every device (`tether.dev.<device>`);
    /// delivery latency from the intended publish time.
    Push,
    /// tether protocol, durable delivery (`--durable` nodes): a JetStream publisher stores
    /// messages in each device's mailbox (before the devices connect: `preload`; once they
    /// are connected: `burst`); each device checks `seq` order and its messages' indices, and
    /// acknowledges cumulatively with `{"op":"ack","seq":N}`.
    Durable,
}

/// What a device speaks once its WebSocket is open (tether workloads).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// tether's device protocol (docs/protocol.md): `hello`, `send`, `msg`.
    #[default]
    Tether,
    /// A NATS client over WebSocket (nats-server's `websocket` listener): `CONNECT`, then
    /// `SUB dev.<device>`; the `d2d` workload publishes to `dev.<partner>` (`tether::nats::proto`).
    Nats,
}

/// Everything a worker needs to run its share. Sent to workers as one JSON line on stdin.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    pub targets: Vec<Target>,
    /// Source addresses to bind (with `IP_BIND_ADDRESS_NO_PORT`); empty: let the kernel choose.
    pub sources: Vec<Ipv4Addr>,
    pub clients: u64,
    pub rate: Rate,
    pub arrivals: Arrivals,
    pub seed: u64,
    pub hold_ms: u64,
    pub churn_per_s: f64,
    pub churn_ms: u64,
    /// Fraction (0..=1) of clients dropped at once by the reconnect storm; 0: no storm.
    pub storm_drop_fraction: f64,
    /// Initial backoff window: each dropped client waits a uniform random time in it.
    pub storm_backoff_ms: u64,
    /// Upper bound of the doubling backoff window after failed reconnects.
    pub storm_backoff_max_ms: u64,
    /// Give up on reconnecting after this long from the drop.
    pub storm_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub handshake_timeout_ms: u64,
    pub drain_timeout_ms: u64,
    /// Echo messages per second per connected client; 0: no messages.
    pub msg_rate_per_client: f64,
    pub msg_bytes: usize,
    pub workload: Workload,
    /// Device ids are `<prefix><global client index>` (tether workloads).
    pub device_prefix: String,
    /// NATS server URL for the push workload.
    pub nats_url: Option<String>,
    /// tether workloads: sign each device's HS256 token with this secret and present it as
    /// `Authorization: Bearer` (for nodes with authentication on); none: rely on `?device=`.
    #[serde(default)]
    pub device_jwt_secret: Option<String>,
    /// What devices speak: tether's protocol or NATS (`--protocol`).
    #[serde(default)]
    pub protocol: Protocol,
    /// `--protocol nats`: the `auth_token` every device presents in its `CONNECT`.
    #[serde(default)]
    pub device_token: Option<String>,
    /// Unanswered messages a connection may have before it skips sends (counted).
    pub msg_in_flight_max: u64,
    /// The hold waits (bounded) until every connected client sent this many (`--msg-min`).
    #[serde(default)]
    pub msg_min_per_client: u64,
    /// A scheduled event started later than this counts as lag.
    pub lag_threshold_us: u64,
    /// Durable messages the coordinator stores per device before the start (`--preload`).
    #[serde(default)]
    pub preload_per_device: u64,
    /// Messages each worker publishes per device once its devices are connected (`--burst`).
    #[serde(default)]
    pub burst_per_device: u64,
    /// Durable workload: a device acknowledges after this many messages (and at its last).
    #[serde(default)]
    pub ack_every: u64,
    /// JetStream publishes awaiting their acknowledgement, per publisher.
    #[serde(default)]
    pub publish_in_flight: usize,
    /// Durable workload: `?last_seq=` presented at the first connect (the stream's last
    /// sequence before the preload: everything the device could have processed before).
    #[serde(default)]
    pub last_seq: Option<u64>,
    pub workers: u32,
    /// TLS settings for `wss://` targets (present exactly when one target is `wss://`).
    #[serde(default)]
    pub tls: Option<crate::tls::TlsOptions>,
}

impl Plan {
    /// Messages each device must receive: the preloaded ones, then the burst.
    pub fn expected_per_device(&self) -> u64 {
        self.preload_per_device + self.burst_per_device
    }
}

/// Bytes of the message header: sequence number and intended send time.
pub const MSG_HEADER_BYTES: usize = 16;

/// Intended connect times (seconds from the start) of the global schedule, in order.
pub struct ConnectSchedule {
    rate: Rate,
    clients: u64,
    next: u64,
    t_s: f64,
    rng: Option<StdRng>,
}

impl ConnectSchedule {
    pub fn new(plan: &Plan) -> ConnectSchedule {
        ConnectSchedule {
            rate: plan.rate,
            clients: plan.clients,
            next: 0,
            t_s: 0.0,
            rng: (plan.arrivals == Arrivals::Poisson).then(|| StdRng::seed_from_u64(plan.seed)),
        }
    }
}

impl Iterator for ConnectSchedule {
    /// `(global client index, intended offset in seconds)`.
    type Item = (u64, f64);

    fn next(&mut self) -> Option<(u64, f64)> {
        if self.next >= self.clients {
            return None;
        }
        let i = self.next;
        self.next += 1;
        let t = match &mut self.rng {
            None => self.rate.time_of(i),
            Some(rng) => {
                let u: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
                let rate = self.rate.at(self.t_s).max(1e-9);
                self.t_s += -u.ln() / rate;
                self.t_s
            }
        };
        Some((i, t))
    }
}

/// Global client indexes owned by `worker` of `workers`, in schedule order.
pub fn worker_clients(clients: u64, worker: u32, workers: u32) -> u64 {
    let (w, n) = (u64::from(worker), u64::from(workers));
    if w >= clients {
        0
    } else {
        (clients - w).div_ceil(n)
    }
}

/// Whether the storm drops global client `i`: exactly `round(fraction * clients)` clients,
/// spread evenly over the index space (and so over workers, targets and sources).
pub fn storm_drops(i: u64, clients: u64, fraction: f64) -> bool {
    let d = (fraction * clients as f64).round() as u128;
    let (i, n) = (u128::from(i), u128::from(clients));
    n > 0 && (i + 1) * d / n > i * d / n
}

/// Timeline of the phases, in seconds from the start; identical in all workers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Phases {
    /// Intended time of the last scheduled connect: the ramp ends, the hold begins.
    pub connect_end_s: f64,
    pub hold_end_s: f64,
    pub churn_end_s: f64,
}

impl Phases {
    pub fn of(plan: &Plan) -> Phases {
        let connect_end_s = ConnectSchedule::new(plan).last().map_or(0.0, |(_, t)| t);
        let hold_end_s = connect_end_s + plan.hold_ms as f64 / 1000.0;
        let churn_end_s = if plan.churn_per_s > 0.0 {
            hold_end_s + plan.churn_ms as f64 / 1000.0
        } else {
            hold_end_s
        };
        Phases {
            connect_end_s,
            hold_end_s,
            churn_end_s,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn url_parsing() {
        let t = parse_url("ws://127.0.0.1:9000/echo?x=1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(t.host, "127.0.0.1:9000");
        assert_eq!(t.resource, "/echo?x=1");
        assert_eq!(parse_url("ws://127.0.0.1:9").unwrap().resource, "/");
        assert_eq!(parse_url("ws://127.0.0.1:9?a").unwrap().resource, "/?a");
        assert_eq!(parse_url("ws://127.0.0.1/").unwrap().addr.port(), 80);
        assert!(!parse_url("ws://127.0.0.1:9").unwrap().tls);
        let t = parse_url("wss://localhost:8443/echo").unwrap();
        assert!(t.tls);
        assert_eq!(t.host_name(), "localhost");
        assert_eq!(t.resource, "/echo");
        assert_eq!(parse_url("wss://127.0.0.1/").unwrap().addr.port(), 443);
        assert_eq!(
            parse_url("wss://127.0.0.1/").unwrap().host_name(),
            "127.0.0.1"
        );
        assert!(parse_url("http://x/").is_err());
    }

    #[test]
    fn sources() {
        let s = parse_sources("127.0.0.2-127.0.0.4,127.0.1.1").unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[3], Ipv4Addr::new(127, 0, 1, 1));
        assert!(parse_sources("127.0.0.4-127.0.0.2").is_err());
        assert!(parse_sources("x").is_err());
    }

    #[test]
    fn ramp_times_match_the_cumulative_count() {
        let r = Rate::parse("1000:3000", 2.0).unwrap();
        // Events in the ramp: 1000*2 + 2000*2/2 = 4000.
        assert!((r.time_of(4000) - 2.0).abs() < 1e-9);
        assert!((r.time_of(4000 + 3000) - 3.0).abs() < 1e-9);
        // Monotone, starts at 0.
        assert_eq!(r.time_of(0), 0.0);
        let mut last = -1.0;
        for i in 0..8000 {
            let t = r.time_of(i);
            assert!(t > last);
            last = t;
        }
        let c = Rate::parse("500", 0.0).unwrap();
        assert!((c.time_of(500) - 1.0).abs() < 1e-12);
        assert!(Rate::parse("0", 0.0).is_err());
        assert!(Rate::parse("10:20", 0.0).is_err());
    }

    #[test]
    fn worker_shares_partition_the_clients() {
        for clients in [0u64, 1, 7, 25_000] {
            for workers in 1..6u32 {
                let sum: u64 = (0..workers)
                    .map(|w| worker_clients(clients, w, workers))
                    .sum();
                assert_eq!(sum, clients);
            }
        }
    }

    #[test]
    fn storm_drops_exactly_the_fraction() {
        for (n, f, want) in [
            (1000u64, 0.3, 300usize),
            (7, 0.5, 4),
            (10, 1.0, 10),
            (10, 0.0, 0),
        ] {
            let got = (0..n).filter(|&i| storm_drops(i, n, f)).count();
            assert_eq!(got, want, "n={n} f={f}");
        }
    }

    #[test]
    fn poisson_mean_rate() {
        let mut plan = test_plan();
        plan.arrivals = Arrivals::Poisson;
        plan.clients = 20_000;
        plan.rate = Rate::parse("1000", 0.0).unwrap();
        let end = Phases::of(&plan).connect_end_s;
        assert!((end - 20.0).abs() < 1.0, "end {end}");
    }

    pub(crate) fn test_plan() -> Plan {
        Plan {
            targets: vec![parse_url("ws://127.0.0.1:1/").unwrap()],
            sources: vec![],
            clients: 10,
            rate: Rate::parse("10", 0.0).unwrap(),
            arrivals: Arrivals::Constant,
            seed: 1,
            hold_ms: 0,
            churn_per_s: 0.0,
            churn_ms: 0,
            storm_drop_fraction: 0.0,
            storm_backoff_ms: 1000,
            storm_backoff_max_ms: 10_000,
            storm_timeout_ms: 60_000,
            connect_timeout_ms: 5000,
            handshake_timeout_ms: 5000,
            drain_timeout_ms: 5000,
            msg_rate_per_client: 0.0,
            msg_bytes: 64,
            workload: Workload::Echo,
            device_prefix: "lg-".into(),
            nats_url: None,
            device_jwt_secret: None,
            protocol: Protocol::Tether,
            device_token: None,
            msg_in_flight_max: 1000,
            msg_min_per_client: 0,
            lag_threshold_us: 5000,
            preload_per_device: 0,
            burst_per_device: 0,
            ack_every: 10,
            publish_in_flight: 512,
            last_seq: None,
            workers: 1,
            tls: None,
        }
    }
}

//! Command-line interface of `tether-loadgen` and its translation into a [`Plan`].

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};

use crate::plan::{
    parse_sources, parse_url, Arrivals, Plan, Protocol, Rate, Workload, MSG_HEADER_BYTES,
};
use crate::tls::TlsOptions;

/// Open-loop WebSocket load generator: connects `--clients` clients on a schedule, holds them,
/// optionally churns and storms them, drains, and reports coordinated-omission-correct
/// latencies from HdrHistograms merged across its worker processes.
#[derive(Parser, Debug, Clone)]
#[command(name = "tether-loadgen", version)]
pub struct Args {
    /// Target URL (ws://host:port/path or wss://...); repeat to spread clients round-robin.
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
    /// Total clients to connect.
    #[arg(long)]
    pub clients: u64,
    /// Connects per second: `R`, or a ramp `A:B` (with --ramp).
    #[arg(long, default_value = "1000")]
    pub rate: String,
    /// Duration of the ramp from A to B (e.g. 30s).
    #[arg(long, default_value = "0s", value_parser = parse_duration_ms)]
    pub ramp: u64,
    /// Inter-arrival distribution of connects.
    #[arg(long, value_enum, default_value = "constant")]
    pub arrivals: ArrivalsArg,
    /// Seed of the Poisson schedule and the jitter (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Hold time after the last scheduled connect.
    #[arg(long, default_value = "0s", value_parser = parse_duration_ms)]
    pub hold: u64,
    /// Churn after the hold: disconnect and reconnect N clients per second (`N` or `N/s`).
    #[arg(long, value_parser = parse_per_s)]
    pub churn: Option<f64>,
    /// How long the churn phase lasts.
    #[arg(long, default_value = "10s", value_parser = parse_duration_ms)]
    pub churn_for: u64,
    /// Reconnect storm after hold/churn: drop this share of clients at once (`30%` or `0.3`).
    #[arg(long, value_parser = parse_fraction)]
    pub storm_drop: Option<f64>,
    /// First backoff window of a dropped client (uniform random wait in it).
    #[arg(long, default_value = "1s", value_parser = parse_duration_ms)]
    pub storm_backoff: u64,
    /// Largest backoff window (it doubles after each failed reconnect).
    #[arg(long, default_value = "10s", value_parser = parse_duration_ms)]
    pub storm_backoff_max: u64,
    /// Dropped clients give up after this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration_ms)]
    pub storm_timeout: u64,
    /// Source addresses to bind: `A`, `A-B` or a comma list (IP_BIND_ADDRESS_NO_PORT).
    #[arg(long)]
    pub source: Option<String>,
    /// Worker processes (default: enough for the open-files limit, at least one per CPU).
    #[arg(long)]
    pub workers: Option<u32>,
    /// TCP connect timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration_ms)]
    pub connect_timeout: u64,
    /// Upgrade (HTTP 101) timeout after the TCP connect; also bounds each write.
    #[arg(long, default_value = "10s", value_parser = parse_duration_ms)]
    pub handshake_timeout: u64,
    /// How long a closing client waits for the server's close frame.
    #[arg(long, default_value = "5s", value_parser = parse_duration_ms)]
    pub drain_timeout: u64,
    /// Echo messages per second per connected client (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub msg_rate: f64,
    /// Echo message size in bytes (at least 16: sequence number and send time).
    #[arg(long, default_value_t = 64)]
    pub msg_size: usize,
    /// What clients do once connected: `echo` (any echo server), or tether's protocol: `d2d`
    /// (each client sends to a partner device through the server) or `push` (a NATS publisher
    /// pushes to every device; needs --nats), or `durable` (durable delivery: messages stored in
    /// each device's JetStream mailbox by --preload and --burst; every device checks the `seq`
    /// order and acknowledges cumulatively; needs --nats and nodes with --durable). tether
    /// workloads present a per-device token with --device-jwt-secret, else `?device=ID` (a node
    /// started with --insecure-no-auth), and wait for `hello` before sending.
    #[arg(long, value_enum, default_value = "echo")]
    pub workload: WorkloadArg,
    /// Device id prefix for tether workloads (device ids are PREFIX + client index).
    #[arg(long, default_value = "lg-")]
    pub device_prefix: String,
    /// tether workloads against nodes with authentication on: each client presents an HS256
    /// token for its device id (`sub` = PREFIX + client index) signed with this secret.
    #[arg(long, value_name = "SECRET")]
    pub device_jwt_secret: Option<String>,
    /// What devices speak: `tether` (docs/protocol.md), or `nats`: each device is a NATS
    /// client over WebSocket (nats-server's `websocket` listener) that subscribes to
    /// `dev.<device id>`; with `--workload d2d` it publishes its messages to its partner's
    /// subject. A device is routable (its sends start) once the server answered the `PING`
    /// after its `SUB`.
    #[arg(long, value_enum, default_value = "tether")]
    pub protocol: ProtocolArg,
    /// `--protocol nats` against a server with token authentication: the `auth_token` every
    /// device presents in its `CONNECT`.
    #[arg(long, value_name = "TOKEN")]
    pub device_token: Option<String>,
    /// NATS server URL the push workload publishes to.
    #[arg(long)]
    pub nats: Option<String>,
    /// Durable workload: before the start, store N messages in every device's mailbox (a
    /// JetStream publish to `tether.mbox.<device>`); the devices then connect presenting
    /// `?last_seq=` (the stream's last sequence before the preload) and replay them.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub preload: u64,
    /// push and durable workloads: once the connects are over and every device has its
    /// `hello`, each worker publishes N messages to each of its devices as fast as NATS
    /// (push) or JetStream (durable, --publish-in-flight) takes them.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub burst: u64,
    /// Durable workload: a device acknowledges (cumulatively) after this many messages, and
    /// at its last one (with an `id`, so that the node confirms it).
    #[arg(long, default_value_t = 10)]
    pub ack_every: u64,
    /// JetStream publishes awaiting their acknowledgement, per publisher (the coordinator's
    /// preload and each worker's durable burst).
    #[arg(long, default_value_t = 512)]
    pub publish_in_flight: usize,
    /// Unanswered messages per connection before sends are skipped (and counted).
    #[arg(long, default_value_t = 1000)]
    pub msg_in_flight_max: u64,
    /// With `--msg-rate`: the hold does not end before every connected client has its `hello`
    /// (tether workloads) and has sent this many messages (bounded; docs/loadgen.md).
    #[arg(long, default_value_t = 0)]
    pub msg_min: u64,
    /// A scheduled connect or send starting later than this counts as lag.
    #[arg(long, default_value = "5ms", value_parser = parse_duration_us)]
    pub lag_threshold: u64,
    /// Pass/fail threshold `METRIC OP VALUE` (repeatable), e.g. `handshake_p99<20ms`,
    /// `errors==0`; the run exits with status 99 if one is crossed (docs/loadgen.md lists the
    /// metrics).
    #[arg(long = "threshold", value_name = "EXPR")]
    pub thresholds: Vec<String>,
    /// TOML file of options (keys are the long option names); the command line wins over it.
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// wss:// targets: PEM file of the authorities that may sign the server's certificate
    /// (default: the system's).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// wss:// targets: accept any server certificate (the handshake signature is still
    /// checked); for test nodes with throw-away certificates.
    #[arg(long)]
    pub insecure: bool,
    /// wss:// targets: resume TLS sessions with the tickets of earlier connections (`on`) or
    /// make every handshake a full one (`off`).
    #[arg(long, value_enum, default_value = "on")]
    pub tls_resumption: OnOff,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write HdrHistogram interval logs (one per histogram) into this directory.
    #[arg(long)]
    pub hdr_dir: Option<PathBuf>,
    /// PID of the server under test (repeatable): its CPU time is measured over the run.
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// No live lines.
    #[arg(long)]
    pub quiet: bool,
    /// Print the preflight and exit.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum WorkloadArg {
    Echo,
    D2d,
    Push,
    Durable,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    Tether,
    Nats,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ArrivalsArg {
    Constant,
    Poisson,
}

/// Parses `250ms`, `5s`, `2m`, `1h`, `1.5s` or a bare number of seconds, into microseconds.
pub fn parse_duration_us(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit_us) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60e6)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600e6)
    } else {
        (s, 1e6)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 5s, 2m)"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{s:?} is not a non-negative duration"));
    }
    Ok((v * unit_us).round() as u64)
}

/// Like [`parse_duration_us`], in milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    parse_duration_us(s).map(|us| us.div_ceil(1000))
}

fn parse_per_s(s: &str) -> Result<f64, String> {
    let n = s.trim().trim_end_matches("/s");
    n.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0)
        .ok_or_else(|| format!("{s:?} is not a rate (e.g. 100/s)"))
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let v = match s.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => s.parse::<f64>(),
    }
    .map_err(|_| format!("{s:?} is not a share (e.g. 30% or 0.3)"))?;
    if !(0.0..=1.0).contains(&v) || v == 0.0 {
        return Err(format!("{s:?} must be above 0% and at most 100%"));
    }
    Ok(v)
}

impl Args {
    /// Builds the plan (without the worker count, which the preflight decides).
    #[expect(
        clippy::too_many_lines,
        reason = "one option after another in the order of the command line"
    )]
    pub fn plan(&self) -> Result<Plan, String> {
        let targets = self
            .urls
            .iter()
            .map(|u| parse_url(u))
            .collect::<Result<Vec<_>, _>>()?;
        let sources = match &self.source {
            Some(s) => parse_sources(s)?,
            None => Vec::new(),
        };
        let rate = Rate::parse(&self.rate, self.ramp as f64 / 1000.0)?;
        if self.msg_size < MSG_HEADER_BYTES {
            return Err(format!(
                "--msg-size {} is below the {MSG_HEADER_BYTES}-byte header (sequence number and \
                 send time)",
                self.msg_size
            ));
        }
        if !(self.msg_rate.is_finite() && self.msg_rate >= 0.0) {
            return Err("--msg-rate must be a non-negative number".into());
        }
        if self.msg_size > 16 << 20 {
            return Err("--msg-size is limited to 16 MiB".into());
        }
        let workload = match self.workload {
            WorkloadArg::Echo => Workload::Echo,
            WorkloadArg::D2d => Workload::D2d,
            WorkloadArg::Push => Workload::Push,
            WorkloadArg::Durable => Workload::Durable,
        };
        if matches!(workload, Workload::Push | Workload::Durable) && self.nats.is_none() {
            return Err(format!(
                "--workload {} publishes through NATS: give --nats URL",
                if workload == Workload::Push {
                    "push"
                } else {
                    "durable"
                }
            ));
        }
        if self.preload > 0 && workload != Workload::Durable {
            return Err("--preload stores durable messages: use --workload durable".into());
        }
        if self.msg_min > 0 && self.msg_rate == 0.0 {
            return Err("--msg-min waits for scheduled sends: give --msg-rate".into());
        }
        if self.burst > 0 && !matches!(workload, Workload::Push | Workload::Durable) {
            return Err("--burst publishes pushes: use --workload push or durable".into());
        }
        if workload == Workload::Durable {
            if self.msg_rate > 0.0 {
                return Err(
                    "--workload durable takes its messages from --preload and --burst, not                      --msg-rate"
                        .into(),
                );
            }
            if self.preload + self.burst == 0 {
                return Err("--workload durable needs --preload N or --burst N".into());
            }
        }
        if self.ack_every == 0 || self.publish_in_flight == 0 {
            return Err("--ack-every and --publish-in-flight must be at least 1".into());
        }
        if !self
            .device_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            || self.device_prefix.len() > 100
        {
            return Err(format!(
                "--device-prefix {:?}: use up to 100 of A-Z a-z 0-9 _ -",
                self.device_prefix
            ));
        }
        if let Some(secret) = &self.device_jwt_secret {
            if workload == Workload::Echo {
                return Err(
                    "--device-jwt-secret signs device tokens for --workload d2d or push; \
                     the echo workload sends none"
                        .into(),
                );
            }
            // The check a node applies to its own secret: a secret it would refuse can only
            // produce 401s.
            tether::auth::Verifier::new(&tether::auth::KeyConfig::Hs256 {
                secret: secret.as_bytes().to_vec(),
            })
            .map_err(|e| format!("--device-jwt-secret: {e}"))?;
        }
        let protocol = match self.protocol {
            ProtocolArg::Tether => Protocol::Tether,
            ProtocolArg::Nats => Protocol::Nats,
        };
        if protocol == Protocol::Nats {
            if workload != Workload::D2d {
                return Err(
                    "--protocol nats runs devices that publish to each other: use \
                            --workload d2d"
                        .into(),
                );
            }
            if self.device_jwt_secret.is_some() {
                return Err(
                    "--device-jwt-secret signs tether device tokens; NATS devices \
                            present --device-token"
                        .into(),
                );
            }
        }
        if let Some(token) = &self.device_token {
            if protocol != Protocol::Nats {
                return Err("--device-token is for --protocol nats".into());
            }
            if token.is_empty() {
                return Err("--device-token: empty".into());
            }
        }
        let tls = if targets.iter().any(|t| t.tls) {
            if self.insecure && self.ca_file.is_some() {
                return Err("--insecure accepts any certificate: drop --ca-file or it".into());
            }
            Some(TlsOptions {
                ca_file: self.ca_file.clone(),
                insecure: self.insecure,
                resumption: self.tls_resumption == OnOff::On,
            })
        } else if self.insecure || self.ca_file.is_some() {
            return Err("--insecure and --ca-file are for wss:// URLs".into());
        } else {
            None
        };
        let seed = self.seed.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
        Ok(Plan {
            targets,
            sources,
            clients: self.clients,
            rate,
            arrivals: match self.arrivals {
                ArrivalsArg::Constant => Arrivals::Constant,
                ArrivalsArg::Poisson => Arrivals::Poisson,
            },
            seed,
            hold_ms: self.hold,
            churn_per_s: self.churn.unwrap_or(0.0),
            churn_ms: self.churn_for,
            storm_drop_fraction: self.storm_drop.unwrap_or(0.0),
            storm_backoff_ms: self.storm_backoff,
            storm_backoff_max_ms: self.storm_backoff_max.max(self.storm_backoff),
            storm_timeout_ms: self.storm_timeout,
            connect_timeout_ms: self.connect_timeout.max(1),
            handshake_timeout_ms: self.handshake_timeout.max(1),
            drain_timeout_ms: self.drain_timeout,
            msg_rate_per_client: self.msg_rate,
            msg_bytes: self.msg_size,
            workload,
            device_prefix: self.device_prefix.clone(),
            nats_url: self.nats.clone(),
            device_jwt_secret: self.device_jwt_secret.clone(),
            protocol,
            device_token: self.device_token.clone(),
            msg_in_flight_max: self.msg_in_flight_max.max(1),
            msg_min_per_client: self.msg_min,
            lag_threshold_us: self.lag_threshold,
            preload_per_device: self.preload,
            burst_per_device: self.burst,
            ack_every: self.ack_every,
            publish_in_flight: self.publish_in_flight,
            last_seq: None,
            workers: 1,
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_us("5s").unwrap(), 5_000_000);
        assert_eq!(parse_duration_us("250ms").unwrap(), 250_000);
        assert_eq!(parse_duration_us("2m").unwrap(), 120_000_000);
        assert_eq!(parse_duration_us("1.5").unwrap(), 1_500_000);
        assert_eq!(parse_duration_ms("30s").unwrap(), 30_000);
        assert!(parse_duration_us("abc").is_err());
        assert!(parse_duration_us("-1s").is_err());
    }

    #[test]
    fn shares_and_rates() {
        assert_eq!(parse_fraction("30%").unwrap(), 0.3);
        assert_eq!(parse_fraction("0.5").unwrap(), 0.5);
        assert!(parse_fraction("120%").is_err());
        assert_eq!(parse_per_s("100/s").unwrap(), 100.0);
        assert!(parse_per_s("0").is_err());
    }
}

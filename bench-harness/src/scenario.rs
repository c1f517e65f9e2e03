//! The scenario file (`scenarios/NAME.toml`): which servers to compare, the one load schedule
//! every server gets, how many repetitions, which metrics to tabulate, and the targets to check.
//!
//! Metric keys name values of one run: the numeric leaves of `tether-loadgen --json` by their
//! dotted path (`connect_rate_achieved_per_s`, `handshake_latency_us.p99`), and what the runner
//! measured on the server (`server.*`, `kernel.*`, `loadgen.*`, `nats.*`; see `runner`), and the
//! probe's loadgen leaves under `probe.`.
//!
//! A tether row may be a cluster: `nodes` tether processes, joined by a nats-server the runner
//! starts when `bus = "nats"`, serving devices on `/ws` (the runner signs one HS256 token per
//! device). A `[probe]` is a second, small `tether-loadgen` of devices that send to each other
//! through the nodes while the main load holds, measuring end-to-end message latency and loss.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Fewest repetitions a scenario may ask for: a median needs at least three runs.
pub const REPETITIONS_MIN: u32 = 3;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Defaults to the file's stem.
    #[serde(default)]
    pub name: String,
    pub description: String,
    #[serde(default = "default_repetitions")]
    pub repetitions: u32,
    /// Wait after a server accepts its first connection before the load starts.
    #[serde(default = "default_settle_ms")]
    pub settle_ms: u64,
    /// Wait after stopping a server before the next run (lets TIME_WAIT and slab settle).
    #[serde(default = "default_cooldown_ms")]
    pub cooldown_ms: u64,
    /// How often the runner samples the server's RSS, CPU and open descriptors.
    #[serde(default = "default_sample_ms")]
    pub sample_ms: u64,
    pub loadgen: Schedule,
    #[serde(rename = "server")]
    pub servers: Vec<ServerSpec>,
    #[serde(rename = "metric")]
    pub metrics: Vec<MetricSpec>,
    #[serde(default, rename = "target")]
    pub targets: Vec<TargetSpec>,
    /// Probe devices measuring message latency end to end while the load holds.
    #[serde(default)]
    pub probe: Option<Probe>,
    /// Every server over `wss://` with a test certificate of this key type (see `tls_stack`).
    #[serde(default)]
    pub tls: Option<TlsSpec>,
}

/// The `[tls]` table: the servers listen with TLS, loadgen trusts the run's test CA.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    pub key: KeyType,
}

/// Key type of the test certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyType {
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    #[serde(rename = "rsa-2048")]
    Rsa2048,
}

/// A second `tether-loadgen` run beside the main load: `devices` devices (in pairs, each on
/// another node than its partner when there are several) connect `start_after_s` after the main
/// load starts (default: one second after its connect ramp ends), then each sends `msg_rate`
/// messages per second to its partner for `hold_s`. Its JSON leaves are recorded under
/// `probe.` (`probe.message_delivery_us.p99`, `probe.messages.unanswered`: the messages that
/// never arrived).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub devices: u64,
    #[serde(default)]
    pub start_after_s: Option<f64>,
    pub hold_s: f64,
    pub msg_rate: f64,
    #[serde(default = "default_probe_msg_size")]
    pub msg_size: u64,
}

fn default_probe_msg_size() -> u64 {
    64
}

fn default_repetitions() -> u32 {
    REPETITIONS_MIN
}
fn default_settle_ms() -> u64 {
    1000
}
fn default_cooldown_ms() -> u64 {
    2000
}
fn default_sample_ms() -> u64 {
    250
}

/// The load schedule, identical for every server.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Request path (peers ignore it; tether serves its echo at `/echo`).
    #[serde(default = "default_path")]
    pub path: String,
    pub clients: u64,
    /// Constant connect rate per second. Exactly one of `rate` and `ramp`.
    #[serde(default)]
    pub rate: Option<f64>,
    #[serde(default)]
    pub ramp: Option<Ramp>,
    /// Seconds to hold every client connected after the last connect.
    pub hold_s: f64,
    /// Echo messages per second per client (0 or absent: no messages).
    #[serde(default)]
    pub msg_rate: Option<f64>,
    #[serde(default)]
    pub msg_size: Option<u64>,
    /// The loadgen run is killed (and the run recorded as failed) after this long.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    /// Further `tether-loadgen` arguments, passed verbatim after the schedule's.
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// loadgen's `--drain-timeout` (docs/loadgen.md): with `--burst` or `--preload`, how long
    /// the run waits for the devices to get what they are owed. Unset: loadgen's default.
    #[serde(default)]
    pub drain_timeout_s: Option<f64>,
    /// Give loadgen `--nats URL` of the row's nats-server: its backend publisher (the `push`
    /// and `durable` workloads publish to the devices through NATS). Needs `bus` on every row.
    #[serde(default)]
    pub nats_publisher: bool,
    /// CPUs loadgen runs on (`taskset -c LIST`); unset: all.
    #[serde(default)]
    pub cpus: Option<String>,
}

fn default_path() -> String {
    "/echo".to_string()
}
fn default_timeout_s() -> u64 {
    120
}

/// A linear ramp of the connect rate.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ramp {
    pub from: f64,
    pub to: f64,
    pub over_s: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerKind {
    /// `tether serve --echo --shards N`.
    Tether,
    /// `peer-tungstenite` (tokio-tungstenite).
    Tungstenite,
    /// `peer-fastwebsockets` (fastwebsockets + hyper).
    Fastwebsockets,
    /// `peer-raw101`: the raw ceiling (handshake only, no framing).
    Raw101,
    /// Node `ws` (`peers/ws-echo.mjs`), when the module is installed.
    NodeWs,
    /// `peer-tungstenite-rustls` (tokio-rustls + tokio-tungstenite); `[tls]` scenarios only.
    TungsteniteRustls,
    /// nginx terminating TLS in front of `tether serve --echo --shards N` on `ws://`, measured
    /// together (RSS, CPU and descriptors of nginx's processes and tether's); `[tls]` only.
    NginxTether,
    /// nats-server's own WebSocket listener, devices as NATS clients over WebSocket
    /// (`tether-loadgen --protocol nats`, token authentication); see `natsws`.
    NatsWs,
    /// `hold101 ADDR N` (the example of `tether-shards`): N glommio shards on tether's own
    /// runtime that accept, answer a canned `101` and hold the socket, reading nothing more:
    /// the least a server on tether's runtime holds per idle connection (no framing, no echo).
    Hold101,
}

impl ServerKind {
    /// The Rust peers: "the best Rust peer" is the best of these per metric.
    pub fn is_rust_peer(self) -> bool {
        matches!(
            self,
            ServerKind::Tungstenite | ServerKind::Fastwebsockets | ServerKind::TungsteniteRustls
        )
    }

    pub fn default_label(self) -> &'static str {
        match self {
            ServerKind::Tether => "tether",
            ServerKind::Tungstenite => "tokio-tungstenite",
            ServerKind::Fastwebsockets => "fastwebsockets",
            ServerKind::Raw101 => "raw epoll 101",
            ServerKind::NodeWs => "node ws",
            ServerKind::TungsteniteRustls => "tokio-rustls + tungstenite",
            ServerKind::NginxTether => "nginx in front of tether",
            ServerKind::NatsWs => "nats-server WebSocket",
            ServerKind::Hold101 => "bare glommio 101",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    pub kind: ServerKind,
    /// Row name in the report; defaults to the kind's name (with the shard count for tether).
    #[serde(default)]
    pub label: Option<String>,
    /// Shards for tether (required for tether, nginx-tether and hold101, refused for the
    /// peers).
    #[serde(default)]
    pub shards: Option<u32>,
    /// tether and nginx-tether only: the folder of this row's `tether` binary instead of the
    /// run's `--bin-dir` (a relative folder is taken inside `--bin-dir`). Two rows of two
    /// builds compare them in one run, their repetitions interleaved (before/after checks).
    #[serde(default)]
    pub bin_dir: Option<std::path::PathBuf>,
    /// Further server arguments, passed verbatim.
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// tether only: serve devices on `/ws` with this bus (instead of `--echo` only). With
    /// `nats` the runner starts a nats-server and joins every node to it.
    #[serde(default)]
    pub bus: Option<Bus>,
    /// tether only: how many node processes (default 1); loadgen spreads its clients
    /// round-robin over them and the `server.*` metrics sum them. With `bus = "embedded"` the
    /// nodes are not joined (each routes among its own devices only): for measurements of
    /// idle sessions beyond one process's open-files limit, not for traffic between devices.
    #[serde(default)]
    pub nodes: Option<u32>,
    /// CPUs of each server process: a `taskset -c` list, or `alternate` (node i on CPU
    /// i mod the CPU count, as single-shard nodes of a cluster). Unset: all CPUs.
    #[serde(default)]
    pub cpus: Option<String>,
    /// Further `tether-loadgen` arguments for this row only, after the schedule's (a row of
    /// a rate ladder, for example `["--msg-rate", "2000"]`).
    #[serde(default)]
    pub loadgen_args: Vec<String>,
}

/// The message bus of a device-serving tether row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bus {
    /// The in-process bus (one node only).
    Embedded,
    /// A nats-server started by the runner.
    Nats,
    /// A nats-server with JetStream (`-js`, its store in the run's folder, fresh every run):
    /// for nodes with `--durable` in `extra_args`, which the runner waits for until their
    /// mailbox stream is ready (`tether_mailbox_stream_ready 1`).
    Jetstream,
}

impl ServerSpec {
    pub fn label(&self) -> String {
        match (&self.label, self.kind, self.shards) {
            (Some(l), _, _) => l.clone(),
            (None, ServerKind::Tether, Some(n)) => format!("tether ({n} shards)"),
            (None, ServerKind::NginxTether, Some(n)) => {
                format!("nginx in front of tether ({n} shards)")
            }
            (None, ServerKind::Hold101, Some(n)) => format!("bare glommio 101 ({n} shards)"),
            (None, kind, _) => kind.default_label().to_string(),
        }
    }
}

/// Which way a metric is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    pub key: String,
    /// Column heading, with its unit.
    pub label: String,
    pub better: Better,
    /// Compared across servers (ratios, "ahead of"); false for context columns such as the
    /// number of connections reached.
    #[serde(default = "yes")]
    pub compare: bool,
}

fn yes() -> bool {
    true
}

/// A target checked on every tether row's median.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    pub description: String,
    pub key: String,
    #[serde(default)]
    pub at_least: Option<f64>,
    #[serde(default)]
    pub at_most: Option<f64>,
    /// Median as a fraction of the raw ceiling's median in the same run.
    #[serde(default)]
    pub ratio_to_raw_at_least: Option<f64>,
    /// Better than the best Rust peer's median (in the metric's direction).
    #[serde(default)]
    pub ahead_of_best_rust: bool,
}

#[derive(Debug)]
pub enum ScenarioError {
    Read(std::io::Error),
    Parse(toml::de::Error),
    Invalid(String),
}

impl std::fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScenarioError::Read(e) => write!(f, "cannot read scenario: {e}"),
            ScenarioError::Parse(e) => write!(f, "bad scenario TOML: {e}"),
            ScenarioError::Invalid(why) => write!(f, "invalid scenario: {why}"),
        }
    }
}

impl std::error::Error for ScenarioError {}

impl Scenario {
    /// Reads, parses and validates a scenario file; the name defaults to the file stem.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(ScenarioError::Read)?;
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("scenario");
        Scenario::parse(&text, stem)
    }

    pub fn parse(text: &str, default_name: &str) -> Result<Scenario, ScenarioError> {
        let mut s: Scenario = toml::from_str(text).map_err(ScenarioError::Parse)?;
        if s.name.is_empty() {
            s.name = default_name.to_string();
        }
        s.validate().map_err(ScenarioError::Invalid)?;
        Ok(s)
    }

    /// A server row against the `[tls]` table: the TLS-only kinds need it, the peers that
    /// serve no `wss://` refuse it, and TLS runs are single servers (no bus, nodes or probe).
    fn check_tls(&self, s: &ServerSpec) -> Result<(), String> {
        let tls_only = matches!(
            s.kind,
            ServerKind::TungsteniteRustls | ServerKind::NginxTether
        );
        match (&self.tls, tls_only || s.kind == ServerKind::Tether) {
            (None, _) if tls_only => Err(format!(
                "{:?} serves wss:// only: add a [tls] table",
                s.kind
            )),
            (Some(_), false) => Err(format!(
                "{:?} does not serve wss://: drop it or [tls]",
                s.kind
            )),
            (Some(_), true) if s.bus.is_some() || s.nodes.is_some() || self.probe.is_some() => {
                Err("[tls] runs one echo server per row: no bus, nodes or [probe]".into())
            }
            _ => Ok(()),
        }
    }

    #[expect(
        clippy::too_many_lines,
        reason = "one check after another in the order of the scenario file's sections"
    )]
    pub fn validate(&self) -> Result<(), String> {
        if !self
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!("name {:?}: use [A-Za-z0-9_-]", self.name));
        }
        if self.repetitions < REPETITIONS_MIN {
            return Err(format!(
                "repetitions = {} (at least {REPETITIONS_MIN} for a median with spread)",
                self.repetitions
            ));
        }
        if self.sample_ms == 0 {
            return Err("sample_ms must be > 0".into());
        }
        let l = &self.loadgen;
        if l.clients == 0 {
            return Err("loadgen.clients must be > 0".into());
        }
        match (l.rate, l.ramp) {
            (Some(r), None) if r > 0.0 => {}
            (None, Some(r)) if r.from > 0.0 && r.to > 0.0 && r.over_s > 0.0 => {}
            (Some(_), Some(_)) => return Err("loadgen: give `rate` or `ramp`, not both".into()),
            _ => return Err("loadgen: give a positive `rate` or a `ramp`".into()),
        }
        if l.hold_s.is_nan() || l.hold_s < 0.0 {
            return Err("loadgen.hold_s must be >= 0".into());
        }
        if l.msg_rate.is_some_and(|r| r > 0.0) && l.msg_size.is_none() {
            return Err("loadgen.msg_rate needs loadgen.msg_size".into());
        }
        if self.servers.is_empty() {
            return Err("no [[server]]".into());
        }
        if l.nats_publisher
            && self
                .servers
                .iter()
                .any(|s| !matches!(s.bus, Some(Bus::Nats | Bus::Jetstream)))
        {
            return Err(
                "loadgen.nats_publisher needs bus = \"nats\" or \"jetstream\" on every row".into(),
            );
        }
        let mut labels = BTreeSet::new();
        for s in &self.servers {
            let with_tether = matches!(s.kind, ServerKind::Tether | ServerKind::NginxTether);
            let sharded = with_tether || s.kind == ServerKind::Hold101;
            match (s.kind, s.shards) {
                (_, None | Some(0)) if sharded => {
                    return Err(format!("{:?} needs shards >= 1", s.kind))
                }
                (_, Some(_)) if sharded => {}
                (_, None) => {}
                (kind, Some(_)) => {
                    return Err(format!("shards is for tether, not {kind:?}"));
                }
            }
            if s.bin_dir.is_some() && !with_tether {
                return Err(format!("bin_dir is for tether rows, not {:?}", s.kind));
            }
            self.check_tls(s)?;
            if s.kind != ServerKind::Tether && (s.bus.is_some() || s.nodes.is_some()) {
                return Err(format!("bus and nodes are for tether, not {:?}", s.kind));
            }
            match (s.nodes, s.bus) {
                (Some(0), _) => return Err("nodes must be >= 1".into()),
                (Some(n), None) if n > 1 => {
                    return Err(format!(
                        "{}: {n} nodes need a bus: \"nats\" (joined) or \"embedded\" (not joined)",
                        s.label()
                    ))
                }
                _ => {}
            }
            if s.cpus.as_deref().is_some_and(str::is_empty) {
                return Err("cpus must name CPUs (e.g. \"0\") or be \"alternate\"".into());
            }
            if !labels.insert(s.label()) {
                return Err(format!("two servers labelled {:?}", s.label()));
            }
        }
        if self.metrics.is_empty() {
            return Err("no [[metric]]".into());
        }
        if let Some(p) = &self.probe {
            let start_s = self.probe_start_s().unwrap_or(0.0);
            if p.devices < 2 || p.msg_rate <= 0.0 || p.hold_s <= 0.0 || start_s < 0.0 {
                return Err(
                    "probe: devices >= 2, msg_rate > 0, hold_s > 0, start_after_s >= 0".into(),
                );
            }
            if self.servers.iter().any(|s| s.bus.is_none()) {
                return Err("probe: its devices need every server to serve /ws (set bus)".into());
            }
            // The probe must be done before the main load's hold ends, or it measures a
            // draining cluster.
            let ramp_s = self.ramp_s();
            if start_s + p.hold_s + 2.0 > ramp_s + l.hold_s {
                return Err(format!(
                    "probe: start_after_s + hold_s + 2 s must end within the main load's \
                     ramp and hold ({ramp_s:.0} s + {} s)",
                    l.hold_s
                ));
            }
        }
        for t in &self.targets {
            if !self.metrics.iter().any(|m| m.key == t.key) {
                return Err(format!(
                    "target {:?}: key {} is no [[metric]]",
                    t.description, t.key
                ));
            }
            if t.at_least.is_none()
                && t.at_most.is_none()
                && t.ratio_to_raw_at_least.is_none()
                && !t.ahead_of_best_rust
            {
                return Err(format!("target {:?} checks nothing", t.description));
            }
            if t.ratio_to_raw_at_least.is_some()
                && !self.servers.iter().any(|s| s.kind == ServerKind::Raw101)
            {
                return Err(format!("target {:?} needs a raw101 server", t.description));
            }
        }
        Ok(())
    }

    /// Applies `KEY=VALUE` overrides to a scenario's TOML before it is parsed: `KEY` is a
    /// dotted path (`loadgen.clients`, `probe.devices`); `server.KEY` sets KEY on every
    /// `[[server]]`. `VALUE` is a TOML value (`20000`, `"0-1"`, `["--x"]`), or else a string.
    pub fn apply_overrides(text: &str, sets: &[String]) -> Result<String, ScenarioError> {
        let mut doc: toml::Table = toml::from_str(text).map_err(ScenarioError::Parse)?;
        for set in sets {
            let (key, raw) = set
                .split_once('=')
                .ok_or_else(|| ScenarioError::Invalid(format!("--set {set:?}: KEY=VALUE")))?;
            let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(raw.to_string()));
            let path: Vec<&str> = key.trim().split('.').collect();
            if path.iter().any(|p| p.is_empty()) {
                return Err(ScenarioError::Invalid(format!("--set {set:?}: empty key")));
            }
            if path[0] == "server" && path.len() == 2 {
                let servers = doc
                    .get_mut("server")
                    .and_then(|v| v.as_array_mut())
                    .ok_or_else(|| {
                        ScenarioError::Invalid("--set server.*: no [[server]]".into())
                    })?;
                for s in servers.iter_mut().filter_map(|v| v.as_table_mut()) {
                    s.insert(path[1].to_string(), value.clone());
                }
                continue;
            }
            let mut table = &mut doc;
            for part in &path[..path.len() - 1] {
                table = table
                    .entry(part.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .ok_or_else(|| {
                        ScenarioError::Invalid(format!("--set {set:?}: {part} is not a table"))
                    })?;
            }
            table.insert(path[path.len() - 1].to_string(), value);
        }
        toml::to_string(&doc).map_err(|e| ScenarioError::Invalid(format!("--set: {e}")))
    }

    /// Reads a scenario file with `--set` overrides applied.
    pub fn load_with(path: &Path, sets: &[String]) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(ScenarioError::Read)?;
        let text = Scenario::apply_overrides(&text, sets)?;
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("scenario");
        Scenario::parse(&text, stem)
    }

    /// Seconds of the main load's connect ramp (clients / rate, or the ramp's length).
    pub fn ramp_s(&self) -> f64 {
        let l = &self.loadgen;
        match (l.rate, l.ramp) {
            (Some(r), _) => l.clients as f64 / r,
            (None, Some(r)) => r.over_s,
            _ => 0.0,
        }
    }

    /// When the probe starts, seconds after the main load: as given, or one second after the
    /// connect ramp.
    pub fn probe_start_s(&self) -> Option<f64> {
        let p = self.probe.as_ref()?;
        Some(p.start_after_s.unwrap_or(self.ramp_s() + 1.0))
    }

    /// Node processes of a server row.
    pub fn nodes_of(spec: &ServerSpec) -> u32 {
        spec.nodes.unwrap_or(1)
    }

    pub fn metric(&self, key: &str) -> Option<&MetricSpec> {
        self.metrics.iter().find(|m| m.key == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
description = "d"
[loadgen]
clients = 10
rate = 5
hold_s = 1
[[server]]
kind = "tether"
shards = 2
[[server]]
kind = "raw101"
[[metric]]
key = "connect_rate_achieved_per_s"
label = "connects/s"
better = "higher"
"#;

    #[test]
    fn minimal_parses_with_defaults() {
        let s = Scenario::parse(MINIMAL, "mini").unwrap();
        assert_eq!(s.name, "mini");
        assert_eq!(s.repetitions, REPETITIONS_MIN);
        assert_eq!(s.loadgen.path, "/echo");
        assert_eq!(s.servers[0].label(), "tether (2 shards)");
        assert_eq!(s.servers[1].label(), "raw epoll 101");
    }

    #[test]
    fn tls_scenarios() {
        let text = MINIMAL.replace("kind = \"raw101\"", "kind = \"tungstenite-rustls\"")
            + "[[server]]\nkind = \"nginx-tether\"\nshards = 2\n[tls]\nkey = \"rsa-2048\"\n";
        let s = Scenario::parse(&text, "t").unwrap();
        assert_eq!(s.tls.unwrap().key, KeyType::Rsa2048);
        assert_eq!(s.servers[2].label(), "nginx in front of tether (2 shards)");
        assert!(Scenario::parse(&text.replace("shards = 2\n[tls]", "[tls]"), "t").is_err());
    }

    #[test]
    fn overrides_set_keys_and_every_server() {
        let text = Scenario::apply_overrides(
            MINIMAL,
            &[
                "loadgen.clients=99".into(),
                "server.cpus=\"0\"".into(),
                "name=renamed".into(),
            ],
        )
        .unwrap();
        let s = Scenario::parse(&text, "x").unwrap();
        assert_eq!(s.loadgen.clients, 99);
        assert_eq!(s.name, "renamed");
        assert!(s.servers.iter().all(|s| s.cpus.as_deref() == Some("0")));
        assert!(Scenario::apply_overrides(MINIMAL, &["nokey".into()]).is_err());
        assert!(Scenario::apply_overrides(MINIMAL, &["loadgen.clients.x=1".into()]).is_err());
    }

    #[test]
    fn clusters_and_probes_are_checked() {
        let cluster = MINIMAL.replace("shards = 2", "shards = 1\nnodes = 3\nbus = \"nats\"");
        let s = Scenario::parse(&cluster, "c").unwrap();
        assert_eq!(Scenario::nodes_of(&s.servers[0]), 3);
        let probe = "\n[probe]\ndevices = 4\nstart_after_s = 1\nhold_s = 1\nmsg_rate = 1\n";
        // raw101 serves no /ws: a probe needs every row on a bus.
        assert!(Scenario::parse(&format!("{cluster}{probe}"), "c").is_err());
        let only_tether = cluster.replace("[[server]]\nkind = \"raw101\"\n", "");
        // 10 clients at 5/s: 2 s of ramp and 1 s of hold, too short for 1 + 1 + 2 s of probe.
        assert!(Scenario::parse(&format!("{only_tether}{probe}"), "c").is_err());
        let longer = only_tether.replace("hold_s = 1", "hold_s = 5");
        assert!(Scenario::parse(&format!("{longer}{probe}"), "c").is_ok());
    }

    #[test]
    fn invalid_scenarios_are_refused() {
        let cases = [
            MINIMAL.replace("rate = 5", ""),
            MINIMAL.replace("shards = 2", ""),
            MINIMAL.replace("description", "repetitions = 2\ndescription"),
            MINIMAL.replace("kind = \"raw101\"", "kind = \"raw101\"\nshards = 1"),
            MINIMAL.replace("kind = \"raw101\"", "kind = \"nginx\""),
            MINIMAL.replace("hold_s = 1", "hold_s = 1\nbogus = 3"),
            format!("{MINIMAL}\n[[target]]\ndescription = \"x\"\nkey = \"nope\"\nat_least = 1\n"),
            MINIMAL.replace("shards = 2", "shards = 2\nnodes = 2"),
            MINIMAL.replace("kind = \"raw101\"", "kind = \"raw101\"\nbus = \"nats\""),
            MINIMAL.replace("shards = 2", "shards = 2\nnodes = 0\nbus = \"nats\""),
            // A TLS-only server without [tls], a plain peer with it, TLS on a cluster.
            MINIMAL.replace("kind = \"raw101\"", "kind = \"tungstenite-rustls\""),
            format!("{MINIMAL}\n[tls]\nkey = \"ecdsa-p256\"\n"),
            MINIMAL.replace("kind = \"raw101\"", "kind = \"nginx-tether\""),
            MINIMAL
                .replace("[[server]]\nkind = \"raw101\"\n", "")
                .replace("shards = 2", "shards = 1\nnodes = 2\nbus = \"nats\"")
                + "\n[tls]\nkey = \"ecdsa-p256\"\n",
        ];
        for case in cases {
            assert!(Scenario::parse(&case, "x").is_err(), "accepted:\n{case}");
        }
    }
}

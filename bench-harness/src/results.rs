//! `results.json`: everything one `tether-bench run` measured, the input of the report writer
//! (so a report can be re-rendered, and tested, from a results file alone).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::scenario::{Scenario, ServerKind};
use crate::stats::Summary;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    pub scenario: Scenario,
    pub machine: Machine,
    pub servers: Vec<ServerResult>,
}

/// Where and with what the run was made.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    pub started_utc: String,
    pub nproc: usize,
    pub kernel: String,
    pub rustc: String,
    /// Component versions (tether's git revision, peer crates, node, ws, loadgen).
    pub versions: BTreeMap<String, String>,
    /// The command that produced these results.
    pub command: String,
    /// Load average when the run started: other work on a shared machine is noise.
    pub loadavg_at_start: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerResult {
    pub label: String,
    pub kind: ServerKind,
    /// The server's command line (first run; ports differ between runs).
    pub command: String,
    /// Why the server was not run (for example: Node `ws` not installed).
    #[serde(default)]
    pub skipped: Option<String>,
    pub runs: Vec<RunResult>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    pub repetition: u32,
    /// Flattened numeric results: loadgen's JSON leaves by dotted path, plus `server.*`,
    /// `kernel.*`, `loadgen.*` measured by the runner.
    pub metrics: BTreeMap<String, f64>,
    /// The runner's samples of the server during the load.
    pub timeline: Vec<Sample>,
    /// Loadgen's live per-second lines, parsed (rates over time as the client saw them).
    #[serde(default)]
    pub loadgen_seconds: Vec<LoadgenSecond>,
    /// Set when the run failed (server did not start, loadgen failed or timed out).
    #[serde(default)]
    pub error: Option<String>,
}

/// One sample of the server process (summed over the nodes of a cluster), `t_s` seconds after
/// the load started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub t_s: f64,
    pub rss_bytes: u64,
    /// utime + stime of all the server's threads, seconds since it started.
    pub cpu_s: f64,
    /// Open file descriptors of the server (its connections, plus a few listeners and files).
    pub fds: u64,
    /// `/proc/net/sockstat` TCP `inuse` and `mem` (pages), machine-wide (both ends).
    pub tcp_inuse: u64,
    pub tcp_mem_pages: u64,
    /// The kernel's slab (`/proc/meminfo` `Slab`), machine-wide.
    #[serde(default)]
    pub slab_kib: u64,
    /// The nats-server of a cluster row (0 without one).
    #[serde(default)]
    pub nats_rss_bytes: u64,
    #[serde(default)]
    pub nats_cpu_s: f64,
    /// Sum of the nodes' `tether_connections` (device-serving rows, when every node answered).
    #[serde(default)]
    pub connections: Option<u64>,
}

/// One live line of `tether-loadgen`: `[   3s] connected 19000  connects/s 6000  errors 0 ...
/// msgs/s 20000 ...`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadgenSecond {
    pub t_s: f64,
    pub connected: u64,
    pub connects_per_s: u64,
    pub errors: u64,
    pub msgs_per_s: u64,
}

impl LoadgenSecond {
    /// Parses a live line; `None` for any other output line.
    pub fn parse(line: &str) -> Option<LoadgenSecond> {
        let rest = line.trim_start().strip_prefix('[')?;
        let (secs, rest) = rest.split_once("s]")?;
        let t_s: f64 = secs.trim().parse().ok()?;
        let words: Vec<&str> = rest.split_whitespace().collect();
        let after = |name: &str| -> Option<u64> {
            let i = words.iter().position(|w| *w == name)?;
            words.get(i + 1)?.parse().ok()
        };
        Some(LoadgenSecond {
            t_s,
            connected: after("connected")?,
            connects_per_s: after("connects/s")?,
            errors: after("errors").unwrap_or(0),
            msgs_per_s: after("msgs/s").unwrap_or(0),
        })
    }
}

impl ServerResult {
    /// Values of `key` over the successful runs.
    pub fn values(&self, key: &str) -> Vec<f64> {
        self.runs
            .iter()
            .filter(|r| r.error.is_none())
            .filter_map(|r| r.metrics.get(key).copied())
            .collect()
    }

    pub fn summary(&self, key: &str) -> Option<Summary> {
        Summary::of(&self.values(key))
    }

    pub fn failed_runs(&self) -> usize {
        self.runs.iter().filter(|r| r.error.is_some()).count()
    }
}

impl Results {
    pub fn load(path: &Path) -> Result<Results, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Flattens a JSON document into dotted paths of its numeric leaves.
pub fn flatten_numbers(value: &serde_json::Value, prefix: &str, out: &mut BTreeMap<String, f64>) {
    match value {
        serde_json::Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                out.insert(prefix.to_string(), x);
            }
        }
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_numbers(v, &key, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loadgen_live_lines() {
        let line = "[   3s] connected   19000  connects/s   6000  errors     2  handshake p50 \
                    0.40ms p99 2.10ms  msgs/s 20000 rtt p99 1.00ms  lag 0";
        assert_eq!(
            LoadgenSecond::parse(line),
            Some(LoadgenSecond {
                t_s: 3.0,
                connected: 19000,
                connects_per_s: 6000,
                errors: 2,
                msgs_per_s: 20000
            })
        );
        assert_eq!(LoadgenSecond::parse("preflight: open files 20000"), None);
        assert_eq!(LoadgenSecond::parse("[x] connected 1 connects/s 1"), None);
    }

    #[test]
    fn flatten_nested_numbers_only() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"a": 1, "b": {"p99": 2.5, "s": "x"}, "c": [1], "d": {"e": {"f": 3}}}"#,
        )
        .unwrap();
        let mut out = BTreeMap::new();
        flatten_numbers(&v, "", &mut out);
        let want: BTreeMap<String, f64> = [("a", 1.0), ("b.p99", 2.5), ("d.e.f", 3.0)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(out, want);
    }
}

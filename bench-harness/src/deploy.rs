//! The system under test of one run, and its processes: one server (tether or a peer), or a
//! tether cluster (a nats-server and `nodes` tether processes joined by it, serving devices on
//! `/ws` with HS256 tokens signed with a secret made for the run), over `wss://` with the
//! run's test PKI when the scenario has a `[tls]` table (nginx in front of a `ws://` tether is
//! two processes measured together: see `tls_stack`), or nats-server's own WebSocket listener
//! (`natsws`). Starts them on free ports,
//! waits until each accepts (and, for device-serving nodes, until `/readyz` answers 200), reads
//! the nodes' `tether_connections` from their `/metrics`, and stops everything (SIGTERM, then
//! SIGKILL after `SERVER_STOP_TIMEOUT`). Every child gets `PR_SET_PDEATHSIG`, so none outlives
//! the runner.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::runner::RunConfig;
use crate::scenario::{Bus, ServerKind, ServerSpec};
use crate::tls_stack::{self, Pki};

/// How long a server may take to accept its first connection (and a device-serving node to
/// report ready).
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to exit after SIGTERM before it is killed.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one admin HTTP exchange (`/readyz`, `/metrics`).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest `/metrics` page read (a node's page is a few KiB).
const METRICS_BYTES_MAX: u64 = 4 << 20;

/// One started process.
pub struct Proc {
    pub child: Child,
    pub listen: SocketAddr,
    /// tether's admin listener (`/metrics`, `/readyz`).
    pub admin: Option<SocketAddr>,
}

/// Every process of one run's system under test.
pub struct Deployment {
    pub nats: Option<Proc>,
    /// `nats://ADDR` of `nats` (for loadgen's backend publisher).
    pub nats_url: Option<String>,
    pub nodes: Vec<Proc>,
    /// The HS256 secret device tokens are signed with (device-serving rows).
    pub jwt_secret: Option<String>,
    /// Whether `connections()` reads the nodes' metrics (device-serving rows only: scraping
    /// costs the server CPU that single-server scenarios measure).
    pub scrape: bool,
    /// Processes behind the nodes, measured with them (the `ws://` tether behind nginx).
    pub backends: Vec<Proc>,
    /// Whether the nodes serve `wss://` (URLs name `localhost`, the test certificate's name).
    pub tls: bool,
    /// Arguments every `tether-loadgen` of this deployment gets (`--protocol nats` and the
    /// token of a nats-server WebSocket row).
    pub loadgen_args: Vec<String>,
    /// The node is a nats-server: `connections()` reads its monitoring `/varz`.
    pub nats_monitor: bool,
}

pub fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("free port: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

pub(crate) fn free_addr() -> Result<SocketAddr, String> {
    Ok(([127, 0, 0, 1], free_port()?).into())
}

/// Kills the child when the runner dies, whatever the reason.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl, which is
    // async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// `cmd` run under `taskset -c cpus` (the same process: taskset execs it).
pub fn pinned(cmd: Command, cpus: Option<&str>) -> Command {
    let Some(cpus) = cpus else { return cmd };
    let mut t = Command::new("taskset");
    t.arg("-c")
        .arg(cpus)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => t.env(k, v),
            None => t.env_remove(k),
        };
    }
    t
}

/// Finds Node's `ws` module: the repository's test dependencies first, then the global one.
pub fn find_ws_module(repo_root: &Path) -> Option<PathBuf> {
    let local = repo_root.join("tests/node/node_modules/ws");
    if local.join("package.json").is_file() {
        return Some(local);
    }
    let out = Command::new("npm").args(["root", "-g"]).output().ok()?;
    let global = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("ws");
    global.join("package.json").is_file().then_some(global)
}

pub fn command_line(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

pub fn tail(path: &Path, bytes: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(bytes);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].trim().replace('\n', " | ")
}

/// The CPUs of node `index`: the row's list, or one CPU in turn for `alternate`.
fn node_cpus(spec: &ServerSpec, index: usize) -> Option<String> {
    match spec.cpus.as_deref() {
        Some("alternate") => Some((index % crate::peer::cpus_available()).to_string()),
        other => other.map(String::from),
    }
}

/// A server's command line (tether node `index` of a row, or a peer), or why it cannot run.
fn server_command(
    spec: &ServerSpec,
    cfg: &RunConfig,
    listen: SocketAddr,
    admin: SocketAddr,
    device: Option<(&str, Option<&str>, usize)>,
    tls: Option<&Pki>,
) -> Result<Command, String> {
    let peer = |name: &str| -> Result<Command, String> {
        let path = cfg.bin(name);
        if !path.is_file() {
            return Err(format!(
                "{} not built (cargo build --release -p tether-bench)",
                path.display()
            ));
        }
        let mut c = Command::new(path);
        c.arg("--listen").arg(listen.to_string());
        Ok(c)
    };
    let cmd = match spec.kind {
        ServerKind::Tether => {
            let path = match &spec.bin_dir {
                Some(dir) => cfg.bin_dir.join(dir).join("tether"),
                None => cfg.bin("tether"),
            };
            if !path.is_file() {
                return Err(format!(
                    "{} not built (cargo build --release -p tether)",
                    path.display()
                ));
            }
            let mut c = Command::new(path);
            c.args(["serve", "--echo", "--shards"])
                .arg(spec.shards.unwrap_or(1).to_string())
                .arg("--admin")
                .arg(admin.to_string())
                // The peers log nothing; tether logs only warnings and errors here too.
                .env("TETHER_LOG", "warn");
            if let Some(pki) = tls {
                // The wss:// listener is the one measured; the ws:// one stays idle.
                c.arg("--listen")
                    .arg(free_addr()?.to_string())
                    .arg("--tls-listen")
                    .arg(listen.to_string())
                    .arg("--tls-cert")
                    .arg(&pki.cert)
                    .arg("--tls-key")
                    .arg(&pki.key);
            } else {
                c.arg("--listen").arg(listen.to_string());
            }
            if let Some((secret, nats_url, index)) = device {
                c.arg("--jwt-secret").arg(secret);
                if let Some(url) = nats_url {
                    c.arg("--nats")
                        .arg(url)
                        .arg("--node-id")
                        .arg(format!("node-{index}"));
                }
            }
            c
        }
        ServerKind::TungsteniteRustls => {
            let pki = tls.ok_or("tokio-rustls + tungstenite needs [tls]")?;
            let mut c = peer("peer-tungstenite-rustls")?;
            c.arg("--tls-cert")
                .arg(&pki.cert)
                .arg("--tls-key")
                .arg(&pki.key);
            c
        }
        // Started by `Deployment::start_nginx_tether` (two processes).
        ServerKind::NginxTether => return Err("nginx-tether has no single command".into()),
        // Started by `natsws::start` (a configuration file of its own).
        ServerKind::NatsWs => return Err("nats-ws is started by natsws::start".into()),
        ServerKind::Tungstenite => peer("peer-tungstenite")?,
        ServerKind::Fastwebsockets => peer("peer-fastwebsockets")?,
        ServerKind::Raw101 => peer("peer-raw101")?,
        ServerKind::Hold101 => {
            // A release build leaves examples in `examples/` under the binaries' folder.
            let path = [cfg.bin("hold101"), cfg.bin_dir.join("examples/hold101")]
                .into_iter()
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    format!(
                        "{} not built (cargo build --release -p tether-shards --example hold101)",
                        cfg.bin("hold101").display()
                    )
                })?;
            let mut c = Command::new(path);
            c.arg(listen.to_string())
                .arg(spec.shards.unwrap_or(1).to_string());
            c
        }
        ServerKind::NodeWs => {
            let ws = find_ws_module(&cfg.repo_root).ok_or_else(|| {
                "Node `ws` not installed (tests/node/node_modules/ws or global)".to_string()
            })?;
            let script = cfg.repo_root.join("bench-harness/peers/ws-echo.mjs");
            let mut c = Command::new("node");
            c.arg(script)
                .arg("--listen")
                .arg(listen.to_string())
                .arg("--ws-module")
                .arg(ws);
            c
        }
    };
    let mut cmd = cmd;
    cmd.args(&spec.extra_args);
    let index = device.map_or(0, |d| d.2);
    Ok(pinned(cmd, node_cpus(spec, index).as_deref()))
}

fn spawn_logged(mut cmd: Command, log: &Path) -> Result<Child, String> {
    let out = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    die_with_parent(&mut cmd);
    cmd.spawn()
        .map_err(|e| format!("spawn {}: {e}", command_line(&cmd)))
}

/// Starts `cmd` and waits until it accepts on `listen` (and answers 200 on `ready`'s
/// `/readyz`, when given).
pub(crate) fn start_process(
    cmd: Command,
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    ready: bool,
    log: &Path,
) -> Result<Proc, String> {
    let child = spawn_logged(cmd, log)?;
    let mut p = Proc {
        child,
        listen,
        admin,
    };
    let deadline = Instant::now() + SERVER_START_TIMEOUT;
    let mut accepting = false;
    loop {
        if let Ok(Some(status)) = p.child.try_wait() {
            return Err(format!(
                "server exited at start ({status}): {}",
                tail(log, 400)
            ));
        }
        if !accepting {
            accepting = TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok();
        }
        let is_ready = || match (ready, admin) {
            (true, Some(a)) => http_get(a, "/readyz").is_some_and(|(status, _)| status == 200),
            _ => true,
        };
        if accepting && is_ready() {
            return Ok(p);
        }
        if Instant::now() > deadline {
            stop(&mut p);
            return Err(format!(
                "server on {listen} not {} within {:?}: {}",
                if accepting { "ready" } else { "accepting" },
                SERVER_START_TIMEOUT,
                tail(log, 400)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until a `--durable` node's `/metrics` says `tether_mailbox_stream_ready 1` (the node
/// is ready before its mailbox stream exists), for at most `SERVER_START_TIMEOUT`.
fn wait_mailbox_ready(admin: Option<SocketAddr>) -> Result<(), String> {
    let admin = admin.ok_or("a --durable node without an admin listener")?;
    let deadline = Instant::now() + SERVER_START_TIMEOUT;
    loop {
        let ready = http_get(admin, "/metrics").is_some_and(|(status, body)| {
            status == 200
                && body
                    .lines()
                    .any(|l| l.trim() == "tether_mailbox_stream_ready 1")
        });
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "mailbox stream not ready within {SERVER_START_TIMEOUT:?} (tether_mailbox_stream_ready)"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM, then SIGKILL after `SERVER_STOP_TIMEOUT`; reaps the child.
fn stop(p: &mut Proc) {
    let pid = p.child.id() as i32;
    if let Ok(Some(_)) = p.child.try_wait() {
        return;
    }
    // SAFETY: kill(2) on our own child's pid, which is not reaped yet (so not reused).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + SERVER_STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = p.child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = p.child.kill();
    let _ = p.child.wait();
}

/// 24 random bytes from the kernel, hex: the run's device-token secret.
pub(crate) fn random_secret() -> Result<String, String> {
    let mut b = [0u8; 24];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// One HTTP/1.1 GET on the admin listener: (status, body), or None on any failure.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_get_within(addr, path, ADMIN_TIMEOUT)
}

/// `http_get` with `timeout` on the connect and on each read and write.
pub fn http_get_within(addr: SocketAddr, path: &str, timeout: Duration) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.take(METRICS_BYTES_MAX).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Sum of the `tether_connections{...}` samples of a Prometheus text page.
pub fn connections_in(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("tether_connections{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

impl Deployment {
    /// Starts what `spec` names; `dir/logs/BASE-*.log` get the processes' output. Returns the
    /// deployment and the (first node's) command line.
    pub fn start(
        spec: &ServerSpec,
        cfg: &RunConfig,
        dir: &Path,
        base: &str,
        tls: Option<&Pki>,
    ) -> Result<(Deployment, String), String> {
        let mut d = Deployment {
            nats: None,
            nats_url: None,
            nodes: Vec::new(),
            jwt_secret: None,
            scrape: spec.bus.is_some(),
            backends: Vec::new(),
            tls: tls.is_some(),
            loadgen_args: Vec::new(),
            nats_monitor: false,
        };
        if spec.kind == ServerKind::NatsWs {
            return crate::natsws::start(spec, dir, base).map(|(node, cmdline, token)| {
                d.nodes.push(node);
                d.scrape = true;
                d.nats_monitor = true;
                d.loadgen_args = ["--protocol", "nats", "--device-token", &token]
                    .map(String::from)
                    .to_vec();
                (d, cmdline)
            });
        }
        if spec.kind == ServerKind::NginxTether {
            let pki = tls.ok_or("nginx-tether needs [tls]")?;
            let cmdline = d.start_nginx_tether(spec, cfg, dir, base, pki);
            return match cmdline {
                Ok(c) => Ok((d, c)),
                Err(e) => {
                    d.stop();
                    Err(e)
                }
            };
        }
        let mut nats_url = None;
        if let Some(bus @ (Bus::Nats | Bus::Jetstream)) = spec.bus {
            let listen = free_addr()?;
            let mut cmd = Command::new("nats-server");
            cmd.args(["-a", "127.0.0.1", "-p"])
                .arg(listen.port().to_string());
            if bus == Bus::Jetstream {
                // A store of this run's own: no stream or message left from an earlier run.
                let store = dir.join(format!("js/{base}"));
                let _ = std::fs::remove_dir_all(&store);
                std::fs::create_dir_all(&store).map_err(|e| format!("{}: {e}", store.display()))?;
                cmd.arg("-js").arg("-sd").arg(&store);
            }
            let log = dir.join(format!("logs/{base}-nats.log"));
            d.nats = Some(start_process(cmd, listen, None, false, &log)?);
            nats_url = Some(format!("nats://{listen}"));
            d.nats_url.clone_from(&nats_url);
        }
        let durable = spec.extra_args.iter().any(|a| a == "--durable");
        if spec.bus.is_some() {
            d.jwt_secret = Some(random_secret()?);
        }
        let mut first_cmdline = String::new();
        let nodes = spec.nodes.unwrap_or(1) as usize;
        for i in 0..nodes {
            let listen = free_addr()?;
            let admin = free_addr()?;
            let device = d.jwt_secret.as_deref().map(|s| (s, nats_url.as_deref(), i));
            let cmd = match server_command(spec, cfg, listen, admin, device, tls) {
                Ok(c) => c,
                Err(e) => {
                    d.stop();
                    return Err(e);
                }
            };
            if i == 0 {
                first_cmdline = command_line(&cmd);
            }
            let name = if nodes == 1 {
                format!("logs/{base}-server.log")
            } else {
                format!("logs/{base}-node-{i}.log")
            };
            let admin = (spec.kind == ServerKind::Tether).then_some(admin);
            match start_process(cmd, listen, admin, d.scrape, &dir.join(name)) {
                Ok(p) => d.nodes.push(p),
                Err(e) => {
                    d.stop();
                    return Err(e);
                }
            }
            if durable {
                if let Err(e) = wait_mailbox_ready(admin) {
                    d.stop();
                    return Err(format!("node {i}: {e}"));
                }
            }
        }
        Ok((d, first_cmdline))
    }

    /// nginx on a free port terminating TLS in front of a `ws://` tether (the row's shards)
    /// on another: the node is nginx, tether its backend. Returns both command lines.
    fn start_nginx_tether(
        &mut self,
        spec: &ServerSpec,
        cfg: &RunConfig,
        dir: &Path,
        base: &str,
        pki: &Pki,
    ) -> Result<String, String> {
        let tether_spec = ServerSpec {
            kind: ServerKind::Tether,
            ..spec.clone()
        };
        let (backend, admin) = (free_addr()?, free_addr()?);
        let tether = server_command(&tether_spec, cfg, backend, admin, None, None)?;
        let listen = free_addr()?;
        let nginx = tls_stack::nginx_command(&dir.join("nginx"), listen, backend, pki)?;
        let cmdline = format!("{} <- {}", command_line(&nginx), command_line(&tether));
        let tether_log = dir.join(format!("logs/{base}-tether.log"));
        let back = start_process(tether, backend, Some(admin), false, &tether_log)?;
        self.backends.push(back);
        let log = dir.join(format!("logs/{base}-server.log"));
        self.nodes
            .push(start_process(nginx, listen, None, false, &log)?);
        Ok(cmdline)
    }

    /// One URL per node, with `path`.
    pub fn urls(&self, path: &str) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| match self.tls {
                // The name the test certificate is made for, resolved to the loopback address.
                true => format!("wss://localhost:{}{path}", n.listen.port()),
                false => format!("ws://{}{path}", n.listen),
            })
            .collect()
    }

    /// Every process measured as the server: the nodes, their descendants (nginx's workers
    /// under its master) and the backends.
    pub fn node_pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for n in &self.nodes {
            pids.push(n.child.id());
            pids.extend(tls_stack::descendants(n.child.id()));
        }
        pids.extend(self.backends.iter().map(|b| b.child.id()));
        pids
    }

    /// Descriptors the measured processes hold per client connection: behind nginx, three
    /// (nginx's two and tether's one).
    pub fn fds_per_conn(&self) -> u64 {
        if self.backends.is_empty() {
            1
        } else {
            3
        }
    }

    pub fn nats_pid(&self) -> Option<u32> {
        self.nats.as_ref().map(|n| n.child.id())
    }

    /// Connections the nodes hold (sum of `tether_connections`), when this row is scraped
    /// and every node answered.
    pub fn connections(&self) -> Option<u64> {
        if !self.scrape {
            return None;
        }
        let mut sum = 0;
        for n in &self.nodes {
            let path = if self.nats_monitor {
                "/varz"
            } else {
                "/metrics"
            };
            let (status, body) = http_get(n.admin?, path)?;
            if status != 200 {
                return None;
            }
            sum += if self.nats_monitor {
                crate::natsws::connections_in_varz(&body)?
            } else {
                connections_in(&body)
            };
        }
        Some(sum)
    }

    /// Stops the nodes, then nats-server.
    pub fn stop(&mut self) {
        for n in &self.nodes {
            // SAFETY: kill(2) on our own child's pid, which is not reaped yet (so not reused).
            unsafe { libc::kill(n.child.id() as i32, libc::SIGTERM) };
        }
        for n in &mut self.nodes {
            stop(n);
        }
        for b in &mut self.backends {
            stop(b);
        }
        if let Some(n) = &mut self.nats {
            stop(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_summed_over_shards() {
        let page = "# TYPE tether_connections gauge\ntether_connections{shard=\"0\"} 3\n\
                    tether_connections{shard=\"1\"} 4\ntether_connections_total 99\n";
        assert_eq!(connections_in(page), 7);
    }

    #[test]
    fn secrets_are_fresh_hex() {
        let a = random_secret().unwrap();
        assert_eq!(a.len(), 48);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, random_secret().unwrap());
    }

    #[test]
    fn pinning_wraps_in_taskset() {
        let mut c = Command::new("tether");
        c.arg("serve").env("TETHER_LOG", "warn");
        let p = pinned(c, Some("0"));
        assert_eq!(command_line(&p), "taskset -c 0 tether serve");
        assert!(p.get_envs().any(|(k, _)| k == "TETHER_LOG"));
    }
}

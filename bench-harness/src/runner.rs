//! Runs a scenario: for each repetition and each server (interleaved, so that slow drifts of a
//! shared machine spread over all servers), start the server on a free port, wait until it
//! accepts, run `tether-loadgen --json` with the scenario's schedule against it while sampling
//! the server's RSS, CPU, open descriptors and the kernel's TCP memory, stop the server, and
//! record everything in `results.json` (rewritten after every run, so an interrupted run keeps
//! what it measured). Every child gets `PR_SET_PDEATHSIG`, so none outlives the runner.
//!
//! Metrics added to each run beside loadgen's own:
//! `server.rss_before_bytes`, `server.rss_peak_bytes`, `server.rss_delta_bytes` (peak − before),
//! `server.rss_delta_per_conn_bytes` (delta / `connected_peak`), `server.rss_held_bytes` (the
//! lowest RSS while every connection was open: what holding them costs, without the transient
//! buffers of handshakes and closes that the peak includes), `server.rss_held_per_conn_bytes`
//! ((held − before) / `connected_peak`), `server.fds_delta_peak`,
//! `server.cpu_s`, `server.cpu_us_per_handshake`, `kernel.tcp_mem_delta_bytes` (sockstat TCP
//! memory, both ends of every loopback connection), `kernel.tcp_mem_per_conn_bytes`,
//! `loadgen.cpu_s`, `loadgen.cpu_us_per_handshake`, `loadgen.wall_s`, and `host.loadavg_1m`
//! (the machine's load average as the load started: noise from other work).

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::procfs;
use crate::report;
use crate::results::{
    flatten_numbers, LoadgenSecond, Machine, Results, RunResult, Sample, ServerResult,
};
use crate::scenario::{Scenario, ServerKind, ServerSpec};

/// How long a server may take to accept its first connection.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a server may take to exit after SIGTERM before it is killed.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where things are and what to run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Folder with `tether`, `tether-loadgen` and the `peer-*` binaries.
    pub bin_dir: PathBuf,
    /// Reports go to `out_root/<scenario>/`.
    pub out_root: PathBuf,
    /// The repository (for `bench-harness/peers/`, `tests/node/`, `Cargo.lock`).
    pub repo_root: PathBuf,
    /// Overrides the scenario's repetitions (still at least 3 unless `allow_few_runs`).
    pub repetitions: Option<u32>,
    /// Only run servers whose label or kind contains one of these.
    pub only: Vec<String>,
    /// The command line, recorded in the results.
    pub command: String,
}

impl RunConfig {
    fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}

/// A server process started for one run.
struct Server {
    child: Child,
    listen: SocketAddr,
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("free port: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// Kills the child when the runner dies, whatever the reason.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl, which is
    // async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
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

/// The server's command line, or why it cannot run here.
fn server_command(
    spec: &ServerSpec,
    cfg: &RunConfig,
    listen: SocketAddr,
    admin: SocketAddr,
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
    let mut cmd = match spec.kind {
        ServerKind::Tether => {
            let path = cfg.bin("tether");
            if !path.is_file() {
                return Err(format!(
                    "{} not built (cargo build --release -p tether)",
                    path.display()
                ));
            }
            let mut c = Command::new(path);
            c.args(["serve", "--echo", "--shards"])
                .arg(spec.shards.unwrap_or(1).to_string())
                .arg("--listen")
                .arg(listen.to_string())
                .arg("--admin")
                .arg(admin.to_string())
                // The peers log nothing; tether logs only warnings and errors here too.
                .env("TETHER_LOG", "warn");
            c
        }
        ServerKind::Tungstenite => peer("peer-tungstenite")?,
        ServerKind::Fastwebsockets => peer("peer-fastwebsockets")?,
        ServerKind::Raw101 => peer("peer-raw101")?,
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
    cmd.args(&spec.extra_args);
    Ok(cmd)
}

fn command_line(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

fn tail(path: &Path, bytes: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(bytes);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].trim().replace('\n', " | ")
}

fn start_server(mut cmd: Command, listen: SocketAddr, log: &Path) -> Result<Server, String> {
    let out = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    die_with_parent(&mut cmd);
    let child = cmd
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", command_line(&cmd)))?;
    let mut server = Server { child, listen };
    let deadline = Instant::now() + SERVER_START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(format!(
                "server exited at start ({status}): {}",
                tail(log, 400)
            ));
        }
        if TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok() {
            return Ok(server);
        }
        if Instant::now() > deadline {
            stop_server(&mut server);
            return Err(format!(
                "server did not accept on {listen} within {:?}: {}",
                SERVER_START_TIMEOUT,
                tail(log, 400)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop_server(server: &mut Server) {
    let pid = server.child.id() as i32;
    // SAFETY: kill(2) on our own child's pid, which is not reaped yet (so not reused).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + SERVER_STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = server.child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = server.child.kill();
    let _ = server.child.wait();
}

fn sample(pid: u32, t_s: f64) -> Option<Sample> {
    let (tcp_inuse, tcp_mem_pages) = procfs::tcp_sockstat().unwrap_or((0, 0));
    Some(Sample {
        t_s,
        rss_bytes: procfs::rss_bytes(pid)?,
        cpu_s: procfs::cpu_seconds(pid)?,
        fds: procfs::open_fds(pid)?,
        tcp_inuse,
        tcp_mem_pages,
    })
}

fn children_cpu_s() -> f64 {
    // SAFETY: an all-zero rusage is valid; getrusage only writes it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The loadgen arguments for the scenario's schedule against `url`.
pub fn loadgen_args(scenario: &Scenario, url: &str, json: &Path) -> Vec<String> {
    let l = &scenario.loadgen;
    let mut a = vec![
        "--url".to_string(),
        url.to_string(),
        "--clients".to_string(),
        l.clients.to_string(),
    ];
    if let Some(rate) = l.rate {
        a.extend(["--rate".to_string(), trim_float(rate)]);
    }
    if let Some(r) = l.ramp {
        a.extend([
            "--rate".to_string(),
            format!("{}:{}", trim_float(r.from), trim_float(r.to)),
            "--ramp".to_string(),
            format!("{}s", trim_float(r.over_s)),
        ]);
    }
    a.extend(["--hold".to_string(), format!("{}s", trim_float(l.hold_s))]);
    if let (Some(rate), Some(size)) = (l.msg_rate, l.msg_size) {
        if rate > 0.0 {
            a.extend([
                "--msg-rate".to_string(),
                trim_float(rate),
                "--msg-size".to_string(),
                size.to_string(),
            ]);
        }
    }
    a.extend(["--json".to_string(), json.display().to_string()]);
    a.extend(l.extra_args.iter().cloned());
    a
}

fn trim_float(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

fn slug(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// One run of one server: start, load, sample, stop.
fn run_once(
    scenario: &Scenario,
    spec: &ServerSpec,
    cfg: &RunConfig,
    dir: &Path,
    repetition: u32,
) -> (String, RunResult) {
    let label = spec.label();
    let base = format!("{}-{repetition}", slug(&label));
    let mut run = RunResult {
        repetition,
        metrics: BTreeMap::new(),
        timeline: Vec::new(),
        loadgen_seconds: Vec::new(),
        error: None,
    };
    let ports = free_port().and_then(|a| free_port().map(|b| (a, b)));
    let (port, admin_port) = match ports {
        Ok(p) => p,
        Err(e) => {
            run.error = Some(e);
            return (String::new(), run);
        }
    };
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
    let cmd = match server_command(spec, cfg, listen, admin) {
        Ok(c) => c,
        Err(e) => {
            run.error = Some(e);
            return (String::new(), run);
        }
    };
    let cmdline = command_line(&cmd);
    let mut server = match start_server(cmd, listen, &dir.join(format!("logs/{base}-server.log"))) {
        Ok(s) => s,
        Err(e) => {
            run.error = Some(e);
            return (cmdline, run);
        }
    };
    std::thread::sleep(Duration::from_millis(scenario.settle_ms));
    // Other work on a shared machine is noise: record how busy it was as the load started.
    if let Some(load1) = procfs::first_line(Path::new("/proc/loadavg")).and_then(|l| {
        l.split_whitespace()
            .next()
            .and_then(|w| w.parse::<f64>().ok())
    }) {
        run.metrics.insert("host.loadavg_1m".into(), load1);
    }
    let pid = server.child.id();
    let json = dir.join(format!("runs/{base}.json"));
    let _ = std::fs::remove_file(&json);
    let url = format!("ws://{}{}", server.listen, scenario.loadgen.path);
    let args = loadgen_args(scenario, &url, &json);
    let loadgen_log = dir.join(format!("logs/{base}-loadgen.log"));
    let outcome = drive_load(scenario, cfg, pid, &args, &loadgen_log, &mut run);
    stop_server(&mut server);
    if let Err(e) = outcome {
        run.error = Some(e);
        return (cmdline, run);
    }
    match std::fs::read_to_string(&json)
        .map_err(|e| format!("loadgen wrote no {}: {e}", json.display()))
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).map_err(|e| e.to_string()))
    {
        Ok(v) => flatten_numbers(&v, "", &mut run.metrics),
        Err(e) => {
            run.error = Some(format!("{e}; loadgen log: {}", tail(&loadgen_log, 400)));
            return (cmdline, run);
        }
    }
    derive_metrics(&mut run);
    (cmdline, run)
}

/// Runs loadgen to completion (or its timeout) while sampling the server.
fn drive_load(
    scenario: &Scenario,
    cfg: &RunConfig,
    server_pid: u32,
    args: &[String],
    log: &Path,
    run: &mut RunResult,
) -> Result<(), String> {
    let out = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(cfg.bin("tether-loadgen"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    die_with_parent(&mut cmd);
    let start = Instant::now();
    let before = sample(server_pid, 0.0).ok_or("server died before the load")?;
    run.timeline.push(before);
    let cpu_children_before = children_cpu_s();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", cfg.bin("tether-loadgen").display()))?;
    let timeout = Duration::from_secs(scenario.loadgen.timeout_s);
    let tick = Duration::from_millis(scenario.sample_ms);
    let status = loop {
        std::thread::sleep(tick);
        let t_s = start.elapsed().as_secs_f64();
        match sample(server_pid, t_s) {
            Some(s) => run.timeline.push(s),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("server died during the load at {t_s:.1} s"));
            }
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "loadgen still running after {} s: killed; {}",
                    scenario.loadgen.timeout_s,
                    tail(log, 400)
                ));
            }
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for loadgen: {e}")),
        }
    };
    let wall_s = start.elapsed().as_secs_f64();
    run.metrics.insert(
        "loadgen.cpu_s".into(),
        children_cpu_s() - cpu_children_before,
    );
    run.metrics.insert("loadgen.wall_s".into(), wall_s);
    run.loadgen_seconds = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(LoadgenSecond::parse)
        .collect();
    if !status.success() {
        return Err(format!("loadgen exited with {status}: {}", tail(log, 400)));
    }
    Ok(())
}

fn derive_metrics(run: &mut RunResult) {
    let Some(first) = run.timeline.first().copied() else {
        return;
    };
    let last = *run.timeline.last().unwrap_or(&first);
    let peak = |f: fn(&Sample) -> u64| run.timeline.iter().map(f).max().unwrap_or(0);
    let rss_peak = peak(|s| s.rss_bytes);
    let fds_peak = peak(|s| s.fds);
    let tcp_mem_peak = peak(|s| s.tcp_mem_pages);
    let m = &mut run.metrics;
    let connected = m
        .get("connected_peak")
        .copied()
        .unwrap_or((fds_peak - first.fds) as f64);
    let handshakes = m.get("handshakes_ok").copied().unwrap_or(connected);
    let rss_delta = rss_peak as f64 - first.rss_bytes as f64;
    m.insert("server.rss_before_bytes".into(), first.rss_bytes as f64);
    m.insert("server.rss_peak_bytes".into(), rss_peak as f64);
    m.insert("server.rss_delta_bytes".into(), rss_delta);
    m.insert(
        "server.fds_delta_peak".into(),
        (fds_peak - first.fds) as f64,
    );
    let cpu_s = last.cpu_s - first.cpu_s;
    m.insert("server.cpu_s".into(), cpu_s);
    let tcp_delta =
        (tcp_mem_peak as f64 - first.tcp_mem_pages as f64) * procfs::page_size_bytes() as f64;
    m.insert("kernel.tcp_mem_delta_bytes".into(), tcp_delta);
    let all_open = first.fds + connected as u64;
    let rss_held = run
        .timeline
        .iter()
        .filter(|s| s.fds >= all_open)
        .map(|s| s.rss_bytes)
        .min();
    if let Some(held) = rss_held {
        m.insert("server.rss_held_bytes".into(), held as f64);
    }
    if connected > 0.0 {
        m.insert(
            "server.rss_delta_per_conn_bytes".into(),
            rss_delta / connected,
        );
        if let Some(held) = rss_held {
            m.insert(
                "server.rss_held_per_conn_bytes".into(),
                (held as f64 - first.rss_bytes as f64) / connected,
            );
        }
        m.insert(
            "kernel.tcp_mem_per_conn_bytes".into(),
            tcp_delta / connected,
        );
    }
    if handshakes > 0.0 {
        m.insert(
            "server.cpu_us_per_handshake".into(),
            cpu_s * 1e6 / handshakes,
        );
        if let Some(lg) = m.get("loadgen.cpu_s").copied() {
            m.insert("loadgen.cpu_us_per_handshake".into(), lg * 1e6 / handshakes);
        }
    }
}

fn command_output(cmd: &str, args: &[&str], dir: &Path) -> Option<String> {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Versions of crates from the repository's `Cargo.lock` (several versions joined by "/").
fn lock_versions(repo_root: &Path, names: &[&str]) -> BTreeMap<String, String> {
    #[derive(serde::Deserialize)]
    struct Lock {
        package: Vec<Pkg>,
    }
    #[derive(serde::Deserialize)]
    struct Pkg {
        name: String,
        version: String,
    }
    let mut out = BTreeMap::new();
    let Ok(text) = std::fs::read_to_string(repo_root.join("Cargo.lock")) else {
        return out;
    };
    let Ok(lock) = toml::from_str::<Lock>(&text) else {
        return out;
    };
    for name in names {
        let versions: Vec<String> = lock
            .package
            .iter()
            .filter(|p| p.name == *name)
            .map(|p| p.version.clone())
            .collect();
        if !versions.is_empty() {
            out.insert(name.to_string(), versions.join("/"));
        }
    }
    out
}

fn machine(cfg: &RunConfig) -> Machine {
    let mut versions = lock_versions(
        &cfg.repo_root,
        &[
            "tokio-tungstenite",
            "fastwebsockets",
            "hyper",
            "tokio",
            "glommio",
        ],
    );
    if let Some(rev) = command_output("git", &["rev-parse", "--short", "HEAD"], &cfg.repo_root) {
        versions.insert("tether (git)".into(), rev);
    }
    if let Some(v) = command_output("node", &["--version"], &cfg.repo_root) {
        versions.insert("node".into(), v);
    }
    if let Some(ws) = find_ws_module(&cfg.repo_root) {
        let v = std::fs::read_to_string(ws.join("package.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("version").and_then(|v| v.as_str()).map(String::from));
        if let Some(v) = v {
            versions.insert("ws".into(), v);
        }
    }
    Machine {
        started_utc: command_output("date", &["-u", "+%Y-%m-%dT%H:%M:%S"], &cfg.repo_root)
            .unwrap_or_default(),
        nproc: crate::peer::cpus_available(),
        kernel: procfs::first_line(Path::new("/proc/sys/kernel/osrelease")).unwrap_or_default(),
        rustc: command_output("rustc", &["--version"], &cfg.repo_root).unwrap_or_default(),
        versions,
        command: cfg.command.clone(),
        loadavg_at_start: procfs::first_line(Path::new("/proc/loadavg")).unwrap_or_default(),
    }
}

/// Runs `scenario` and writes `results.json`, `report.md` and the plots; returns the folder.
pub fn run(scenario: &Scenario, cfg: &RunConfig) -> Result<PathBuf, String> {
    let dir = cfg.out_root.join(&scenario.name);
    for sub in ["logs", "runs"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let loadgen = cfg.bin("tether-loadgen");
    if !loadgen.is_file() {
        return Err(format!(
            "{} not built (cargo build --release -p tether-loadgen)",
            loadgen.display()
        ));
    }
    let _ = crate::peer::raise_nofile_limit();
    let mut scenario = scenario.clone();
    if let Some(r) = cfg.repetitions {
        scenario.repetitions = r;
    }
    let specs: Vec<ServerSpec> = scenario
        .servers
        .iter()
        .filter(|s| {
            cfg.only.is_empty()
                || cfg.only.iter().any(|o| {
                    s.label().contains(o.as_str()) || format!("{:?}", s.kind).to_lowercase() == *o
                })
        })
        .cloned()
        .collect();
    scenario.servers = specs.clone();
    let mut results = Results {
        machine: machine(cfg),
        servers: specs
            .iter()
            .map(|s| ServerResult {
                label: s.label(),
                kind: s.kind,
                command: String::new(),
                skipped: None,
                runs: Vec::new(),
            })
            .collect(),
        scenario: scenario.clone(),
    };
    // Node `ws` is optional: note its absence instead of failing every run.
    for (spec, result) in specs.iter().zip(results.servers.iter_mut()) {
        if spec.kind == ServerKind::NodeWs && find_ws_module(&cfg.repo_root).is_none() {
            result.skipped =
                Some("Node `ws` not installed (tests/node/node_modules/ws or global)".into());
        }
    }
    let results_path = dir.join("results.json");
    for repetition in 1..=scenario.repetitions {
        for (i, spec) in specs.iter().enumerate() {
            if results.servers[i].skipped.is_some() {
                continue;
            }
            eprintln!(
                "[tether-bench] {} run {repetition}/{}: {}",
                scenario.name,
                scenario.repetitions,
                spec.label()
            );
            let (cmdline, run) = run_once(&scenario, spec, cfg, &dir, repetition);
            if let Some(e) = &run.error {
                eprintln!("[tether-bench]   failed: {e}");
            } else {
                eprintln!("[tether-bench]   {}", one_line(&scenario, &run));
            }
            if results.servers[i].command.is_empty() {
                results.servers[i].command = cmdline;
            }
            results.servers[i].runs.push(run);
            results.save(&results_path)?;
            std::thread::sleep(Duration::from_millis(scenario.cooldown_ms));
        }
    }
    report::write_report(&results, &dir)?;
    Ok(dir)
}

fn one_line(scenario: &Scenario, run: &RunResult) -> String {
    scenario
        .metrics
        .iter()
        .filter_map(|m| {
            run.metrics
                .get(&m.key)
                .map(|v| format!("{} {}", m.label, report::fmt_num(*v)))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert_eq!(slug("tether (2 shards)"), "tether-2-shards");
        assert_eq!(slug("raw epoll 101"), "raw-epoll-101");
    }

    #[test]
    fn derived_metrics_from_samples() {
        let s = |t_s, rss_bytes, cpu_s, fds, tcp_mem_pages| Sample {
            t_s,
            rss_bytes,
            cpu_s,
            fds,
            tcp_inuse: 0,
            tcp_mem_pages,
        };
        let mut run = RunResult {
            repetition: 1,
            metrics: [
                ("connected_peak", 1000.0),
                ("handshakes_ok", 1000.0),
                ("loadgen.cpu_s", 0.5),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            timeline: vec![
                s(0.0, 10_000_000, 1.0, 10, 100),
                s(0.5, 11_800_000, 1.2, 1010, 250),
                s(1.0, 11_500_000, 1.5, 1010, 300),
                s(1.5, 12_000_000, 1.8, 1010, 300),
                s(2.0, 11_000_000, 2.0, 10, 120),
            ],
            loadgen_seconds: Vec::new(),
            error: None,
        };
        derive_metrics(&mut run);
        let m = &run.metrics;
        assert_eq!(m["server.rss_delta_bytes"], 2_000_000.0);
        assert_eq!(m["server.rss_delta_per_conn_bytes"], 2000.0);
        // The lowest RSS while all 1000 were open (the 1.0 s sample), not the peak.
        assert_eq!(m["server.rss_held_bytes"], 11_500_000.0);
        assert_eq!(m["server.rss_held_per_conn_bytes"], 1500.0);
        assert_eq!(m["server.fds_delta_peak"], 1000.0);
        assert_eq!(m["server.cpu_s"], 1.0);
        assert_eq!(m["server.cpu_us_per_handshake"], 1000.0);
        assert_eq!(m["loadgen.cpu_us_per_handshake"], 500.0);
        let page = procfs::page_size_bytes() as f64;
        assert_eq!(m["kernel.tcp_mem_per_conn_bytes"], 200.0 * page / 1000.0);
    }
}

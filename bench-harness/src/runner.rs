//! Runs a scenario: for each repetition and each server row (interleaved, so that slow drifts
//! of a shared machine spread over all rows), start the row's system under test (`deploy`: one
//! server, or a nats-server and tether nodes), run `tether-loadgen --json` with the scenario's
//! schedule against it (its clients spread round-robin over the nodes) while sampling the
//! servers' RSS, CPU, open descriptors, the nats-server and the kernel's TCP and slab memory,
//! run the `[probe]` devices beside the load when the scenario has one, stop everything, and
//! record it in `results.json` (rewritten after every run, so an interrupted run keeps what it
//! measured).
//!
//! Metrics added to each run beside loadgen's own (`server.*` sums the nodes of a cluster):
//! `server.rss_before_bytes`, `server.rss_peak_bytes`, `server.rss_delta_bytes` (peak − before),
//! `server.rss_delta_per_conn_bytes` (delta / `connected_peak`), `server.rss_held_bytes` (the
//! lowest RSS while every connection was open: what holding them costs, without the transient
//! buffers of handshakes and closes that the peak includes), `server.rss_held_per_conn_bytes`
//! ((held − before) / `connected_peak`), `server.fds_delta_peak`,
//! `server.cpu_s`, `server.cpu_us_per_handshake`, `server.cpu_us_per_message` (server CPU over
//! the messages loadgen received), `server.cpu_cores_busy` (server CPU over loadgen's wall
//! time), `server.nodes`, and on device-serving rows `server.connections_peak` (the highest sum
//! of the nodes' `tether_connections`) and `server.connections_missing` (clients and probe
//! devices asked for minus that peak; a nats-server WebSocket row reads its `/varz`
//! `connections`); `nats.cpu_s`, `nats.rss_peak_bytes`, `nats.rss_held_per_conn_bytes` (the
//! nats-server's RSS at the server's held sample, minus its RSS before, over `connected_peak`);
//! `system.rss_held_per_conn_bytes`, `system.cpu_s`, `system.cpu_us_per_message` (the same, of
//! the nodes and the nats-server behind them together: what a device costs the whole system);
//! `kernel.tcp_mem_delta_bytes` (sockstat TCP memory, both ends of every loopback connection),
//! `kernel.tcp_mem_per_conn_bytes`, `kernel.slab_per_conn_bytes` (growth of the kernel's slab,
//! both ends, per connection); `loadgen.cpu_s` (with the probe's), `loadgen.cpu_us_per_handshake`,
//! `server.cpu_per_loadgen_cpu` (server CPU over loadgen's for the same handshakes: steadier than
//! either on a shared machine, where both slow down together),
//! `loadgen.wall_s`; `clients_target`; and `host.loadavg_1m` (the machine's load average as
//! the load started: noise from other work).
//!
//! A scenario with a `[tls]` table runs every server over `wss://` with the run's test PKI
//! (`tls_stack`, loadgen given `--ca-file`); for nginx in front of tether, "the server" is
//! nginx's processes and the tether behind it together (their RSS, CPU and descriptors summed).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::deploy::{self, Deployment};
use crate::procfs;
use crate::report;
use crate::results::{
    flatten_numbers, LoadgenSecond, Machine, Results, RunResult, Sample, ServerResult,
};
use crate::scenario::{Probe, Scenario, ServerKind, ServerSpec};
use crate::tls_stack::Pki;

/// Where things are and what to run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Folder with `tether`, `tether-loadgen` and the `peer-*` binaries.
    pub bin_dir: PathBuf,
    /// Reports go to `out_root/<scenario>/`.
    pub out_root: PathBuf,
    /// The repository (for `bench-harness/peers/`, `tests/node/`, `Cargo.lock`).
    pub repo_root: PathBuf,
    /// Overrides the scenario's repetitions.
    pub repetitions: Option<u32>,
    /// Only run servers whose label or kind contains one of these.
    pub only: Vec<String>,
    /// The command line, recorded in the results.
    pub command: String,
}

impl RunConfig {
    pub(crate) fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}

pub use crate::deploy::find_ws_module;

/// One sample of every process of the deployment: `None` when a node is gone.
fn sample(d: &Deployment, t_s: f64) -> Option<Sample> {
    let (tcp_inuse, tcp_mem_pages) = procfs::tcp_sockstat().unwrap_or((0, 0));
    let mut s = Sample {
        t_s,
        tcp_inuse,
        tcp_mem_pages,
        slab_kib: procfs::slab_kib().unwrap_or(0),
        ..Sample::default()
    };
    for pid in d.node_pids() {
        s.rss_bytes += procfs::rss_bytes(pid)?;
        s.cpu_s += procfs::cpu_seconds(pid)?;
        s.fds += procfs::open_fds(pid)?;
    }
    if let Some(pid) = d.nats_pid() {
        s.nats_rss_bytes = procfs::rss_bytes(pid)?;
        s.nats_cpu_s = procfs::cpu_seconds(pid)?;
    }
    s.connections = d.connections();
    Some(s)
}

fn children_cpu_s() -> f64 {
    // SAFETY: an all-zero rusage is valid; getrusage only writes it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn url_args(urls: &[String]) -> Vec<String> {
    urls.iter()
        .flat_map(|u| ["--url".to_string(), u.clone()])
        .collect()
}

/// The loadgen arguments for the scenario's schedule against `urls` (round-robin).
pub fn loadgen_args(scenario: &Scenario, urls: &[String], json: &Path) -> Vec<String> {
    let l = &scenario.loadgen;
    let mut a = url_args(urls);
    a.extend(["--clients".to_string(), l.clients.to_string()]);
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
    if let Some(drain) = l.drain_timeout_s {
        a.extend([
            "--drain-timeout".to_string(),
            format!("{}s", trim_float(drain)),
        ]);
    }
    a.extend(["--json".to_string(), json.display().to_string()]);
    a.extend(l.extra_args.iter().cloned());
    a
}

/// The probe's loadgen arguments: its devices in pairs, one worker (so a device's partner is
/// the next client, on the next node), connecting within about a second.
pub fn probe_args(p: &Probe, urls: &[String], secret: &str, json: &Path) -> Vec<String> {
    let mut a = url_args(urls);
    a.extend(
        [
            "--clients",
            &p.devices.to_string(),
            "--rate",
            &p.devices.max(10).to_string(),
            "--hold",
            &format!("{}s", trim_float(p.hold_s)),
            "--workload",
            "d2d",
            "--msg-rate",
            &trim_float(p.msg_rate),
            "--msg-size",
            &p.msg_size.to_string(),
            "--device-prefix",
            "probe-",
            "--workers",
            "1",
            "--device-jwt-secret",
            secret,
            "--quiet",
            "--json",
            &json.display().to_string(),
        ]
        .map(String::from),
    );
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

fn read_json(path: &Path, log: &Path) -> Result<serde_json::Value, String> {
    std::fs::read_to_string(path)
        .map_err(|e| format!("loadgen wrote no {}: {e}", path.display()))
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).map_err(|e| e.to_string()))
        .map_err(|e| format!("{e}; loadgen log: {}", deploy::tail(log, 400)))
}

/// One run of one server row: start, load (and probe), sample, stop.
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
    let pki = scenario.tls.as_ref().map(|_| Pki::in_dir(&dir.join("pki")));
    let (mut deployment, cmdline) = match Deployment::start(spec, cfg, dir, &base, pki.as_ref()) {
        Ok(d) => d,
        Err(e) => {
            run.error = Some(e);
            return (String::new(), run);
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
    let json = dir.join(format!("runs/{base}.json"));
    let probe_json = dir.join(format!("runs/{base}-probe.json"));
    let _ = std::fs::remove_file(&json);
    let _ = std::fs::remove_file(&probe_json);
    let urls = deployment.urls(&scenario.loadgen.path);
    let mut args = loadgen_args(scenario, &urls, &json);
    if let Some(pki) = &pki {
        args.extend(["--ca-file".to_string(), pki.ca.display().to_string()]);
    }
    if let Some(secret) = &deployment.jwt_secret {
        args.extend(["--device-jwt-secret".to_string(), secret.clone()]);
    }
    args.extend(deployment.loadgen_args.iter().cloned());
    if let (true, Some(url)) = (scenario.loadgen.nats_publisher, &deployment.nats_url) {
        args.extend(["--nats".to_string(), url.clone()]);
    }
    args.extend(spec.loadgen_args.iter().cloned());
    let probe = match (&scenario.probe, &deployment.jwt_secret) {
        (Some(p), Some(secret)) => Some((
            scenario.probe_start_s().unwrap_or(0.0),
            probe_args(p, &deployment.urls("/ws"), secret, &probe_json),
        )),
        _ => None,
    };
    let loadgen_log = dir.join(format!("logs/{base}-loadgen.log"));
    let probe_log = dir.join(format!("logs/{base}-probe.log"));
    let outcome = drive_load(
        scenario,
        cfg,
        &deployment,
        &args,
        probe
            .as_ref()
            .map(|(t, a)| (*t, a.as_slice(), probe_log.as_path())),
        &loadgen_log,
        &mut run,
    );
    deployment.stop();
    if let Err(e) = outcome {
        run.error = Some(e);
        return (cmdline, run);
    }
    match read_json(&json, &loadgen_log) {
        Ok(v) => flatten_numbers(&v, "", &mut run.metrics),
        Err(e) => {
            run.error = Some(e);
            return (cmdline, run);
        }
    }
    if probe.is_some() {
        match read_json(&probe_json, &probe_log) {
            Ok(v) => flatten_numbers(&v, "probe", &mut run.metrics),
            Err(e) => {
                run.error = Some(format!("probe: {e}"));
                return (cmdline, run);
            }
        }
    }
    let probes = scenario.probe.as_ref().map_or(0, |p| p.devices);
    run.metrics.insert(
        "clients_target".into(),
        (scenario.loadgen.clients + probes) as f64,
    );
    run.metrics
        .insert("server.nodes".into(), Scenario::nodes_of(spec) as f64);
    derive_metrics(&mut run, deployment.fds_per_conn());
    (cmdline, run)
}

fn spawn_loadgen(
    cfg: &RunConfig,
    cpus: Option<&str>,
    args: &[String],
    log: &Path,
) -> Result<Child, String> {
    let out = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(cfg.bin("tether-loadgen"));
    cmd.args(args);
    let mut cmd = deploy::pinned(cmd, cpus);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    deploy::die_with_parent(&mut cmd);
    cmd.spawn()
        .map_err(|e| format!("spawn {}: {e}", cfg.bin("tether-loadgen").display()))
}

/// Runs loadgen to completion (or its timeout) while sampling the deployment; starts the probe
/// (`(start_after_s, args, log)`) when its time comes and waits for it too.
fn drive_load(
    scenario: &Scenario,
    cfg: &RunConfig,
    deployment: &Deployment,
    args: &[String],
    probe: Option<(f64, &[String], &Path)>,
    log: &Path,
    run: &mut RunResult,
) -> Result<(), String> {
    let cpus = scenario.loadgen.cpus.as_deref();
    let start = Instant::now();
    let before = sample(deployment, 0.0).ok_or("server died before the load")?;
    run.timeline.push(before);
    let cpu_children_before = children_cpu_s();
    let mut child = spawn_loadgen(cfg, cpus, args, log)?;
    let mut probe_child: Option<Child> = None;
    let timeout = Duration::from_secs(scenario.loadgen.timeout_s);
    let tick = Duration::from_millis(scenario.sample_ms);
    let kill = |c: &mut Child| {
        let _ = c.kill();
        let _ = c.wait();
    };
    let mut status = None;
    // Until loadgen and the probe have both exited.
    while status.is_none() || probe_child.is_some() {
        std::thread::sleep(tick);
        let t_s = start.elapsed().as_secs_f64();
        if let Some((after_s, probe_args, probe_log)) = probe {
            if !run.metrics.contains_key("probe.started_s") && t_s >= after_s {
                probe_child = Some(spawn_loadgen(cfg, cpus, probe_args, probe_log)?);
                run.metrics.insert("probe.started_s".into(), t_s);
            }
        }
        match sample(deployment, t_s) {
            Some(s) => run.timeline.push(s),
            None => {
                kill(&mut child);
                if let Some(p) = probe_child.as_mut() {
                    kill(p);
                }
                return Err(format!("server died during the load at {t_s:.1} s"));
            }
        }
        if start.elapsed() > timeout {
            kill(&mut child);
            if let Some(p) = probe_child.as_mut() {
                kill(p);
            }
            return Err(format!(
                "loadgen still running after {} s: killed; {}",
                scenario.loadgen.timeout_s,
                deploy::tail(log, 400)
            ));
        }
        if status.is_none() {
            status = child
                .try_wait()
                .map_err(|e| format!("waiting for loadgen: {e}"))?;
        }
        if let Some(p) = probe_child.as_mut() {
            if let Some(st) = p
                .try_wait()
                .map_err(|e| format!("waiting for the probe: {e}"))?
            {
                probe_child = None;
                if !st.success() {
                    let tail = probe.map_or(String::new(), |(_, _, l)| deploy::tail(l, 400));
                    return Err(format!("probe exited with {st}: {tail}"));
                }
            }
        }
    }
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
    let status = status.expect("the loop ends with loadgen's status");
    if !status.success() {
        return Err(format!(
            "loadgen exited with {status}: {}",
            deploy::tail(log, 400)
        ));
    }
    if probe.is_some() && !run.metrics.contains_key("probe.started_s") {
        return Err("the load ended before the probe's start time".into());
    }
    Ok(())
}

/// The derived metrics of a run; `fds_per_conn` descriptors per connection tell when every
/// connection was open.
fn derive_metrics(run: &mut RunResult, fds_per_conn: u64) {
    let Some(first) = run.timeline.first().copied() else {
        return;
    };
    let last = *run.timeline.last().unwrap_or(&first);
    let peak = |f: fn(&Sample) -> u64| run.timeline.iter().map(f).max().unwrap_or(0);
    let rss_peak = peak(|s| s.rss_bytes);
    let fds_peak = peak(|s| s.fds);
    let tcp_mem_peak = peak(|s| s.tcp_mem_pages);
    let slab_peak_kib = peak(|s| s.slab_kib);
    let nats_rss_peak = peak(|s| s.nats_rss_bytes);
    let connections_peak = run.timeline.iter().filter_map(|s| s.connections).max();
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
    if let Some(wall) = m.get("loadgen.wall_s").copied().filter(|w| *w > 0.0) {
        m.insert("server.cpu_cores_busy".into(), cpu_s / wall);
    }
    if let Some(received) = m.get("messages.received").copied().filter(|r| *r > 0.0) {
        m.insert("server.cpu_us_per_message".into(), cpu_s * 1e6 / received);
    }
    if nats_rss_peak > 0 {
        m.insert("nats.rss_peak_bytes".into(), nats_rss_peak as f64);
        m.insert("nats.cpu_s".into(), last.nats_cpu_s - first.nats_cpu_s);
    }
    if let Some(peak) = connections_peak {
        m.insert("server.connections_peak".into(), peak as f64);
        if let Some(target) = m.get("clients_target").copied() {
            m.insert(
                "server.connections_missing".into(),
                (target - peak as f64).max(0.0),
            );
        }
    }
    let tcp_delta =
        (tcp_mem_peak as f64 - first.tcp_mem_pages as f64) * procfs::page_size_bytes() as f64;
    m.insert("kernel.tcp_mem_delta_bytes".into(), tcp_delta);
    let slab_delta = (slab_peak_kib as f64 - first.slab_kib as f64) * 1024.0;
    let all_open = first.fds + fds_per_conn * connected as u64;
    let held_sample = run
        .timeline
        .iter()
        .filter(|s| s.fds >= all_open)
        .min_by_key(|s| s.rss_bytes);
    let rss_held = held_sample.map(|s| s.rss_bytes);
    let nats_held = held_sample
        .map(|s| s.nats_rss_bytes)
        .filter(|_| first.nats_rss_bytes > 0);
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
        if let Some(held) = nats_held {
            m.insert(
                "nats.rss_held_per_conn_bytes".into(),
                (held as f64 - first.nats_rss_bytes as f64) / connected,
            );
        }
        m.insert(
            "kernel.tcp_mem_per_conn_bytes".into(),
            tcp_delta / connected,
        );
        if first.slab_kib > 0 {
            m.insert("kernel.slab_per_conn_bytes".into(), slab_delta / connected);
        }
    }
    derive_handshake_cpu(m, cpu_s, handshakes);
    derive_system_metrics(run, all_open, connected);
}

/// CPU per handshake of the server (`cpu_s`) and of loadgen, and the ratio of the two.
fn derive_handshake_cpu(m: &mut BTreeMap<String, f64>, cpu_s: f64, handshakes: f64) {
    if handshakes <= 0.0 {
        return;
    }
    m.insert(
        "server.cpu_us_per_handshake".into(),
        cpu_s * 1e6 / handshakes,
    );
    if let Some(lg) = m.get("loadgen.cpu_s").copied() {
        m.insert("loadgen.cpu_us_per_handshake".into(), lg * 1e6 / handshakes);
        if lg > 0.0 {
            m.insert("server.cpu_per_loadgen_cpu".into(), cpu_s / lg);
        }
    }
}

/// `system.*`: the nodes and the nats-server behind them together (what a device costs the
/// whole system); `all_open` descriptors tell when every one of `connected` was open.
fn derive_system_metrics(run: &mut RunResult, all_open: u64, connected: f64) {
    let Some(first) = run.timeline.first().copied() else {
        return;
    };
    let last = *run.timeline.last().unwrap_or(&first);
    let held = run
        .timeline
        .iter()
        .filter(|s| s.fds >= all_open)
        .map(|s| s.rss_bytes + s.nats_rss_bytes)
        .min();
    let m = &mut run.metrics;
    let cpu_s = (last.cpu_s - first.cpu_s) + (last.nats_cpu_s - first.nats_cpu_s);
    m.insert("system.cpu_s".into(), cpu_s);
    if let Some(received) = m.get("messages.received").copied().filter(|r| *r > 0.0) {
        m.insert("system.cpu_us_per_message".into(), cpu_s * 1e6 / received);
    }
    if let (Some(held), true) = (held, connected > 0.0) {
        let before = first.rss_bytes + first.nats_rss_bytes;
        m.insert(
            "system.rss_held_per_conn_bytes".into(),
            (held as f64 - before as f64) / connected,
        );
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
    if let Some(tls) = &scenario.tls {
        Pki::make(&cfg.repo_root, &dir.join("pki"), tls.key)?;
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
            ..Sample::default()
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
        derive_metrics(&mut run, 1);
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
        assert_eq!(m["server.cpu_per_loadgen_cpu"], 2.0);
        let page = procfs::page_size_bytes() as f64;
        assert_eq!(m["kernel.tcp_mem_per_conn_bytes"], 200.0 * page / 1000.0);
    }

    /// `system.*` adds the nats-server behind the nodes, sample by sample: the held RSS is the
    /// lowest sum while every connection was open, not the sum of two minimums.
    #[test]
    fn system_metrics_count_the_nats_server() {
        let s = |t_s, rss_bytes, nats_rss_bytes, fds, nats_cpu_s| Sample {
            t_s,
            rss_bytes,
            cpu_s: t_s,
            fds,
            nats_rss_bytes,
            nats_cpu_s,
            ..Sample::default()
        };
        let mut run = RunResult {
            repetition: 1,
            metrics: [("connected_peak", 100.0), ("messages.received", 1000.0)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            timeline: vec![
                s(0.0, 1_000_000, 2_000_000, 10, 0.0),
                s(1.0, 1_100_000, 2_300_000, 110, 0.2),
                s(2.0, 1_200_000, 2_150_000, 110, 0.4),
                s(3.0, 1_000_000, 2_000_000, 10, 0.5),
            ],
            loadgen_seconds: Vec::new(),
            error: None,
        };
        derive_metrics(&mut run, 1);
        let m = &run.metrics;
        // Node alone: lowest held 1,100,000; with nats: min(3,400,000, 3,350,000).
        assert_eq!(m["server.rss_held_per_conn_bytes"], 1000.0);
        assert_eq!(m["system.rss_held_per_conn_bytes"], 3500.0);
        assert_eq!(m["system.cpu_s"], 3.5);
        assert_eq!(m["system.cpu_us_per_message"], 3500.0);
    }
}

//! The coordinator: runs the preflight, spawns the worker processes (the same binary with the
//! hidden `worker` subcommand), starts them together at one wall-clock instant, merges their
//! per-second reports into the live line, and merges their histograms exactly for the summary,
//! the JSON report and the HdrHistogram interval logs, and evaluates the thresholds.
//!
//! Interrupts: the workers run in a process group of their own, so a terminal's Ctrl-C reaches
//! only the coordinator. The first SIGINT (or SIGTERM) tells every worker to stop the schedule
//! and drain (close every client with 1000); the summary and the JSON are then written as
//! usual, marked `interrupted`. A second one kills the workers and exits at once.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2Serializer;
use serde_json::{json, Value};

use crate::backend;
use crate::cli::Args;
use crate::plan::{Phases, Plan};
use crate::preflight::{self, Host, Verdict};
use crate::stats::{
    Counters, Hists, LatencySummary, StartSignal, WorkerCmd, WorkerMsg, WorkerPlan, HIST_NAMES,
};
use crate::sys;
use crate::threshold::{Outcome, Threshold, EXIT_THRESHOLD_CROSSED};

/// Version of the JSON report's layout (`schema_version`); docs/loadgen.md describes it.
/// Raised when a key is removed or changes meaning; adding keys keeps it.
pub const REPORT_SCHEMA_VERSION: u32 = 1;
/// Exit status of a run ended by an interrupt (128 + SIGINT), when no threshold was crossed.
pub const EXIT_INTERRUPTED: u8 = 130;

/// How long workers may take to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Delay between the start signal and the common start instant.
const START_DELAY: Duration = Duration::from_millis(300);

enum Ev {
    Msg(usize, Box<WorkerMsg>),
    Eof(usize),
    Bad(usize, String),
    /// First SIGINT/SIGTERM: drain now.
    Interrupt,
    /// Second one: exit at once.
    Kill,
}

struct WorkerHandle {
    child: Child,
    stdin: Option<ChildStdin>,
    counters: Counters,
    done: bool,
    failed: Option<String>,
    elapsed_us: u64,
    cpu_us: u64,
    max_rss_kib: u64,
}

/// One second of the run, merged across workers.
#[derive(Default)]
struct Interval {
    reports: usize,
    counters: Counters,
    hists: Option<Hists>,
}

/// Entry point of a run.
pub fn main(args: Args) -> ExitCode {
    let mut plan = match args.plan() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("tether-loadgen: refused: {e}");
            return ExitCode::from(2);
        }
    };
    let thresholds = match args
        .thresholds
        .iter()
        .map(|t| Threshold::parse(t))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tether-loadgen: refused: {e}");
            return ExitCode::from(2);
        }
    };
    let host = Host::probe();
    let verdict = match preflight::check(&plan, &host, args.workers) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("tether-loadgen: refused: {e}");
            return ExitCode::from(2);
        }
    };
    for l in &verdict.lines {
        println!("preflight: {l}");
    }
    plan.workers = verdict.workers;
    let phases = Phases::of(&plan);
    println!(
        "plan: {} clients, rate {}{}, connects end at {:.1}s, hold {:.1}s{}{}, drain",
        plan.clients,
        if plan.rate.from_per_s == plan.rate.to_per_s {
            format!("{}/s", plan.rate.to_per_s)
        } else {
            format!(
                "{}->{}/s over {}s",
                plan.rate.from_per_s, plan.rate.to_per_s, plan.rate.ramp_s
            )
        },
        if plan.arrivals == crate::plan::Arrivals::Poisson {
            " (poisson)"
        } else {
            ""
        },
        phases.connect_end_s,
        plan.hold_ms as f64 / 1000.0,
        if plan.churn_per_s > 0.0 {
            format!(
                ", churn {}/s for {:.1}s",
                plan.churn_per_s,
                plan.churn_ms as f64 / 1000.0
            )
        } else {
            String::new()
        },
        if plan.storm_drop_fraction > 0.0 {
            format!(", storm drop {:.1}%", plan.storm_drop_fraction * 100.0)
        } else {
            String::new()
        },
    );
    if !thresholds.is_empty() {
        let list: Vec<String> = thresholds.iter().map(|t| t.to_string()).collect();
        println!("thresholds: {}", list.join(", "));
    }
    if args.dry_run {
        return ExitCode::SUCCESS;
    }
    match run(&args, &plan, &verdict, &thresholds) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tether-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn spawn_workers(plan: &Plan, tx: &mpsc::Sender<Ev>) -> Result<Vec<WorkerHandle>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut workers = Vec::new();
    for w in 0..plan.workers {
        let mut child = Command::new(&exe)
            .arg("worker")
            // A group of its own: a terminal's Ctrl-C reaches the coordinator only, which
            // then drains the workers in order (see the module docs).
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawning worker {w}: {e}"))?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let line = serde_json::to_string(&WorkerPlan {
            plan: plan.clone(),
            worker: w,
        })
        .expect("plan serialises");
        writeln!(stdin, "{line}").map_err(|e| format!("sending the plan to worker {w}: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let tx = tx.clone();
        let idx = w as usize;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let ev = match line {
                    Ok(l) => match serde_json::from_str::<WorkerMsg>(&l) {
                        Ok(m) => Ev::Msg(idx, Box::new(m)),
                        Err(e) => Ev::Bad(idx, format!("unreadable report: {e}")),
                    },
                    Err(e) => Ev::Bad(idx, format!("reading reports: {e}")),
                };
                if tx.send(ev).is_err() {
                    return;
                }
            }
            let _ = tx.send(Ev::Eof(idx));
        });
        workers.push(WorkerHandle {
            child,
            stdin: Some(stdin),
            counters: Counters::default(),
            done: false,
            failed: None,
            elapsed_us: 0,
            cpu_us: 0,
            max_rss_kib: 0,
        });
    }
    Ok(workers)
}

fn unix_ns_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Forwards SIGINT and SIGTERM as [`Ev::Interrupt`], then [`Ev::Kill`]; a second signal after
/// the workers have ended (`reaped`) exits the process itself.
fn watch_signals(tx: mpsc::Sender<Ev>, reaped: Arc<AtomicBool>) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("signal runtime: {e}"))?;
    // Registered here, before any worker starts, so that no signal falls between.
    let (mut int, mut term) = rt
        .block_on(async {
            Ok::<_, std::io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            ))
        })
        .map_err(|e| format!("installing the SIGINT handler: {e}"))?;
    std::thread::spawn(move || {
        rt.block_on(async move {
            let mut count = 0u32;
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                count += 1;
                let ev = if count == 1 { Ev::Interrupt } else { Ev::Kill };
                if count > 1 && reaped.load(Ordering::SeqCst) {
                    eprintln!("tether-loadgen: interrupted again: exiting");
                    std::process::exit(i32::from(EXIT_INTERRUPTED));
                }
                if tx.send(ev).is_err() {
                    std::process::exit(i32::from(EXIT_INTERRUPTED));
                }
            }
        })
    });
    Ok(())
}

/// Tells every worker to stop the schedule and drain.
fn stop_workers(workers: &mut [WorkerHandle]) {
    let line = serde_json::to_string(&WorkerCmd::Stop).expect("serialises");
    for w in workers.iter_mut() {
        if let Some(stdin) = w.stdin.as_mut() {
            // A worker that has already exited has closed its pipe: nothing to stop.
            let _ = writeln!(stdin, "{line}").and_then(|_| stdin.flush());
        }
    }
}

/// A run after the preflight: the preload (durable workload), the workers started behind a
/// barrier, their reports collected, the report written and the thresholds checked.
fn run(
    args: &Args,
    plan: &Plan,
    verdict: &Verdict,
    thresholds: &[Threshold],
) -> Result<ExitCode, String> {
    let (tx, rx) = mpsc::channel();
    let reaped = Arc::new(AtomicBool::new(false));
    watch_signals(tx.clone(), reaped.clone())?;
    // The preload runs before any device connects: the devices are offline while their
    // messages are stored, and present the stream's sequence before them as `?last_seq=`.
    let mut plan = plan.clone();
    let preload = if plan.preload_per_device > 0 {
        let p = backend::preload(&plan)?;
        println!(
            "preload: {} durable messages stored in {} ({}/s); devices present ?last_seq={}",
            p.stored, p.stream, p.stored_per_s, p.last_seq_before
        );
        plan.last_seq = Some(p.last_seq_before);
        Some(p)
    } else {
        None
    };
    let plan = &plan;
    let mut workers = spawn_workers(plan, &tx)?;
    drop(tx);
    if let Some(code) = await_ready(&rx, &mut workers)? {
        return Ok(code);
    }
    let server_cpu_start: Vec<Option<u64>> = args
        .server_pids
        .iter()
        .map(|p| sys::proc_cpu_us(*p).ok())
        .collect();
    let mut server_rss: Vec<ServerRss> = args
        .server_pids
        .iter()
        .map(|&pid| ServerRss {
            pid,
            name: sys::proc_name(pid).unwrap_or_default(),
            start_kib: sys::proc_rss_kib(pid).ok(),
            held_kib: None,
        })
        .collect();
    let start_unix_ns = start_workers(&mut workers)?;
    let Some(mut c) = collect(args, plan, &rx, &mut workers, &mut server_rss)? else {
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    };
    for w in workers.iter_mut() {
        w.stdin = None;
        let _ = w.child.wait();
    }
    reaped.store(true, Ordering::SeqCst);
    if args.hdr_dir.is_some() {
        c.interval_logs
            .push((c.last_printed_k + 1, c.finals_hists.encode()));
    }
    let server_cpu_us = server_cpu_used(args, &server_cpu_start);
    let failures: Vec<String> = workers
        .iter()
        .enumerate()
        .filter_map(|(i, w)| w.failed.as_ref().map(|e| format!("worker {i}: {e}")))
        .collect();
    let mut report = report_of(
        args,
        plan,
        verdict,
        &workers,
        &c,
        server_cpu_us,
        &failures,
        preload.as_ref(),
        &server_rss,
    );
    let outcomes: Vec<Outcome> = thresholds.iter().map(|t| t.evaluate(&report)).collect();
    report["thresholds"] = json!(outcomes);
    print_summary(&report);
    print_thresholds(&outcomes);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).expect("report serialises");
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    if let Some(dir) = &args.hdr_dir {
        write_interval_logs(dir, start_unix_ns, &c.interval_logs)?;
    }
    for f in &failures {
        eprintln!("tether-loadgen: {f}");
    }
    Ok(if !failures.is_empty() {
        ExitCode::FAILURE
    } else if outcomes.iter().any(|o| !o.ok) {
        ExitCode::from(EXIT_THRESHOLD_CROSSED)
    } else if c.interrupted {
        ExitCode::from(EXIT_INTERRUPTED)
    } else {
        ExitCode::SUCCESS
    })
}

fn kill_all(workers: &mut [WorkerHandle]) {
    for w in workers.iter_mut() {
        let _ = w.child.kill();
        let _ = w.child.wait();
    }
}

/// Start barrier, first half: waits until every worker reports ready. `Some(code)`: interrupted
/// before the start (workers killed); an error kills the workers too.
fn await_ready(
    rx: &mpsc::Receiver<Ev>,
    workers: &mut [WorkerHandle],
) -> Result<Option<ExitCode>, String> {
    let ready_deadline = Instant::now() + READY_TIMEOUT;
    let mut ready = 0;
    while ready < workers.len() {
        let left = ready_deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ev::Msg(i, m)) => match *m {
                WorkerMsg::Ready { .. } => ready += 1,
                WorkerMsg::Failed { error } => {
                    kill_all(workers);
                    return Err(format!("worker {i} failed to start: {error}"));
                }
                _ => {}
            },
            Ok(Ev::Bad(i, error)) => {
                kill_all(workers);
                return Err(format!("worker {i} failed to start: {error}"));
            }
            Ok(Ev::Eof(i)) => {
                kill_all(workers);
                return Err(format!("worker {i} exited before it was ready"));
            }
            Ok(Ev::Interrupt | Ev::Kill) => {
                kill_all(workers);
                eprintln!("tether-loadgen: interrupted before the start");
                return Ok(Some(ExitCode::from(EXIT_INTERRUPTED)));
            }
            Err(_) => {
                kill_all(workers);
                return Err(format!(
                    "only {ready} of {} workers were ready after {READY_TIMEOUT:?}",
                    workers.len()
                ));
            }
        }
    }
    Ok(None)
}

/// Start barrier, second half: every worker gets the same start instant, [`START_DELAY`] from
/// now; returns once it has come (unix ns).
fn start_workers(workers: &mut [WorkerHandle]) -> Result<u64, String> {
    let start_unix_ns = unix_ns_now() + START_DELAY.as_nanos() as u64;
    let start_line = serde_json::to_string(&StartSignal { start_unix_ns }).expect("serialises");
    for (i, w) in workers.iter_mut().enumerate() {
        let stdin = w.stdin.as_mut().expect("stdin kept until start");
        writeln!(stdin, "{start_line}")
            .and_then(|_| stdin.flush())
            .map_err(|e| format!("starting worker {i}: {e}"))?;
    }
    std::thread::sleep(START_DELAY);
    Ok(start_unix_ns)
}

/// What the coordinator gathers from the workers' reports during the run.
#[derive(Default)]
struct Collected {
    totals: Hists,
    /// Seconds not printed yet, until every running worker has reported them.
    intervals: BTreeMap<u64, Interval>,
    interval_logs: Vec<(u64, crate::stats::HistBlobs)>,
    /// Connected clients per sampling slot, summed over workers.
    slots: BTreeMap<u64, u64>,
    printed: Counters,
    last_printed_k: u64,
    finals_hists: Hists,
    interrupted: bool,
    /// Clients connected when the servers' RSS was sampled near the end of the hold.
    held_connected: Option<u64>,
}

/// Takes the workers' reports until all are done, printing each second once every running
/// worker has reported it, and samples the servers' RSS near the end of the hold. `None`: a
/// second interrupt killed the workers (no summary).
fn collect(
    args: &Args,
    plan: &Plan,
    rx: &mpsc::Receiver<Ev>,
    workers: &mut [WorkerHandle],
    server_rss: &mut [ServerRss],
) -> Result<Option<Collected>, String> {
    // The servers' RSS is sampled again one second before the end of the hold (every client
    // connected, none closing yet; at the end of the connects if the hold is shorter).
    let phases = Phases::of(plan);
    let hold_end_at = Instant::now()
        + Duration::from_secs_f64((phases.hold_end_s - 1.0).max(phases.connect_end_s));
    let mut c = Collected::default();
    while workers.iter().any(|w| !w.done) {
        // Wake up at the end of the hold to sample the servers' RSS then.
        let wait = match c.held_connected {
            None => hold_end_at
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), Duration::from_secs(5)),
            Some(_) => Duration::from_secs(5),
        };
        let ev = match rx.recv_timeout(wait) {
            Ok(ev) => ev,
            Err(mpsc::RecvTimeoutError::Timeout) if c.held_connected.is_none() => {
                if Instant::now() >= hold_end_at {
                    c.held_connected = Some(sample_rss(server_rss, workers));
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // A worker that died without closing its pipe (should not happen).
                for (i, w) in workers.iter_mut().enumerate() {
                    if !w.done {
                        if let Ok(Some(status)) = w.child.try_wait() {
                            w.done = true;
                            w.failed = Some(format!("worker {i} exited: {status}"));
                        }
                    }
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let (i, msg) = match ev {
            Ev::Msg(i, m) => (i, *m),
            Ev::Bad(i, error) => {
                workers[i].failed = Some(error);
                continue;
            }
            Ev::Interrupt => {
                c.interrupted = true;
                eprintln!(
                    "tether-loadgen: interrupted: stopping the schedule and closing every client \
                     with 1000 (interrupt again to exit at once)"
                );
                stop_workers(workers);
                continue;
            }
            Ev::Kill => {
                kill_all(workers);
                eprintln!("tether-loadgen: interrupted again: workers killed, no summary");
                return Ok(None);
            }
            Ev::Eof(i) => {
                let w = &mut workers[i];
                if !w.done {
                    w.done = true;
                    w.failed
                        .get_or_insert_with(|| format!("worker {i} exited without a final report"));
                }
                (i, WorkerMsg::Ready { fd_soft_limit: 0 })
            }
        };
        c.take(&mut workers[i], msg)?;
        if c.held_connected.is_none() && Instant::now() >= hold_end_at {
            c.held_connected = Some(sample_rss(server_rss, workers));
        }
        c.print_complete_seconds(args, workers);
    }
    Ok(Some(c))
}

impl Collected {
    /// Takes one report of worker `w`.
    fn take(&mut self, w: &mut WorkerHandle, msg: WorkerMsg) -> Result<(), String> {
        match msg {
            WorkerMsg::Tick {
                k,
                counters,
                hist,
                samples,
            } => {
                let h = Hists::decode(&hist)?;
                self.totals.add(&h);
                for (slot, c) in samples {
                    *self.slots.entry(slot).or_default() += c;
                }
                w.counters = counters.clone();
                let iv = self.intervals.entry(k).or_default();
                iv.reports += 1;
                iv.counters.add(&counters);
                match &mut iv.hists {
                    Some(x) => x.add(&h),
                    None => iv.hists = Some(h),
                }
            }
            WorkerMsg::Final {
                counters,
                hist,
                samples,
                elapsed_us,
                cpu_us,
                max_rss_kib,
            } => {
                let h = Hists::decode(&hist)?;
                self.totals.add(&h);
                self.finals_hists.add(&h);
                for (slot, c) in samples {
                    *self.slots.entry(slot).or_default() += c;
                }
                w.counters = counters;
                w.elapsed_us = elapsed_us;
                w.cpu_us = cpu_us;
                w.max_rss_kib = max_rss_kib;
                w.done = true;
            }
            WorkerMsg::Failed { error } => {
                w.failed = Some(error);
            }
            WorkerMsg::Ready { .. } => {}
        }
        Ok(())
    }

    /// Prints (and logs for `--hdr-dir`) every second that all still-running workers have
    /// reported.
    fn print_complete_seconds(&mut self, args: &Args, workers: &[WorkerHandle]) {
        let running = workers.iter().filter(|w| !w.done).count();
        while let Some((&k, iv)) = self.intervals.iter().next() {
            let all_done = running == 0;
            if iv.reports < workers.len() && !all_done && iv.reports < running.max(1) {
                break;
            }
            let iv = self.intervals.remove(&k).expect("present");
            let h = iv.hists.unwrap_or_default();
            if !args.quiet {
                print_live(k, k - self.last_printed_k, &self.printed, &iv.counters, &h);
            }
            self.interval_logs.push((k, h.encode()));
            self.printed = iv.counters;
            self.last_printed_k = k;
        }
    }
}

/// CPU time the `--server-pid` processes used during the run, summed; `None` without any.
fn server_cpu_used(args: &Args, server_cpu_start: &[Option<u64>]) -> Option<u64> {
    if args.server_pids.is_empty() {
        return None;
    }
    let mut sum = 0;
    for (pid, start) in args.server_pids.iter().zip(server_cpu_start) {
        match (start, sys::proc_cpu_us(*pid)) {
            (Some(s), Ok(e)) => sum += e.saturating_sub(*s),
            _ => eprintln!("tether-loadgen: cannot read the CPU time of server pid {pid}"),
        }
    }
    Some(sum)
}

/// The JSON report of a finished run, from the workers' final state and what was collected.
#[expect(
    clippy::too_many_arguments,
    reason = "the run's parts, each named once"
)]
fn report_of(
    args: &Args,
    plan: &Plan,
    verdict: &Verdict,
    workers: &[WorkerHandle],
    c: &Collected,
    server_cpu_us: Option<u64>,
    failures: &[String],
    preload: Option<&backend::Preload>,
    server_rss: &[ServerRss],
) -> Value {
    let mut counters = Counters::default();
    for w in workers {
        counters.add(&w.counters);
    }
    let sampled_peak = c.slots.values().copied().max().unwrap_or(0);
    let single_peak = workers
        .iter()
        .map(|w| w.counters.connected_peak)
        .max()
        .unwrap_or(0);
    let connected_peak = sampled_peak.max(single_peak);
    let duration_us = workers.iter().map(|w| w.elapsed_us).max().unwrap_or(0);
    let own = sys::self_usage();
    let loadgen_cpu_us = own.cpu_us + workers.iter().map(|w| w.cpu_us).sum::<u64>();
    build_report(&ReportInput {
        plan,
        verdict,
        counters: &counters,
        totals: &c.totals,
        connected_peak,
        duration_us,
        loadgen_cpu_us,
        worker_rss_kib: workers.iter().map(|w| w.max_rss_kib).collect(),
        server_cpu_us,
        failures,
        interrupted: c.interrupted,
        scenario: args.scenario.as_deref(),
        preload,
        server_rss,
        held_connected: c.held_connected,
    })
}

fn ms(us: u64) -> String {
    format!("{:.2}ms", us as f64 / 1000.0)
}

fn print_live(k: u64, secs: u64, prev: &Counters, now: &Counters, h: &Hists) {
    let secs = secs.max(1);
    let connects = now.handshakes_ok.saturating_sub(prev.handshakes_ok) / secs;
    let errors = now.handshake_errors_total();
    let msgs = now.messages_received.saturating_sub(prev.messages_received) / secs;
    let hs = if h.handshake.is_empty() {
        "-".to_string()
    } else {
        format!(
            "p50 {} p99 {}",
            ms(h.handshake.value_at_quantile(0.5)),
            ms(h.handshake.value_at_quantile(0.99))
        )
    };
    let rtt = if h.rtt.is_empty() {
        String::new()
    } else {
        format!(" msg p99 {}", ms(h.rtt.value_at_quantile(0.99)))
    };
    println!(
        "[{k:>4}s] connected {:>7}  connects/s {connects:>6}  errors {errors:>5}  handshake {hs}  msgs/s {msgs}{rtt}  lag {}",
        now.connected, now.schedule_lag_events
    );
}

struct ReportInput<'a> {
    plan: &'a Plan,
    verdict: &'a Verdict,
    counters: &'a Counters,
    totals: &'a Hists,
    connected_peak: u64,
    duration_us: u64,
    loadgen_cpu_us: u64,
    worker_rss_kib: Vec<u64>,
    server_cpu_us: Option<u64>,
    failures: &'a [String],
    interrupted: bool,
    scenario: Option<&'a Path>,
    preload: Option<&'a backend::Preload>,
    server_rss: &'a [ServerRss],
    /// Clients connected when the servers' RSS was sampled near the end of the hold.
    held_connected: Option<u64>,
}

/// Samples the servers' RSS near the end of the hold; returns the clients connected then (as
/// the workers last reported, at most a second ago).
fn sample_rss(server_rss: &mut [ServerRss], workers: &[WorkerHandle]) -> u64 {
    for r in server_rss.iter_mut() {
        r.held_kib = sys::proc_rss_kib(r.pid).ok();
    }
    workers.iter().map(|w| w.counters.connected).sum()
}

/// A server process's RSS before the first connect and near the end of the hold.
#[derive(Clone, Debug, serde::Serialize)]
struct ServerRss {
    pid: u32,
    name: String,
    start_kib: Option<u64>,
    held_kib: Option<u64>,
}

#[expect(
    clippy::too_many_lines,
    reason = "straight-line emitter: one section after another in output order, split it and the format scatters"
)]
fn build_report(r: &ReportInput) -> Value {
    let c = r.counters;
    let rate_achieved = if c.initial_last_ok_us > 0 {
        c.initial_handshakes_ok as f64 / (c.initial_last_ok_us as f64 / 1e6)
    } else {
        0.0
    };
    let msg_duration_s = r.duration_us as f64 / 1e6;
    let phases = Phases::of(r.plan);
    let per_conn = |cpu_us: u64| {
        if c.handshakes_ok > 0 {
            (cpu_us as f64 / c.handshakes_ok as f64 * 10.0).round() / 10.0
        } else {
            0.0
        }
    };
    let mut v = json!({
        "schema_version": REPORT_SCHEMA_VERSION,
        "interrupted": r.interrupted,
        "scenario": r.scenario.map(|p| p.display().to_string()),
        "clients_target": r.plan.clients,
        "connected_peak": r.connected_peak,
        "handshakes_ok": c.handshakes_ok,
        "handshake_attempts": c.attempts,
        "clients_not_started": c.clients_not_started,
        "handshake_errors_total": c.handshake_errors_total(),
        "handshake_errors": c.handshake_errors,
        "connect_rate_target_per_s": r.plan.rate.to_per_s,
        "connect_rate_achieved_per_s": (rate_achieved * 10.0).round() / 10.0,
        "handshake_latency_us": LatencySummary::of(&r.totals.handshake),
        "tcp_connect_latency_us": LatencySummary::of(&r.totals.connect),
        "upgrade_latency_us": LatencySummary::of(&r.totals.upgrade),
        "schedule_lag_events": c.schedule_lag_events,
        "schedule_lag_max_us": c.schedule_lag_max_us,
        "disconnects": c.disconnects,
        "closes": {
            "clean": c.closes_clean,
            "timed_out": c.closes_timed_out,
            "unfinished": c.closes_unfinished,
        },
        "workers": r.plan.workers,
        "duration_s": (msg_duration_s * 1000.0).round() / 1000.0,
        "phases_s": {
            "connect_end": phases.connect_end_s,
            "hold_end": phases.hold_end_s,
            "churn_end": phases.churn_end_s,
        },
        "urls": r.plan.targets.iter().map(|t| t.url.clone()).collect::<Vec<_>>(),
        "sources": r.plan.sources.len(),
        "arrivals": r.plan.arrivals,
        "seed": r.plan.seed,
        "preflight": {
            "nofile_hard": r.verdict.host.nofile_hard,
            "per_worker_capacity": r.verdict.per_worker_capacity,
            "port_range": [r.verdict.host.port_range.0, r.verdict.host.port_range.1],
            "port_capacity": r.verdict.port_capacity,
            "busiest_pair_clients": r.verdict.busiest_pair_clients,
            "somaxconn": r.verdict.host.somaxconn,
        },
        "loadgen_cpu_s": r.loadgen_cpu_us as f64 / 1e6,
        "loadgen_cpu_us_per_connection": per_conn(r.loadgen_cpu_us),
        "loadgen_worker_max_rss_kib": r.worker_rss_kib,
        "worker_failures": r.failures,
    });
    if c.messages_sent > 0 || c.messages_received > 0 || !c.tether_errors.is_empty() {
        // Echo: round trip from the intended send; tether workloads: one-way delivery.
        let key = match r.plan.workload {
            crate::plan::Workload::Echo => "message_rtt_us",
            _ => "message_delivery_us",
        };
        v[key] = json!(LatencySummary::of(&r.totals.rtt));
        // Where the delivery time went: the generator's own lateness in sending, and the path
        // from the socket write to the receipt.
        if !r.totals.send_lag.is_empty() {
            v["message_send_lag_us"] = json!(LatencySummary::of(&r.totals.send_lag));
        }
        if !r.totals.transit.is_empty() {
            v["message_transit_us"] = json!(LatencySummary::of(&r.totals.transit));
        }
        v["workload"] = json!(r.plan.workload);
        v["protocol"] = json!(r.plan.protocol);
        v["tether_errors"] = json!(c.tether_errors);
        v["messages"] = json!({
            "sent": c.messages_sent,
            "received": c.messages_received,
            "unanswered": c.messages_sent.saturating_sub(c.messages_received),
            "gaps": c.message_gaps,
            "duplicates": c.message_duplicates,
            "foreign": c.messages_foreign,
            "skipped_in_flight": c.messages_skipped_in_flight,
            "lag_events": c.message_lag_events,
            "received_per_s": if msg_duration_s > 0.0 { (c.messages_received as f64 / msg_duration_s).round() } else { 0.0 },
        });
    }
    if r.plan.churn_per_s > 0.0 {
        v["churn"] = json!({"rate_per_s": r.plan.churn_per_s, "disconnects": c.churn_disconnects});
    }
    if r.plan.storm_drop_fraction > 0.0 {
        v["storm"] = json!({
            "drop_fraction": r.plan.storm_drop_fraction,
            "dropped": c.storm_dropped,
            "reconnected": c.storm_reconnected,
            "gave_up": c.storm_gave_up,
            "recovered": c.storm_gave_up == 0 && c.storm_recovery_us.is_some(),
            "recovery_s": c.storm_recovery_us.map(|u| u as f64 / 1e6),
            // Reconnects per second from the drop until the last one was back.
            "reconnect_rate_per_s": c.storm_recovery_us.filter(|&u| u > 0 && c.storm_gave_up == 0)
                .map(|u| (c.storm_reconnected as f64 / (u as f64 / 1e6)).round()),
        });
    }
    let expected = r.plan.expected_per_device();
    if expected > 0 {
        // From the reference instant (the start with a preload: the first connect is
        // scheduled there; else the first worker's burst) to the last device complete.
        let from_us = if r.plan.preload_per_device > 0 {
            0
        } else {
            c.burst_started_us.unwrap_or(0)
        };
        let span_s = c.complete_last_us.saturating_sub(from_us) as f64 / 1e6;
        let messages = expected * r.plan.clients;
        v["delivery"] = json!({
            "preload_per_device": r.plan.preload_per_device,
            "burst_per_device": r.plan.burst_per_device,
            "messages_expected": messages,
            "devices_complete": c.devices_complete,
            "from_s": from_us as f64 / 1e6,
            "last_complete_s": c.complete_last_us as f64 / 1e6,
            "until_last_complete_s": (span_s * 1000.0).round() / 1000.0,
            "messages_per_s": if c.devices_complete == r.plan.clients && span_s > 0.0 {
                (messages as f64 / span_s).round() as u64
            } else {
                0
            },
            "published": c.published,
            "acks_sent": c.durable_acks_sent,
            "acks_confirmed": c.durable_acks_confirmed,
            "redelivered": c.durable_redelivered,
            "preload": r.preload,
        });
        v["complete_us"] = json!(LatencySummary::of(&r.totals.complete));
        if let Some(p) = r.preload {
            v["messages"]["sent"] = json!(c.messages_sent + p.stored);
            v["messages"]["unanswered"] =
                json!((c.messages_sent + p.stored).saturating_sub(c.messages_received));
        }
    }
    if !r.server_rss.is_empty() {
        v["server_rss"] = json!({
            "connected_at_sample": r.held_connected,
            "processes": r.server_rss,
        });
    }
    if r.plan.tls.is_some() {
        v["tls"] = json!({"full": c.tls_full, "resumed": c.tls_resumed});
    }
    if let Some(s) = r.server_cpu_us {
        v["server_cpu_s"] = json!(s as f64 / 1e6);
        v["server_cpu_us_per_connection"] = json!(per_conn(s));
    }
    v
}

/// `a 1 · b 2` for a map of counts, `none` when empty.
fn counts(v: &Value) -> String {
    let parts: Vec<String> = v
        .as_object()
        .map(|m| m.iter().map(|(k, n)| format!("{k} {n}")).collect())
        .unwrap_or_default();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(" · ")
    }
}

/// The human summary: one labelled line per topic and a latency table (milliseconds).
#[expect(
    clippy::too_many_lines,
    reason = "straight-line emitter: one section after another in output order, split it and the format scatters"
)]
fn print_summary(v: &Value) {
    let n = |path: &str| -> String {
        let mut cur = v;
        for k in path.split('.') {
            cur = &cur[k];
        }
        match cur {
            Value::Null => "-".into(),
            x => x.to_string(),
        }
    };
    println!(
        "== summary{}",
        if v["interrupted"].as_bool() == Some(true) {
            " (INTERRUPTED: the schedule was stopped early)"
        } else {
            ""
        }
    );
    println!(
        "{:<13} target {}  handshakes ok {}  errors {}  not started {}  connected peak {}",
        "clients",
        n("clients_target"),
        n("handshakes_ok"),
        n("handshake_errors_total"),
        n("clients_not_started"),
        n("connected_peak"),
    );
    if v["clients_not_started"].as_u64().unwrap_or(0) > 0 && v["interrupted"] != true {
        println!(
            "{:<13} {} clients were not started: the generator fell behind its schedule",
            "NOT STARTED",
            n("clients_not_started")
        );
    }
    println!("{:<13} {}", "errors", counts(&v["handshake_errors"]));
    println!(
        "{:<13} target {}/s  achieved {}/s  lag events {} (max {} us)",
        "connect rate",
        n("connect_rate_target_per_s"),
        n("connect_rate_achieved_per_s"),
        n("schedule_lag_events"),
        n("schedule_lag_max_us"),
    );
    let mut rows = vec![
        ("handshake", "handshake_latency_us"),
        ("tcp connect", "tcp_connect_latency_us"),
        ("upgrade", "upgrade_latency_us"),
    ];
    if v.get("message_rtt_us").is_some() {
        rows.push(("message rtt", "message_rtt_us"));
    }
    if v.get("message_delivery_us").is_some() {
        rows.push(("delivery", "message_delivery_us"));
    }
    if v.get("message_send_lag_us").is_some() {
        rows.push(("send lag", "message_send_lag_us"));
    }
    if v.get("message_transit_us").is_some() {
        rows.push(("transit", "message_transit_us"));
    }
    if v.get("complete_us").is_some() {
        rows.push(("complete", "complete_us"));
    }
    println!(
        "{:<13} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency (ms)", "count", "min", "p50", "p90", "p99", "p99.9", "max"
    );
    for (label, key) in rows {
        let l = &v[key];
        let f = |k: &str| format!("{:.2}", l[k].as_u64().unwrap_or(0) as f64 / 1000.0);
        if l["count"].as_u64().unwrap_or(0) == 0 {
            println!("  {label:<11} {:>9}", 0);
            continue;
        }
        println!(
            "  {label:<11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            l["count"].as_u64().unwrap_or(0),
            f("min"),
            f("p50"),
            f("p90"),
            f("p99"),
            f("p999"),
            f("max")
        );
    }
    if v.get("messages").is_some() {
        println!(
            "{:<13} sent {}  received {}  unanswered {}  gaps {}  duplicates {}  foreign {}  \
             skipped {}  lag events {}  received/s {}",
            "messages",
            n("messages.sent"),
            n("messages.received"),
            n("messages.unanswered"),
            n("messages.gaps"),
            n("messages.duplicates"),
            n("messages.foreign"),
            n("messages.skipped_in_flight"),
            n("messages.lag_events"),
            n("messages.received_per_s"),
        );
        if v["workload"] != "echo" {
            println!("{:<13} {}", "tether errors", counts(&v["tether_errors"]));
        }
    }
    if v.get("delivery").is_some() {
        println!(
            "{:<13} devices complete {} of {}  messages {}  last complete {} s after {} s  \
             {} msg/s  acks sent {} confirmed {}  redelivered {}",
            "delivery",
            n("delivery.devices_complete"),
            n("clients_target"),
            n("delivery.messages_expected"),
            n("delivery.until_last_complete_s"),
            n("delivery.from_s"),
            n("delivery.messages_per_s"),
            n("delivery.acks_sent"),
            n("delivery.acks_confirmed"),
            n("delivery.redelivered"),
        );
    }
    if let Some(procs) = v["server_rss"]["processes"].as_array() {
        let kib = |p: &Value, k: &str| p[k].as_u64().map_or("-".into(), |x| x.to_string());
        let list: Vec<String> = procs
            .iter()
            .map(|p| {
                format!(
                    "{} {} {}->{} KiB",
                    p["name"].as_str().unwrap_or("?"),
                    p["pid"],
                    kib(p, "start_kib"),
                    kib(p, "held_kib")
                )
            })
            .collect();
        println!(
            "{:<13} at {} connected: {}",
            "server rss",
            n("server_rss.connected_at_sample"),
            list.join(" · ")
        );
    }
    println!("{:<13} {}", "disconnects", counts(&v["disconnects"]));
    println!(
        "{:<13} clean {}  timed out {}  unfinished {}",
        "closes",
        n("closes.clean"),
        n("closes.timed_out"),
        n("closes.unfinished"),
    );
    if v.get("churn").is_some() {
        println!(
            "{:<13} {}/s  disconnects {}",
            "churn",
            n("churn.rate_per_s"),
            n("churn.disconnects")
        );
    }
    if v.get("storm").is_some() {
        println!(
            "{:<13} dropped {}  reconnected {}  gave up {}  recovered {}  in {} s",
            "storm",
            n("storm.dropped"),
            n("storm.reconnected"),
            n("storm.gave_up"),
            n("storm.recovered"),
            n("storm.recovery_s"),
        );
    }
    print!(
        "{:<13} loadgen {} s ({} us per connection)",
        "cpu",
        n("loadgen_cpu_s"),
        n("loadgen_cpu_us_per_connection")
    );
    if v.get("server_cpu_s").is_some() {
        print!(
            "  server {} s ({} us per connection)",
            n("server_cpu_s"),
            n("server_cpu_us_per_connection")
        );
    }
    println!();
    println!(
        "{:<13} {} s  workers {}",
        "duration",
        n("duration_s"),
        n("workers")
    );
}

/// Which thresholds held and which were crossed.
fn print_thresholds(outcomes: &[Outcome]) {
    if outcomes.is_empty() {
        return;
    }
    let width = outcomes
        .iter()
        .map(|o| o.threshold.len())
        .max()
        .unwrap_or(0)
        .max("threshold".len());
    println!("== thresholds");
    println!("  {:<width$}  {:>14}  result", "threshold", "actual");
    for o in outcomes {
        println!(
            "  {:<width$}  {:>14}  {}",
            o.threshold,
            o.actual_text,
            if o.ok { "ok" } else { "CROSSED" }
        );
    }
    let crossed = outcomes.iter().filter(|o| !o.ok).count();
    if crossed > 0 {
        println!(
            "{crossed} of {} thresholds crossed: exit status {EXIT_THRESHOLD_CROSSED}",
            outcomes.len()
        );
    }
}

fn write_interval_logs(
    dir: &Path,
    start_unix_ns: u64,
    intervals: &[(u64, crate::stats::HistBlobs)],
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let start = UNIX_EPOCH + Duration::from_nanos(start_unix_ns);
    let decoded: Vec<(u64, Hists)> = intervals
        .iter()
        .map(|(k, b)| Hists::decode(b).map(|h| (*k, h)))
        .collect::<Result<_, _>>()?;
    for (n, name) in HIST_NAMES.iter().enumerate() {
        let path = dir.join(format!("{name}.hlog"));
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(&path)
                .map_err(|e| format!("creating {}: {e}", path.display()))?,
        );
        let mut ser = V2Serializer::new();
        let mut log = IntervalLogWriterBuilder::new()
            .add_comment(&format!("tether-loadgen {name} latency, microseconds"))
            .with_start_time(start)
            .with_base_time(start)
            .with_max_value_divisor(1.0)
            .begin_log_with(&mut file, &mut ser)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        for (k, h) in &decoded {
            let hist = h.all()[n];
            log.write_histogram(
                hist,
                Duration::from_secs(k.saturating_sub(1)),
                Duration::from_secs(1),
                Tag::new(name),
            )
            .map_err(|e| format!("writing {}: {e:?}", path.display()))?;
        }
        drop(log);
        file.flush()
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

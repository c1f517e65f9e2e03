//! One worker process: runs its share of the plan on a tokio current-thread runtime, one task
//! per client, and reports to the coordinator once a second over stdout (JSON lines).
//!
//! Per-connection state is kept small: the task and a `tether::ws::Context` (the server's own
//! connection layer: decoder, a leftover buffer that holds bytes only while a frame is
//! incomplete, the close handshake). Reads go into one thread-local scratch buffer.
//!
//! Timing model (open loop, coordinated-omission-correct): every connect has an *intended* start
//! time from the schedule; TCP connect latency, and the whole handshake latency, are measured
//! from it, not from when the task actually got to run. Echo messages carry their intended send
//! time, and round trips are measured from it. Starts later than `lag_threshold_us` are counted.

use std::cell::{Cell, RefCell};
use std::io::{self, BufRead, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tether::ws::{
    encode_close, encode_frame, encode_pong, ClientHandshake, ClientHandshakeError, Context,
    DecoderLimits, Ended, Incoming, OpCode, Role,
};
use tokio::net::TcpSocket;
use tokio::sync::Notify;
use tokio::time::{sleep_until, timeout_at, Instant};

use crate::backend::backend_body;
use crate::plan::MSG_HEADER_BYTES;
use crate::plan::{
    storm_drops, worker_clients, ConnectSchedule, Phases, Plan, Protocol, Target, Workload,
};
use crate::stats::{Counters, Hists, StartSignal, WorkerCmd, WorkerMsg, WorkerPlan};
use crate::sys;
use crate::tls::{self, Conn, Handshake};

mod natsws;

/// Size of the shared read buffer of a worker thread.
const SCRATCH_BYTES: usize = 64 * 1024;
/// Largest HTTP response head accepted for the upgrade.
const RESPONSE_HEAD_BYTES_MAX: usize = 16 * 1024;
/// How often the connected gauge is sampled for the peak.
const SAMPLE_PERIOD: Duration = Duration::from_millis(100);
/// Most scheduled sends one client queues per timer wake-up (in one write); a client further
/// behind catches up over the following wake-ups.
const SENDS_PER_WAKE_MAX: usize = 64;
/// How long a churned client waits for the server's close frame before reconnecting.
const CHURN_CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Validity of the tokens minted with --device-jwt-secret: longer than any run.
const DEVICE_TOKEN_TTL_SECS: u64 = 24 * 3600;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_BYTES]);
}

/// Writes one message line to the coordinator; a broken pipe means the coordinator is gone.
fn emit(msg: &WorkerMsg) {
    let line = serde_json::to_string(msg).expect("worker messages serialise");
    let mut out = io::stdout().lock();
    if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
        std::process::exit(3);
    }
}

/// Entry point of the hidden `worker` subcommand.
pub fn main() -> ExitCode {
    if let Err(e) = sys::die_with_parent() {
        eprintln!("tether-loadgen worker: PR_SET_PDEATHSIG: {e}");
    }
    let stdin = io::stdin();
    let mut lines = stdin.lock().lines();
    let mut next_line = || -> Result<String, String> {
        match lines.next() {
            Some(Ok(l)) => Ok(l),
            Some(Err(e)) => Err(format!("reading stdin: {e}")),
            None => Err("stdin closed before the plan arrived".into()),
        }
    };
    let wp: WorkerPlan = match next_line()
        .and_then(|l| serde_json::from_str(&l).map_err(|e| format!("bad plan line: {e}")))
    {
        Ok(p) => p,
        Err(error) => {
            emit(&WorkerMsg::Failed { error });
            return ExitCode::FAILURE;
        }
    };
    let fd_soft_limit = match sys::raise_nofile_to_hard() {
        Ok(n) => n,
        Err(_) => sys::nofile_limits().map(|l| l.0).unwrap_or(0),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            emit(&WorkerMsg::Failed {
                error: format!("tokio runtime: {e}"),
            });
            return ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    let nats = match wp.plan.nats_url.clone() {
        Some(url) => match local.block_on(&rt, async_nats::connect(url.as_str())) {
            Ok(c) => Some(c),
            Err(e) => {
                emit(&WorkerMsg::Failed {
                    error: format!("connecting to NATS at {url}: {e}"),
                });
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let tls = match &wp.plan.tls {
        Some(t) => match t.client_config() {
            Ok(c) => Some(c),
            Err(error) => {
                emit(&WorkerMsg::Failed { error });
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    emit(&WorkerMsg::Ready { fd_soft_limit });
    let start: StartSignal = match next_line()
        .and_then(|l| serde_json::from_str(&l).map_err(|e| format!("bad start line: {e}")))
    {
        Ok(s) => s,
        Err(error) => {
            emit(&WorkerMsg::Failed { error });
            return ExitCode::FAILURE;
        }
    };
    // Later lines are commands (Ctrl-C at the coordinator: stop); read them on a thread of
    // their own and wake the runtime through a `Send` notifier.
    drop(lines);
    let stop = Arc::new(Notify::new());
    let stop_tx = stop.clone();
    std::thread::spawn(move || {
        for line in io::stdin().lines() {
            let Ok(line) = line else { return };
            match serde_json::from_str::<WorkerCmd>(&line) {
                Ok(WorkerCmd::Stop) => stop_tx.notify_one(),
                Err(e) => eprintln!("tether-loadgen worker: bad command line {line:?}: {e}"),
            }
        }
    });
    let (counters, hists, samples, elapsed_us) = local.block_on(&rt, async move {
        let start_at = instant_of_unix_ns(start.start_unix_ns);
        run(wp, start_at, nats, tls, stop).await
    });
    let usage = sys::self_usage();
    emit(&WorkerMsg::Final {
        counters,
        hist: hists.encode(),
        samples,
        elapsed_us,
        cpu_us: usage.cpu_us,
        max_rss_kib: usage.max_rss_kib,
    });
    ExitCode::SUCCESS
}

/// Converts a wall-clock time (ns since the Unix epoch) to a monotonic instant.
fn instant_of_unix_ns(unix_ns: u64) -> Instant {
    let now_unix_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let now = Instant::now();
    if unix_ns >= now_unix_ns {
        now + Duration::from_nanos(unix_ns - now_unix_ns)
    } else {
        now.checked_sub(Duration::from_nanos(now_unix_ns - unix_ns))
            .unwrap_or(now)
    }
}

fn us(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

/// A command from the worker's phase driver to one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmd {
    None,
    /// Close (with a close handshake) and reconnect at once.
    Churn,
    /// Drop the connection without a close frame, reconnect after a jittered backoff.
    StormDrop,
    /// Close and stop.
    Drain,
}

/// Per-client control block.
struct Ctl {
    cmd: Cell<Cmd>,
    notify: Notify,
    connected: Cell<bool>,
    /// Messages this client sent in its current session (d2d: what its partner must receive).
    sent: Cell<u64>,
    /// tether workloads: the current session has its `hello` (the device is routable).
    hello: Cell<bool>,
    /// The device has every message of `--preload` and `--burst` (durable: its last ack was
    /// confirmed); counted once.
    complete: Cell<bool>,
    /// Intended time of the first connect, in microseconds from the start (the reference of
    /// a preloaded device's completion).
    first_intended_us: Cell<u64>,
    /// Durable workload, kept across sessions: the highest `seq` processed, the distinct
    /// messages received, and the index the next message must carry.
    durable_seq: Cell<u64>,
    durable_got: Cell<u64>,
    durable_next_index: Cell<u64>,
    /// `wss://` with resumption on: this client's own TLS configuration and session store,
    /// made on its first connect (see `tls::for_one_client`).
    tls: RefCell<Option<Arc<rustls::ClientConfig>>>,
}

struct StormState {
    at: Instant,
    deadline: Instant,
    pending: u64,
}

/// The worker's shared (single-thread) state.
struct Worker {
    plan: Plan,
    index: u32,
    start: Instant,
    counters: RefCell<Counters>,
    hists: RefCell<Hists>,
    /// Connected-gauge samples `(slot, connected)` not yet reported; slot = 100 ms periods.
    samples: RefCell<Vec<(u64, u64)>>,
    ctl: Vec<Ctl>,
    live_tasks: Cell<u64>,
    idle: Notify,
    /// Clients the schedule has started.
    spawned: Cell<u64>,
    /// Clients whose first connect attempt has not finished (scheduled or in progress).
    initial_pending: Cell<u64>,
    initial_done: Notify,
    /// Churned clients whose reconnect attempt has not finished.
    churn_pending: Cell<u64>,
    churn_done: Notify,
    draining: Cell<bool>,
    storm: RefCell<Option<StormState>>,
    storm_done: Notify,
    decoder_limits: (usize, usize),
    /// Intended time of the last scheduled connect (tether workloads start sending then).
    connect_end: Instant,
    /// NATS publisher of the push workload.
    nats: Option<async_nats::Client>,
    /// When this worker's burst started, in microseconds from the start.
    burst_started_us: Cell<Option<u64>>,
    /// Client configuration for `wss://` targets (each client copies it; see `connection`).
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Worker {
    fn since_start(&self, t: Instant) -> Duration {
        t.saturating_duration_since(self.start)
    }

    fn task_done(&self) {
        let n = self.live_tasks.get() - 1;
        self.live_tasks.set(n);
        if n == 0 {
            self.idle.notify_one();
        }
    }

    /// A first attempt (`Why::Initial`) or a churn reconnect (`Why::Churn`) has finished.
    fn attempt_settled(&self, why: Why) {
        let (pending, done) = match why {
            Why::Initial => (&self.initial_pending, &self.initial_done),
            Why::Churn => (&self.churn_pending, &self.churn_done),
            Why::Storm => return,
        };
        let n = pending.get().saturating_sub(1);
        pending.set(n);
        if n == 0 {
            done.notify_one();
        }
    }

    /// A storm-dropped client is back (`ok`) or has given up.
    fn storm_client_settled(&self, ok: bool) {
        let mut c = self.counters.borrow_mut();
        if ok {
            c.storm_reconnected += 1;
        } else {
            c.storm_gave_up += 1;
        }
        let mut storm = self.storm.borrow_mut();
        if let Some(s) = storm.as_mut() {
            s.pending = s.pending.saturating_sub(1);
            if s.pending == 0 {
                if c.storm_gave_up == 0 {
                    c.storm_recovery_us = Some(us(Instant::now() - s.at));
                }
                self.storm_done.notify_one();
            }
        }
    }
}

async fn run(
    wp: WorkerPlan,
    start: Instant,
    nats: Option<async_nats::Client>,
    tls: Option<Arc<rustls::ClientConfig>>,
    stop: Arc<Notify>,
) -> (Counters, Hists, Vec<(u64, u64)>, u64) {
    let plan = wp.plan;
    let connect_end = start + Duration::from_secs_f64(Phases::of(&plan).connect_end_s);
    let local_clients = worker_clients(plan.clients, wp.worker, plan.workers) as usize;
    let frame_max = (1 << 20).max(plan.msg_bytes + 64);
    let w = Rc::new(Worker {
        index: wp.worker,
        start,
        counters: RefCell::new(Counters::default()),
        hists: RefCell::new(Hists::default()),
        samples: RefCell::new(Vec::new()),
        ctl: (0..local_clients)
            .map(|_| Ctl {
                cmd: Cell::new(Cmd::None),
                notify: Notify::new(),
                connected: Cell::new(false),
                sent: Cell::new(0),
                hello: Cell::new(false),
                complete: Cell::new(false),
                first_intended_us: Cell::new(0),
                durable_seq: Cell::new(0),
                durable_got: Cell::new(0),
                durable_next_index: Cell::new(0),
                tls: RefCell::new(None),
            })
            .collect(),
        live_tasks: Cell::new(0),
        idle: Notify::new(),
        spawned: Cell::new(0),
        initial_pending: Cell::new(local_clients as u64),
        initial_done: Notify::new(),
        churn_pending: Cell::new(0),
        churn_done: Notify::new(),
        draining: Cell::new(false),
        storm: RefCell::new(None),
        storm_done: Notify::new(),
        decoder_limits: (frame_max, frame_max),
        connect_end,
        nats,
        burst_started_us: Cell::new(None),
        tls,
        plan,
    });
    let phases = Phases::of(&w.plan);
    sleep_until(start).await;

    let ticker = tokio::task::spawn_local(ticker(w.clone()));
    let sampler = tokio::task::spawn_local(sampler(w.clone()));
    let scheduler = tokio::task::spawn_local(schedule(w.clone()));
    // The burst publisher runs to its end (bounded by its message count), drain or not.
    let burster = (w.plan.burst_per_device > 0).then(|| tokio::task::spawn_local(burst(w.clone())));

    let phases_run = async {
        sleep_until(start + Duration::from_secs_f64(phases.hold_end_s)).await;
        // The hold ends on schedule, but handshakes still in progress are not cut short: wait
        // for every first attempt to finish (each is bounded by the connect and upgrade
        // timeouts).
        let initial_deadline = start
            + Duration::from_secs_f64(phases.connect_end_s)
            + Duration::from_millis(w.plan.connect_timeout_ms + w.plan.handshake_timeout_ms + 1000);
        while w.initial_pending.get() > 0 {
            tokio::select! {
                _ = w.initial_done.notified() => {}
                _ = sleep_until(initial_deadline) => break,
            }
        }
        wait_msg_min(&w, initial_deadline).await;
        if w.plan.churn_per_s > 0.0 {
            churn(&w, &phases).await;
        }
        if w.plan.storm_drop_fraction > 0.0 {
            storm(&w).await;
        }
    };
    // An interrupt (the coordinator's stop) ends the phases wherever they are: straight to
    // the drain, which aborts handshakes in progress and closes the open clients with 1000.
    tokio::select! {
        _ = phases_run => {}
        _ = stop.notified() => {}
    }

    // Drain: stop the schedule, close every connection, wait for the tasks to end.
    w.draining.set(true);
    scheduler.abort();
    // Clients the schedule had not reached (it fell behind, or the run was interrupted).
    w.counters.borrow_mut().clients_not_started = w.ctl.len() as u64 - w.spawned.get();
    for c in &w.ctl {
        c.cmd.set(Cmd::Drain);
        c.notify.notify_one();
    }
    // Each client may wait for its unanswered echoes, then for the close: two drain timeouts.
    let deadline = Instant::now() + Duration::from_millis(2 * w.plan.drain_timeout_ms + 1000);
    while w.live_tasks.get() > 0 {
        tokio::select! {
            _ = w.idle.notified() => {}
            _ = sleep_until(deadline) => break,
        }
    }
    // Clients still closing when the drain deadline passed (counted, then dropped).
    w.counters.borrow_mut().closes_unfinished = w.live_tasks.get();
    if let Some(b) = burster {
        b.abort();
    }
    let elapsed_us = us(w.since_start(Instant::now()));
    ticker.abort();
    sampler.abort();
    sample_now(&w);
    let counters = w.counters.borrow().clone();
    let hists = std::mem::take(&mut *w.hists.borrow_mut());
    let samples = std::mem::take(&mut *w.samples.borrow_mut());
    (counters, hists, samples, elapsed_us)
}

fn sample_now(w: &Worker) {
    let slot = (w.since_start(Instant::now()).as_millis() / SAMPLE_PERIOD.as_millis()) as u64;
    let connected = w.counters.borrow().connected;
    w.samples.borrow_mut().push((slot, connected));
}

async fn sampler(w: Rc<Worker>) {
    let mut n = 1u32;
    loop {
        sleep_until(w.start + SAMPLE_PERIOD * n).await;
        let connected = w.counters.borrow().connected;
        w.samples.borrow_mut().push((u64::from(n), connected));
        n += 1;
    }
}

async fn ticker(w: Rc<Worker>) {
    let mut k = 1u64;
    loop {
        sleep_until(w.start + Duration::from_secs(k)).await;
        let counters = w.counters.borrow().clone();
        let hist = {
            let mut h = w.hists.borrow_mut();
            let blobs = h.encode();
            h.reset();
            blobs
        };
        let samples = std::mem::take(&mut *w.samples.borrow_mut());
        emit(&WorkerMsg::Tick {
            k,
            counters,
            hist,
            samples,
        });
        k += 1;
    }
}

/// Spawns this worker's clients at their intended times.
async fn schedule(w: Rc<Worker>) {
    let workers = u64::from(w.plan.workers);
    let me = u64::from(w.index);
    for (i, t_s) in ConnectSchedule::new(&w.plan) {
        if i % workers != me {
            continue;
        }
        let intended = w.start + Duration::from_secs_f64(t_s);
        if intended > Instant::now() {
            sleep_until(intended).await;
        }
        if w.draining.get() {
            // The generator fell so far behind that the run ended first (the drain counts
            // the clients not started).
            break;
        }
        w.spawned.set(w.spawned.get() + 1);
        w.live_tasks.set(w.live_tasks.get() + 1);
        w.ctl[(i / workers) as usize]
            .first_intended_us
            .set(us(w.since_start(intended)));
        tokio::task::spawn_local(client(w.clone(), (i / workers) as usize, i, intended));
    }
}

/// Churn phase: disconnect and reconnect `churn_per_s` clients per second (globally; event `j`
/// belongs to worker `j % workers`).
async fn churn(w: &Worker, phases: &Phases) {
    let period_s = 1.0 / w.plan.churn_per_s;
    let workers = u64::from(w.plan.workers);
    // Count events in integers so that float rounding never adds or drops one.
    let events = (w.plan.churn_ms as f64 / 1000.0 * w.plan.churn_per_s + 1e-9).floor() as u64;
    let mut next_client = 0usize;
    for j in 0..events {
        let t_s = phases.hold_end_s + j as f64 * period_s;
        if j % workers == u64::from(w.index) {
            sleep_until(w.start + Duration::from_secs_f64(t_s)).await;
            // Next connected client, round robin.
            for _ in 0..w.ctl.len() {
                let c = &w.ctl[next_client];
                next_client = (next_client + 1) % w.ctl.len();
                if c.connected.get() && c.cmd.get() == Cmd::None {
                    c.cmd.set(Cmd::Churn);
                    c.notify.notify_one();
                    break;
                }
            }
        }
    }
    sleep_until(w.start + Duration::from_secs_f64(phases.churn_end_s)).await;
}

/// Reconnect storm: drop the selected clients at once, wait until all are back (or timeout).
async fn storm(w: &Worker) {
    // Churn reconnects still in progress finish first (each is bounded by the timeouts).
    let churn_deadline = Instant::now()
        + Duration::from_millis(w.plan.connect_timeout_ms + w.plan.handshake_timeout_ms + 1000);
    while w.churn_pending.get() > 0 {
        tokio::select! {
            _ = w.churn_done.notified() => {}
            _ = sleep_until(churn_deadline) => break,
        }
    }
    let at = Instant::now();
    let deadline = at + Duration::from_millis(w.plan.storm_timeout_ms);
    let workers = u64::from(w.plan.workers);
    let mut pending = 0u64;
    for (local, c) in w.ctl.iter().enumerate() {
        let i = local as u64 * workers + u64::from(w.index);
        if storm_drops(i, w.plan.clients, w.plan.storm_drop_fraction)
            && c.connected.get()
            && c.cmd.get() == Cmd::None
        {
            c.cmd.set(Cmd::StormDrop);
            c.notify.notify_one();
            pending += 1;
        }
    }
    if pending == 0 {
        w.counters.borrow_mut().storm_recovery_us = Some(0);
        return;
    }
    *w.storm.borrow_mut() = Some(StormState {
        at,
        deadline,
        pending,
    });
    loop {
        if w.storm.borrow().as_ref().is_none_or(|s| s.pending == 0) {
            break;
        }
        tokio::select! {
            _ = w.storm_done.notified() => {}
            _ = sleep_until(deadline + Duration::from_millis(100)) => break,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Why {
    Initial,
    Churn,
    Storm,
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Closed by our drain.
    Drained,
    /// Closed by churn; reconnect now.
    Churned,
    /// Dropped by the storm; reconnect after backoff.
    StormDropped,
    /// Connect or upgrade failed (counted in `handshake_errors`).
    Failed,
    /// The connection ended from the other side or broke (counted in `disconnects`).
    Broken,
}

/// One client: its connection, and its reconnects after churn and storm drops.
async fn client(w: Rc<Worker>, local: usize, global: u64, first: Instant) {
    let targets = w.plan.targets.len() as u64;
    let target = &w.plan.targets[(global % targets) as usize];
    let source = if w.plan.sources.is_empty() {
        None
    } else {
        let s = w.plan.sources.len() as u64;
        Some(w.plan.sources[((global / targets) % s) as usize])
    };
    let ctl = &w.ctl[local];
    let mut intended = first;
    let mut why = Why::Initial;
    let mut attempt = 0u32;
    loop {
        let end = session(&w, ctl, global, target, source, intended, why).await;
        let now = Instant::now();
        match (end, why) {
            (End::Churned, _) => {
                w.churn_pending.set(w.churn_pending.get() + 1);
                why = Why::Churn;
                intended = now;
            }
            (End::StormDropped, _) => {
                why = Why::Storm;
                attempt = 0;
                intended = now + jitter(w.plan.storm_backoff_ms);
            }
            (End::Failed, Why::Storm) => {
                let past = w.storm.borrow().as_ref().is_some_and(|s| now >= s.deadline);
                if past || w.draining.get() {
                    w.storm_client_settled(false);
                    break;
                }
                attempt = attempt.saturating_add(1);
                let window = w
                    .plan
                    .storm_backoff_ms
                    .saturating_mul(1 << attempt.min(20))
                    .min(w.plan.storm_backoff_max_ms);
                intended = now + jitter(window);
            }
            (End::Drained | End::Failed | End::Broken, _) => break,
        }
        if intended > now {
            tokio::select! {
                _ = sleep_until(intended) => {}
                _ = ctl.notify.notified() => {}
            }
        }
        if ctl.cmd.get() == Cmd::Drain {
            match why {
                Why::Storm => w.storm_client_settled(false),
                Why::Churn => w.attempt_settled(Why::Churn),
                Why::Initial => {}
            }
            break;
        }
    }
    w.task_done();
}

fn jitter(window_ms: u64) -> Duration {
    Duration::from_micros(rand::thread_rng().gen_range(0..=window_ms.saturating_mul(1000)))
}

/// Maps an I/O error to an error cause name.
pub fn io_cause(e: &io::Error) -> String {
    if let Some(cause) = tls::error_cause(e) {
        return cause;
    }
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused".into(),
        Some(libc::EADDRNOTAVAIL) => "address_unavailable".into(),
        Some(libc::EADDRINUSE) => "address_in_use".into(),
        Some(libc::ECONNRESET) | Some(libc::EPIPE) => "reset".into(),
        Some(libc::EMFILE) | Some(libc::ENFILE) => "fd_limit".into(),
        Some(libc::ETIMEDOUT) => "timeout".into(),
        Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) => "unreachable".into(),
        Some(libc::ENOBUFS) | Some(libc::ENOMEM) => "no_memory".into(),
        Some(n) => format!("errno_{n}"),
        None => format!("io_{:?}", e.kind()).to_lowercase(),
    }
}

/// Connect, upgrade, then run the connection until it ends.
async fn session(
    w: &Worker,
    ctl: &Ctl,
    global: u64,
    target: &Target,
    source: Option<Ipv4Addr>,
    intended: Instant,
    why: Why,
) -> End {
    let mut first = Attempt { w, why: Some(why) };
    if ctl.cmd.get() == Cmd::Drain {
        return aborted(w);
    }
    let began = Instant::now();
    {
        let lag_us = us(began.saturating_duration_since(intended));
        let mut c = w.counters.borrow_mut();
        c.attempts += 1;
        if lag_us > w.plan.lag_threshold_us {
            c.schedule_lag_events += 1;
        }
        c.schedule_lag_max_us = c.schedule_lag_max_us.max(lag_us);
    }
    let fail = |cause: String| {
        w.counters.borrow_mut().error(cause);
        End::Failed
    };
    let sock = match TcpSocket::new_v4() {
        Ok(s) => s,
        Err(e) => return fail(io_cause(&e)),
    };
    if let Some(src) = source {
        if let Err(e) = sys::set_bind_address_no_port(sock.as_raw_fd()) {
            return fail(io_cause(&e));
        }
        if let Err(e) = sock.bind(SocketAddr::new(src.into(), 0)) {
            return fail(io_cause(&e));
        }
    }
    let connect = timeout_at(
        began + Duration::from_millis(w.plan.connect_timeout_ms),
        sock.connect(target.addr),
    );
    tokio::pin!(connect);
    let stream = loop {
        tokio::select! {
            r = &mut connect => match r {
                Ok(Ok(s)) => break s,
                Ok(Err(e)) => return fail(io_cause(&e)),
                Err(_) => return fail("timeout_connect".into()),
            },
            _ = ctl.notify.notified() => if ctl.cmd.get() == Cmd::Drain { return aborted(w) },
        }
    };
    let t_tcp = Instant::now();
    w.hists
        .borrow_mut()
        .connect
        .saturating_record(us(t_tcp - intended).max(1));
    let _ = stream.set_nodelay(true);
    let stream = match connection(w, ctl, stream, target) {
        Ok(s) => s,
        Err(cause) => return fail(cause),
    };

    let upgrade = timeout_at(
        t_tcp + Duration::from_millis(w.plan.handshake_timeout_ms),
        upgrade(w, &stream, target, global),
    );
    tokio::pin!(upgrade);
    let leftover = loop {
        tokio::select! {
            r = &mut upgrade => match r {
                Ok(Ok(rest)) => break rest,
                Ok(Err(cause)) => return fail(cause),
                Err(_) => return fail("timeout_upgrade".into()),
            },
            _ = ctl.notify.notified() => if ctl.cmd.get() == Cmd::Drain { return aborted(w) },
        }
    };
    let t_up = Instant::now();
    {
        let mut h = w.hists.borrow_mut();
        h.upgrade.saturating_record(us(t_up - t_tcp).max(1));
        h.handshake.saturating_record(us(t_up - intended).max(1));
        let mut c = w.counters.borrow_mut();
        c.handshakes_ok += 1;
        if why == Why::Initial {
            c.initial_handshakes_ok += 1;
            c.initial_last_ok_us = c.initial_last_ok_us.max(us(w.since_start(t_up)));
        }
        c.connected += 1;
        c.connected_peak = c.connected_peak.max(c.connected);
    }
    first.settle();
    if why == Why::Storm {
        w.storm_client_settled(true);
    }
    ctl.sent.set(0);
    ctl.connected.set(true);
    let end = run_open(w, ctl, global, &stream, leftover, t_up).await;
    ctl.connected.set(false);
    ctl.hello.set(false);
    w.counters.borrow_mut().connected -= 1;
    end
}

/// An attempt cut short by the drain: counted, so that `handshakes_ok + handshake_errors_total +
/// clients_not_started == clients` always holds.
fn aborted(w: &Worker) -> End {
    w.counters.borrow_mut().error("aborted_by_drain");
    End::Drained
}

/// Marks a connect attempt as finished, once, however it ends (the phase driver waits for
/// first attempts before draining, and for churn reconnects before a storm).
struct Attempt<'a> {
    w: &'a Worker,
    why: Option<Why>,
}

impl Attempt<'_> {
    fn settle(&mut self) {
        if let Some(why) = self.why.take() {
            self.w.attempt_settled(why);
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.settle();
    }
}

/// The client's connection on a connected socket: TLS for a `wss://` target.
fn connection(
    w: &Worker,
    ctl: &Ctl,
    tcp: tokio::net::TcpStream,
    target: &Target,
) -> Result<Conn, String> {
    let tls = match (&w.tls, target.tls) {
        (Some(worker), true) => {
            let name = rustls::pki_types::ServerName::try_from(target.host_name().to_string())
                .map_err(|_| "tls_bad_server_name".to_string())?;
            let resumes = w.plan.tls.as_ref().is_some_and(|t| t.resumption);
            let config = if resumes {
                ctl.tls
                    .borrow_mut()
                    .get_or_insert_with(|| tls::for_one_client(worker))
                    .clone()
            } else {
                worker.clone()
            };
            Some((config, name))
        }
        _ => None,
    };
    Conn::new(tcp, tls.as_ref().map(|(c, n)| (c, n))).map_err(|e| io_cause(&e))
}

/// Runs the TLS handshake (`wss://`), sends the upgrade request and reads the response;
/// returns the bytes that followed it.
async fn upgrade(
    w: &Worker,
    stream: &Conn,
    target: &Target,
    global: u64,
) -> Result<Vec<u8>, String> {
    match stream.handshake().await.map_err(|e| io_cause(&e))? {
        Handshake::None => {}
        Handshake::Full => w.counters.borrow_mut().tls_full += 1,
        Handshake::Resumed => w.counters.borrow_mut().tls_resumed += 1,
    }
    let (hs, request) = if w.plan.workload == Workload::Echo || w.plan.protocol == Protocol::Nats {
        ClientHandshake::new(&target.host, &target.resource, &[], &[])
    } else {
        // tether's protocol: subprotocol tether.v1, device id in the query (read by a node with
        // --insecure-no-auth) and, with --device-jwt-secret, the device's own bearer token.
        let sep = if target.resource.contains('?') {
            '&'
        } else {
            '?'
        };
        let device = format!("{}{global}", w.plan.device_prefix);
        let mut resource = format!("{}{sep}device={device}", target.resource);
        // A durable device presents the last `seq` it processed: its own after a reconnect,
        // else the one the preload gives every device.
        if w.plan.workload == Workload::Durable {
            let ctl = &w.ctl[(global / u64::from(w.plan.workers)) as usize];
            let own = ctl.durable_seq.get();
            if let Some(last) = w
                .plan
                .last_seq
                .map(|l| l.max(own))
                .or((own > 0).then_some(own))
            {
                resource.push_str(&format!("&last_seq={last}"));
            }
        }
        let bearer = match &w.plan.device_jwt_secret {
            None => None,
            Some(secret) => {
                // The plan checked the secret, so signing cannot fail for a reason of its own.
                let claims = tether::auth::Claims::device(&device, DEVICE_TOKEN_TTL_SECS);
                let token = tether::auth::mint_hs256(secret.as_bytes(), &claims)
                    .map_err(|_| "token_mint_failed".to_string())?;
                Some(format!("Bearer {token}"))
            }
        };
        let headers: Vec<(&str, &str)> = bearer
            .iter()
            .map(|b| ("Authorization", b.as_str()))
            .collect();
        ClientHandshake::new(&target.host, &resource, &["tether.v1"], &headers)
    };
    write_all(stream, &request).await?;
    let mut head = Vec::new();
    loop {
        stream.readable().await.map_err(|e| io_cause(&e))?;
        let got = SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            match stream.try_read(&mut s[..]) {
                Ok(0) => Err("eof_in_upgrade".to_string()),
                Ok(n) => {
                    head.extend_from_slice(&s[..n]);
                    Ok(true)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                Err(e) => Err(io_cause(&e)),
            }
        })?;
        if !got {
            continue;
        }
        match hs.parse_response(&head) {
            Ok(None) if head.len() > RESPONSE_HEAD_BYTES_MAX => {
                return Err("response_too_large".into())
            }
            Ok(None) => {}
            Ok(Some((_resp, consumed))) => return Ok(head.split_off(consumed)),
            Err(ClientHandshakeError::Status(code)) => return Err(format!("status_{code}")),
            Err(ClientHandshakeError::BadAccept) => return Err("bad_accept".into()),
            Err(_) => return Err("bad_response".into()),
        }
    }
}

/// Writes all of `buf` (waiting for writability; callers bound the time).
async fn write_all(stream: &Conn, buf: &[u8]) -> Result<(), String> {
    stream.write_all(buf).await.map_err(|e| io_cause(&e))
}

async fn write_until(stream: &Conn, buf: &[u8], deadline: Instant) -> Result<(), String> {
    match timeout_at(deadline, write_all(stream, buf)).await {
        Ok(r) => r,
        Err(_) => Err("write_timeout".into()),
    }
}

/// Per-connection protocol state while open.
struct ConnState {
    /// The frames received and the close handshake (shared with the server: `tether::ws`).
    ws: Context,
    sent: u64,
    received: u64,
    expect_seq: u64,
    /// The server's close frame: `Some(code)` (None inside: no code).
    peer_close: Option<Option<u16>>,
    eof: bool,
    error: Option<String>,
    /// tether workloads: `hello` received (the device is routable).
    hello: bool,
    /// This client's index in the worker (its `Ctl`).
    local: usize,
    /// Durable workload: messages processed since this session's last `ack`.
    unacked: u64,
    /// `--protocol nats`: the device's NATS state.
    nats: Option<natsws::Session>,
}

impl ConnState {
    /// The state of client `global` of worker `w` when its upgrade completed.
    fn new(w: &Worker, global: u64) -> ConnState {
        let (frame_max, message_max) = w.decoder_limits;
        ConnState {
            ws: Context::new(
                Role::Client,
                DecoderLimits {
                    frame_bytes_max: frame_max,
                    message_bytes_max: message_max,
                },
            ),
            sent: 0,
            received: 0,
            expect_seq: 0,
            peer_close: None,
            eof: false,
            error: None,
            hello: false,
            local: (global / u64::from(w.plan.workers)) as usize,
            unacked: 0,
            nats: (w.plan.protocol == Protocol::Nats).then(natsws::Session::default),
        }
    }

    fn finished(&self) -> bool {
        self.peer_close.is_some() || self.eof || self.error.is_some()
    }

    fn end_cause(&self) -> String {
        if let Some(e) = &self.error {
            e.clone()
        } else if let Some(code) = self.peer_close {
            match code {
                Some(c) => format!("closed_by_server_{c}"),
                None => "closed_by_server_no_code".into(),
            }
        } else {
            "server_eof".into()
        }
    }
}

/// Reads what is available and feeds it to the connection's context; replies (pong, close) go
/// to `out`.
fn read_some(w: &Worker, stream: &Conn, st: &mut ConnState, out: &mut Vec<u8>) {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        match stream.try_read(&mut s[..]) {
            Ok(0) => st.eof = true,
            Ok(n) => feed(w, st, &mut s[..n], out),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => st.error = Some(io_cause(&e)),
        }
    });
}

/// Hands the messages in `data` to the workload, answers pings, and records the server's close
/// (echoed unless ours went first) or a protocol violation (answered with its close code).
fn feed(w: &Worker, st: &mut ConnState, data: &mut [u8], out: &mut Vec<u8>) {
    let ConnState {
        ws,
        received,
        expect_seq,
        hello,
        local,
        unacked,
        nats,
        error,
        ..
    } = st;
    let ctl = &w.ctl[*local];
    let ended = ws.feed(data, |incoming| match incoming {
        Incoming::Message { data, .. } => {
            if w.plan.workload == Workload::Echo {
                on_message(w, data, received, expect_seq)
            } else {
                let mut session = TetherSession {
                    ctl,
                    hello,
                    received,
                    expect_seq,
                    unacked,
                };
                match nats.as_mut() {
                    Some(n) => {
                        let global = *local as u64 * u64::from(w.plan.workers) + u64::from(w.index);
                        if let Err(cause) = natsws::on_data(w, n, data, &mut session, global, out) {
                            error.get_or_insert(cause);
                        }
                    }
                    None => on_tether_frame(w, data, &mut session, out),
                }
            }
        }
        Incoming::Ping(payload) => encode_pong(out, Role::Client, payload),
        Incoming::Pong(_) => {}
    });
    match ended {
        None => {}
        Some(Ended::PeerClosed(code)) => {
            st.ws.encode_close(out, Some(code.unwrap_or(1000)), "");
            st.peer_close = Some(code);
        }
        Some(Ended::Violation(e)) => {
            let code = e.close_code();
            st.error = Some(format!("protocol_error_{code}"));
            encode_close(out, Role::Client, code, "");
        }
    }
}

fn on_message(w: &Worker, data: &[u8], received: &mut u64, expect_seq: &mut u64) {
    if data.len() < MSG_HEADER_BYTES {
        w.counters.borrow_mut().messages_foreign += 1;
        return;
    }
    let seq = u64::from_le_bytes(data[0..8].try_into().expect("8 bytes"));
    let sent_ns = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
    on_probe(
        w,
        seq,
        Some(sent_ns),
        written_ns(data),
        received,
        expect_seq,
    );
}

/// A server-to-device envelope of tether's protocol (docs/protocol.md), as far as we use it.
#[derive(serde::Deserialize)]
struct Envelope {
    op: String,
    #[serde(default)]
    data: Option<Probe>,
    #[serde(default)]
    code: Option<String>,
    /// Durable `msg`: its stream sequence.
    #[serde(default)]
    seq: Option<u64>,
    /// `ack`: the `id` of the operation it answers.
    #[serde(default)]
    id: Option<String>,
}

/// The payload our tether workloads send: the message's index for its device and its
/// intended send time (ns from the worker's start; absent for preloaded messages, which were
/// stored before the start).
#[derive(serde::Deserialize)]
struct Probe {
    s: u64,
    #[serde(default)]
    t: Option<u64>,
    /// When it was handed to the socket (ns from the worker's start), after `t`.
    #[serde(default)]
    w: Option<u64>,
}

/// The `id` of a durable device's last acknowledgement: its confirmation completes the device.
const LAST_ACK_ID: &str = "last";

/// What a tether frame may change: the session's state and its device's.
struct TetherSession<'a> {
    ctl: &'a Ctl,
    hello: &'a mut bool,
    received: &'a mut u64,
    expect_seq: &'a mut u64,
    unacked: &'a mut u64,
}

fn on_tether_frame(w: &Worker, data: &[u8], s: &mut TetherSession<'_>, out: &mut Vec<u8>) {
    let env: Envelope = match serde_json::from_slice(data) {
        Ok(e) => e,
        Err(_) => {
            w.counters.borrow_mut().messages_foreign += 1;
            return;
        }
    };
    match (env.op.as_str(), env.data) {
        ("hello", _) => {
            *s.hello = true;
            s.ctl.hello.set(true);
        }
        ("msg", Some(p)) if w.plan.workload == Workload::Durable => match env.seq {
            Some(seq) => on_durable(w, s, seq, p, out),
            None => w.counters.borrow_mut().messages_foreign += 1,
        },
        ("msg", Some(p)) => {
            on_probe(w, p.s, p.t, p.w, s.received, s.expect_seq);
            let burst = w.plan.burst_per_device;
            if burst > 0 && *s.received == burst && !s.ctl.complete.get() {
                let from = w.burst_started_us.get().unwrap_or(0);
                completed(w, s.ctl, from);
            }
        }
        ("ack", _) if env.id.as_deref() == Some(LAST_ACK_ID) => {
            w.counters.borrow_mut().durable_acks_confirmed += 1;
            if !s.ctl.complete.get() && s.ctl.durable_got.get() >= w.plan.expected_per_device() {
                let from = if w.plan.preload_per_device > 0 {
                    s.ctl.first_intended_us.get()
                } else {
                    w.burst_started_us.get().unwrap_or(0)
                };
                completed(w, s.ctl, from);
            }
        }
        ("error", _) => {
            let code = env.code.unwrap_or_else(|| "unknown".into());
            *w.counters
                .borrow_mut()
                .tether_errors
                .entry(code)
                .or_default() += 1;
        }
        ("ack" | "pong", _) => {}
        _ => w.counters.borrow_mut().messages_foreign += 1,
    }
}

/// A durable message: deduplicated by `seq` (a redelivery is counted and acknowledged again),
/// its index checked like any probe, and acknowledged cumulatively every `ack_every` messages
/// and at the device's last (with an `id`: the node confirms it once JetStream applied it).
fn on_durable(w: &Worker, s: &mut TetherSession<'_>, seq: u64, p: Probe, out: &mut Vec<u8>) {
    let ctl = s.ctl;
    if seq <= ctl.durable_seq.get() {
        w.counters.borrow_mut().durable_redelivered += 1;
    } else {
        ctl.durable_seq.set(seq);
        let (mut got, mut next) = (ctl.durable_got.get(), ctl.durable_next_index.get());
        on_probe(w, p.s, p.t, p.w, &mut got, &mut next);
        ctl.durable_got.set(got);
        ctl.durable_next_index.set(next);
        *s.received += 1;
    }
    *s.unacked += 1;
    let last = ctl.durable_got.get() >= w.plan.expected_per_device();
    if *s.unacked >= w.plan.ack_every || last {
        *s.unacked = 0;
        let seq = ctl.durable_seq.get();
        let text = if last {
            format!(r#"{{"op":"ack","seq":{seq},"id":"{LAST_ACK_ID}"}}"#)
        } else {
            format!(r#"{{"op":"ack","seq":{seq}}}"#)
        };
        encode_frame(out, Role::Client, OpCode::Text, true, text.as_bytes());
        w.counters.borrow_mut().durable_acks_sent += 1;
    }
}

/// The device has everything meant for it: counted once, with the time since `from_us` (its
/// reference instant, microseconds from the start).
fn completed(w: &Worker, ctl: &Ctl, from_us: u64) {
    ctl.complete.set(true);
    let now_us = us(w.since_start(Instant::now()));
    w.hists
        .borrow_mut()
        .complete
        .saturating_record(now_us.saturating_sub(from_us).max(1));
    let mut c = w.counters.borrow_mut();
    c.devices_complete += 1;
    c.complete_last_us = c.complete_last_us.max(now_us);
}

/// A probe arrived: latency from its intended send time (when it has one) and from its write
/// (when it carries that), sequence check.
fn on_probe(
    w: &Worker,
    seq: u64,
    sent_ns: Option<u64>,
    written_ns: Option<u64>,
    received: &mut u64,
    expect_seq: &mut u64,
) {
    let mut c = w.counters.borrow_mut();
    let now_ns = w.since_start(Instant::now()).as_nanos() as u64;
    let mut h = w.hists.borrow_mut();
    if let Some(sent_ns) = sent_ns {
        h.rtt
            .saturating_record((now_ns.saturating_sub(sent_ns) / 1000).max(1));
    }
    if let Some(written_ns) = written_ns {
        h.transit
            .saturating_record((now_ns.saturating_sub(written_ns) / 1000).max(1));
    }
    drop(h);
    c.messages_received += 1;
    *received += 1;
    if seq == *expect_seq {
        *expect_seq += 1;
    } else if seq > *expect_seq {
        c.message_gaps += seq - *expect_seq;
        *expect_seq = seq + 1;
    } else {
        c.message_duplicates += 1;
    }
}

/// The open connection: echo messages on schedule, answer pings, obey commands.
async fn run_open(
    w: &Worker,
    ctl: &Ctl,
    global: u64,
    stream: &Conn,
    leftover: Vec<u8>,
    t_up: Instant,
) -> End {
    let mut st = ConnState::new(w, global);
    let mut out = Vec::new();
    if !leftover.is_empty() {
        let mut buf = leftover;
        feed(w, &mut st, &mut buf, &mut out);
    }
    let write_timeout = Duration::from_millis(w.plan.handshake_timeout_ms);
    let interval = (w.plan.msg_rate_per_client > 0.0)
        .then(|| Duration::from_secs_f64(1.0 / w.plan.msg_rate_per_client));
    // Echo sends start at once; tether workloads once `hello` came and the connect schedule is
    // over (so that the peer devices are routable).
    let mut next_send = interval
        .filter(|_| w.plan.workload == Workload::Echo)
        .map(|iv| t_up + iv.mul_f64(rand::thread_rng().gen_range(0.0..1.0)));
    let mut waiting_hello = w.plan.workload != Workload::Echo;
    let far = t_up + Duration::from_secs(86_400 * 365);
    let drain_timeout = Duration::from_millis(w.plan.drain_timeout_ms);
    // Set by a drain while echoes are outstanding: sends stop, the close waits for them.
    let mut quiesce_until: Option<Instant> = None;
    loop {
        if !out.is_empty() {
            let r = write_until(stream, &out, Instant::now() + write_timeout).await;
            out.clear();
            if let Err(cause) = r {
                st.error.get_or_insert(cause);
            }
        }
        if st.finished() {
            w.counters.borrow_mut().disconnect(st.end_cause());
            return End::Broken;
        }
        if waiting_hello && st.hello {
            waiting_hello = false;
            next_send = interval.map(|iv| {
                Instant::now().max(w.connect_end)
                    + iv.mul_f64(rand::thread_rng().gen_range(0.0..1.0))
            });
        }
        if let Some(until) = quiesce_until {
            if settled(w, &st, global) || Instant::now() >= until {
                close_and_wait(w, stream, &mut st, Instant::now() + drain_timeout).await;
                return End::Drained;
            }
        }
        tokio::select! {
            biased;
            _ = ctl.notify.notified() => match obey(w, ctl, global, stream, &mut st, drain_timeout).await {
                Obeyed::Ended(end) => return end,
                Obeyed::Quiesce => {
                    next_send = None;
                    quiesce_until = Some(Instant::now() + drain_timeout);
                }
                Obeyed::Nothing => {}
            },
            r = stream.readable() => match r {
                Ok(()) => read_some(w, stream, &mut st, &mut out),
                Err(e) => st.error = Some(io_cause(&e)),
            },
            _ = sleep_until(next_send.unwrap_or(far)), if next_send.is_some() => {
                let (Some(mut intended), Some(iv)) = (next_send, interval) else { continue };
                // Every send due by now goes out in this wake-up's one write (the timer wakes
                // on millisecond ticks, later on a busy machine): each keeps its intended time.
                let now = Instant::now();
                for _ in 0..SENDS_PER_WAKE_MAX {
                    send_due(w, &mut st, &mut out, intended, global).await;
                    intended += iv;
                    if intended > now {
                        break;
                    }
                }
                next_send = Some(intended);
            }
            _ = sleep_until(quiesce_until.unwrap_or(far)), if quiesce_until.is_some() => {}
        }
    }
}

/// What an open connection did with a command.
enum Obeyed {
    /// The connection ended (a drain with nothing outstanding, a churn, a storm drop).
    Ended(End),
    /// A drain while messages are outstanding: sends stop, the close waits for them.
    Quiesce,
    /// No command.
    Nothing,
}

/// Carries out the command in `ctl` on an open connection.
async fn obey(
    w: &Worker,
    ctl: &Ctl,
    global: u64,
    stream: &Conn,
    st: &mut ConnState,
    drain_timeout: Duration,
) -> Obeyed {
    match ctl.cmd.get() {
        Cmd::Drain if !settled(w, st, global) => Obeyed::Quiesce,
        Cmd::Drain => {
            close_and_wait(w, stream, st, Instant::now() + drain_timeout).await;
            Obeyed::Ended(End::Drained)
        }
        Cmd::Churn => {
            ctl.cmd.set(Cmd::None);
            w.counters.borrow_mut().churn_disconnects += 1;
            close_and_wait(w, stream, st, Instant::now() + CHURN_CLOSE_WAIT).await;
            Obeyed::Ended(End::Churned)
        }
        Cmd::StormDrop => {
            ctl.cmd.set(Cmd::None);
            w.counters.borrow_mut().storm_dropped += 1;
            Obeyed::Ended(End::StormDropped)
        }
        Cmd::None => Obeyed::Nothing,
    }
}

/// The send scheduled for `intended` is due: queue it (or publish it on NATS for a push),
/// unless a d2d partner is not routable yet.
async fn send_due(
    w: &Worker,
    st: &mut ConnState,
    out: &mut Vec<u8>,
    intended: Instant,
    global: u64,
) {
    // d2d: a send before the partner's `hello` may be missed (it is not routable yet, which a
    // loaded machine makes likely even after the connect schedule): the first sends wait for
    // it.
    if w.plan.workload == Workload::D2d
        && !w.ctl[(partner(w, global) / u64::from(w.plan.workers)) as usize]
            .hello
            .get()
    {
        return;
    }
    if let Some((subject, payload)) = send_message(w, st, out, intended, global) {
        if let Some(nats) = &w.nats {
            if let Err(e) = nats.publish(subject, payload.into()).await {
                *w.counters
                    .borrow_mut()
                    .tether_errors
                    .entry(format!("nats_publish: {e}"))
                    .or_default() += 1;
            }
        }
    }
}

/// Queues one message with its sequence number and intended send time: an echo frame, a
/// tether `send` to the partner device, or (returned) a NATS push for this device.
fn send_message(
    w: &Worker,
    st: &mut ConnState,
    out: &mut Vec<u8>,
    intended: Instant,
    global: u64,
) -> Option<(String, Vec<u8>)> {
    let mut c = w.counters.borrow_mut();
    let now = Instant::now();
    let lag_us = us(now.saturating_duration_since(intended));
    if lag_us > w.plan.lag_threshold_us {
        c.message_lag_events += 1;
    }
    // Echoes and pushes come back on this connection: bound the unanswered ones.
    if w.plan.workload != Workload::D2d && st.sent - st.received >= w.plan.msg_in_flight_max {
        c.messages_skipped_in_flight += 1;
        return None;
    }
    let seq = st.sent;
    let sent_ns = w.since_start(intended).as_nanos() as u64;
    // Written right after this (the caller's next step is the socket write).
    let written_ns = w.since_start(now).as_nanos() as u64;
    w.hists
        .borrow_mut()
        .send_lag
        .saturating_record(lag_us.max(1));
    st.sent += 1;
    w.ctl[(global / u64::from(w.plan.workers)) as usize]
        .sent
        .set(st.sent);
    c.messages_sent += 1;
    match w.plan.workload {
        Workload::Echo => {
            let mut payload = vec![0u8; w.plan.msg_bytes.max(MSG_HEADER_BYTES)];
            payload[0..8].copy_from_slice(&seq.to_le_bytes());
            payload[8..16].copy_from_slice(&sent_ns.to_le_bytes());
            stamp_written(&mut payload, written_ns);
            encode_frame(out, Role::Client, OpCode::Binary, true, &payload);
            None
        }
        Workload::D2d if w.plan.protocol == Protocol::Nats => {
            natsws::publish(w, out, partner(w, global), seq, sent_ns, written_ns);
            None
        }
        Workload::D2d => {
            let to = partner(w, global);
            let head = format!(
                r#"{{"op":"send","to":"{}{to}","data":{{"s":{seq},"t":{sent_ns},"w":{written_ns},"p":""#,
                w.plan.device_prefix
            );
            let text = format!("{head}{}\"}}}}", pad(w.plan.msg_bytes, head.len() + 3));
            encode_frame(out, Role::Client, OpCode::Text, true, text.as_bytes());
            None
        }
        Workload::Push => {
            let subject = format!("tether.dev.{}{global}", w.plan.device_prefix);
            Some((subject, backend_body(w.plan.msg_bytes, seq, Some(sent_ns))))
        }
        Workload::Durable => unreachable!("the plan refuses --msg-rate with --workload durable"),
    }
}

/// Publishes the burst: once the connect schedule is over, this worker's first attempts have
/// finished and every connected device has its `hello`, `burst_per_device` messages to each of
/// this worker's devices (message by message across devices), core NATS pushes (push) or
/// JetStream publishes with at most `publish_in_flight` unacknowledged (durable).
async fn burst(w: Rc<Worker>) {
    let Some(nats) = w.nats.clone() else {
        return;
    };
    sleep_until(w.connect_end).await;
    let deadline = w.connect_end
        + Duration::from_millis(w.plan.connect_timeout_ms + w.plan.handshake_timeout_ms + 1000);
    while Instant::now() < deadline
        && (w.initial_pending.get() > 0
            || w.ctl.iter().any(|c| c.connected.get() && !c.hello.get()))
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let started_us = us(w.since_start(started));
    w.burst_started_us.set(Some(started_us));
    w.counters.borrow_mut().burst_started_us = Some(started_us);
    let durable = w.plan.workload == Workload::Durable;
    let js = async_nats::jetstream::new(nats.clone());
    let mut acks = std::collections::VecDeque::new();
    let workers = u64::from(w.plan.workers);
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        *w.counters
            .borrow_mut()
            .tether_errors
            .entry(format!("{what}: {e}"))
            .or_default() += 1;
    };
    for k in 0..w.plan.burst_per_device {
        let index = w.plan.preload_per_device + k;
        for local in 0..w.ctl.len() as u64 {
            let global = local * workers + u64::from(w.index);
            let sent_ns = w.since_start(Instant::now()).as_nanos() as u64;
            let body = backend_body(w.plan.msg_bytes, index, Some(sent_ns));
            let prefix = &w.plan.device_prefix;
            w.counters.borrow_mut().messages_sent += 1;
            if durable {
                match js
                    .publish(format!("tether.mbox.{prefix}{global}"), body.into())
                    .await
                {
                    Ok(ack) => acks.push_back(ack),
                    Err(e) => fail("js_publish", &e),
                }
                while acks.len() >= w.plan.publish_in_flight {
                    let ack = acks.pop_front().expect("not empty");
                    match ack.await {
                        Ok(_) => w.counters.borrow_mut().published += 1,
                        Err(e) => fail("js_publish_ack", &e),
                    }
                }
            } else {
                match nats
                    .publish(format!("tether.dev.{prefix}{global}"), body.into())
                    .await
                {
                    Ok(()) => w.counters.borrow_mut().published += 1,
                    Err(e) => fail("nats_publish", &e),
                }
            }
        }
    }
    for ack in acks {
        match ack.await {
            Ok(_) => w.counters.borrow_mut().published += 1,
            Err(e) => fail("js_publish_ack", &e),
        }
    }
    if let Err(e) = nats.flush().await {
        fail("nats_flush", &e);
    }
}

/// `--msg-min`: holds the end of the hold until every connected client has its `hello` (tether
/// workloads) and has sent `msg_min_per_client` messages, so that the run sends at least that
/// many per client however late a loaded machine completed its handshakes. Bounded: at most
/// the time those sends take at `--msg-rate`, plus the drain timeout, after the deadline of
/// the first attempts (`initial_deadline`); a client still short then is left short (the report
/// shows `messages.sent`). Without `--msg-min`, returns at once.
async fn wait_msg_min(w: &Worker, initial_deadline: Instant) {
    if w.plan.msg_min_per_client == 0 {
        return;
    }
    let sends = Duration::from_secs_f64(
        w.plan.msg_min_per_client as f64 / w.plan.msg_rate_per_client.max(f64::MIN_POSITIVE),
    );
    let deadline = initial_deadline + sends + Duration::from_millis(w.plan.drain_timeout_ms);
    let short = |c: &Ctl| {
        c.connected.get()
            && ((w.plan.workload != Workload::Echo && !c.hello.get())
                || c.sent.get() < w.plan.msg_min_per_client)
    };
    while Instant::now() < deadline && w.ctl.iter().any(short) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether this connection has everything it should have before it closes: its own echoes
/// or pushes (and the burst's), what its partner sent (d2d), or (durable) every message of the
/// preload and the burst with its last acknowledgement confirmed.
fn settled(w: &Worker, st: &ConnState, global: u64) -> bool {
    match w.plan.workload {
        Workload::D2d => {
            let workers = u64::from(w.plan.workers);
            st.received >= w.ctl[(partner(w, global) / workers) as usize].sent.get()
        }
        Workload::Durable => w.ctl[st.local].complete.get(),
        Workload::Push => st.received >= st.sent + w.plan.burst_per_device,
        Workload::Echo => st.received >= st.sent,
    }
}

/// Padding that brings a message of `used` bytes up to `size`.
/// Where a binary payload carries its write time (ns from the worker's start, little endian),
/// after the sequence number and the intended send time, when `--msg-size` leaves room.
const WRITTEN_STAMP: std::ops::Range<usize> = MSG_HEADER_BYTES..MSG_HEADER_BYTES + 8;

/// Puts the write time into a binary payload that has room for it.
fn stamp_written(payload: &mut [u8], written_ns: u64) {
    if let Some(slot) = payload.get_mut(WRITTEN_STAMP) {
        slot.copy_from_slice(&written_ns.to_le_bytes());
    }
}

/// The write time a binary payload carries, if it has room for one.
fn written_ns(payload: &[u8]) -> Option<u64> {
    payload
        .get(WRITTEN_STAMP)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

fn pad(size: usize, used: usize) -> String {
    "x".repeat(size.saturating_sub(used))
}

/// The device a d2d client sends to: its neighbour in this worker (local index XOR 1), so both
/// ends of a pair share one clock; the last client of an odd count sends to itself.
fn partner(w: &Worker, global: u64) -> u64 {
    let workers = u64::from(w.plan.workers);
    let local = global / workers;
    let peer = local ^ 1;
    if peer < w.ctl.len() as u64 {
        peer * workers + u64::from(w.index)
    } else {
        global
    }
}

/// Sends our close frame and waits for the server's (counted as clean or timed out).
async fn close_and_wait(w: &Worker, stream: &Conn, st: &mut ConnState, deadline: Instant) {
    let mut out = Vec::new();
    st.ws.encode_close(&mut out, Some(1000), "");
    let mut clean = false;
    if write_until(stream, &out, deadline).await.is_ok() {
        out.clear();
        while !st.finished() {
            tokio::select! {
                r = stream.readable() => match r {
                    Ok(()) => read_some(w, stream, st, &mut out),
                    Err(e) => st.error = Some(io_cause(&e)),
                },
                _ = sleep_until(deadline) => break,
            }
        }
        clean = st.peer_close.is_some();
    }
    let mut c = w.counters.borrow_mut();
    if clean {
        c.closes_clean += 1;
    } else {
        c.closes_timed_out += 1;
    }
}

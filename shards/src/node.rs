//! A node's shards: pinned threads, one glommio `LocalExecutor` each, a start latch, a stop.
//!
//! [`Node::start`] spawns one thread per CPU of the [`Placement`], named `tether-shard-N`
//! (`N` is the dense shard index). Each thread pins itself to its CPU, builds its executor and,
//! inside it, runs the application's `init` for that shard (bind, allocate, spawn services).
//! `init` returns the shard's main future. Every shard reports to the latch; only when all have
//! reported success are they released to run their main futures. If any fails (pinning,
//! executor, `init`), all are told to abort, their threads are joined, and `start` returns the
//! first failure naming the shard and its CPU: the node fails whole, never half-started.
//!
//! A shard runs until its main future returns or the node is stopped ([`StopHandle::stop`]),
//! which drops the main future and with it the executor and every task on it.

use std::{
    future::Future,
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{cpus::Placement, mesh::Mesh, mesh::MeshEndpoint};

/// How to start a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Which CPU each shard runs on.
    pub placement: Placement,
    /// Messages each shard's mesh channel holds before senders wait.
    pub mesh_capacity: usize,
    /// Memory glommio reserves per executor for io_uring registered buffers. tether does no
    /// file or registered-buffer IO on the hot path, so a small value saves memory.
    pub io_memory_bytes: usize,
    /// Submission-queue entries of each shard's io_uring rings (glommio's `ring_depth`). The
    /// kernel sizes a ring's cancel hash table from it (ilog2 of the completion queue, 2x this,
    /// minus 5 bits, clamped to 2..=256 buckets), and glommio cancels its preemption timer with
    /// ASYNC_CANCEL on every reactor wake, which first walks one bucket of armed polls: one per
    /// open connection. At glommio's default of 128 (8 buckets) that walk was 33% of a shard's
    /// CPU in a 19,000-connection handshake run; 4096 gives 256 buckets (docs/benchmarks.md).
    pub ring_depth: usize,
    /// How long all shards together may take to initialise before start fails.
    pub start_timeout: Duration,
}

impl NodeConfig {
    /// Defaults for everything but the placement.
    pub fn new(placement: Placement) -> NodeConfig {
        NodeConfig {
            placement,
            mesh_capacity: 1024,
            io_memory_bytes: 256 * 1024,
            ring_depth: 4096,
            start_timeout: Duration::from_secs(30),
        }
    }
}

/// Shards whose thread panicked while the node ran (found by [`Node::join`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shard(s) {} panicked", .shards.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", "))]
pub struct ShardsPanicked {
    /// Their indexes, in order.
    pub shards: Vec<usize>,
}

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The OS thread of a shard could not be spawned (thread limit, memory).
    #[error("cannot spawn the thread of shard {index}: {source}")]
    Spawn {
        /// The shard.
        index: usize,
        /// The spawn error.
        source: std::io::Error,
    },
    /// A shard's executor or its `init` failed.
    #[error("shard {index} (CPU {cpu}) failed to start: {message}")]
    Shard {
        /// The shard.
        index: usize,
        /// The CPU it was to be pinned to.
        cpu: usize,
        /// Its error, as `init` or glommio gave it.
        message: String,
    },
    /// Not every shard reported ready within the start timeout.
    #[error("shards did not all start within {timeout_ms} ms (started: {started} of {total})")]
    Timeout {
        /// The start timeout, in milliseconds.
        timeout_ms: u128,
        /// Shards that had reported ready.
        started: usize,
        /// Shards in the node.
        total: usize,
    },
}

/// What a shard's `init` is given. Lives on the shard's thread.
pub struct Shard<M> {
    /// Dense shard index `0..count`.
    pub index: usize,
    /// Number of shards in the node.
    pub count: usize,
    /// CPU this shard's thread is pinned to.
    pub cpu: usize,
    /// This shard's end of the mesh.
    pub mesh: MeshEndpoint<M>,
}

/// Stops every shard of a node; cloneable and `Send` (e.g. for a signal thread).
#[derive(Clone)]
pub struct StopHandle {
    senders: Arc<Vec<flume::Sender<()>>>,
}

impl StopHandle {
    /// Tells every shard to drop its main future and exit. Idempotent.
    pub fn stop(&self) {
        for s in self.senders.iter() {
            let _ = s.try_send(());
        }
    }
}

/// A started node.
pub struct Node {
    threads: Vec<(usize, JoinHandle<()>)>,
    stop: StopHandle,
}

type Ready = (usize, Result<(), String>);

/// Everything one shard's thread takes with it.
struct ShardSeed<M, P> {
    index: usize,
    count: usize,
    cpu: usize,
    mesh: MeshEndpoint<M>,
    payload: P,
    io_memory: usize,
    ring_depth: usize,
    /// Reports once: started, or why not.
    ready_tx: flume::Sender<Ready>,
    /// The latch: `true` runs the shard, `false` (or a dropped sender) aborts it.
    go_rx: flume::Receiver<bool>,
    /// A message (or a dropped sender) ends the shard's main future.
    stop_rx: flume::Receiver<()>,
}

/// A shard's thread: pins itself to its CPU, builds its executor, runs `init` and reports,
/// waits for the latch, then runs the shard's main future until it ends or the node stops.
fn run_shard<M, P, I, F>(seed: ShardSeed<M, P>, init: &I)
where
    I: Fn(Shard<M>, P) -> Result<F, String>,
    F: Future<Output = ()> + 'static,
{
    let ShardSeed {
        index,
        count,
        cpu,
        mesh,
        payload,
        io_memory,
        ring_depth,
        ready_tx,
        go_rx,
        stop_rx,
    } = seed;
    let fail = |message: String| {
        let _ = ready_tx.send((index, Err(message)));
    };
    if let Err(e) = crate::cpus::pin_current_thread(cpu) {
        return fail(format!("cannot pin the thread to CPU {cpu}: {e}"));
    }
    let executor = match glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name(&format!("tether-shard-{index}"))
        .io_memory(io_memory)
        .ring_depth(ring_depth)
        .make()
    {
        Ok(ex) => ex,
        Err(e) => {
            return fail(format!(
                "cannot create the glommio executor: {e} (io_uring must be \
                 enabled and RLIMIT_MEMLOCK at least 512 KiB)"
            ))
        }
    };
    executor.run(async move {
        let shard = Shard {
            index,
            count,
            cpu,
            mesh,
        };
        let main = match init(shard, payload) {
            Ok(f) => f,
            Err(message) => {
                let _ = ready_tx.send((index, Err(message)));
                return;
            }
        };
        let _ = ready_tx.send((index, Ok(())));
        drop(ready_tx);
        if go_rx.recv_async().await != Ok(true) {
            return;
        }
        tracing::debug!(shard = index, cpu, "shard running");
        futures_lite::future::or(main, async {
            let _ = stop_rx.recv_async().await;
        })
        .await;
    });
}

/// The start latch's first half: waits until every shard (`cpus[i]` is shard `i`'s CPU)
/// reported started, within `timeout`; the first failure or the timeout is the node's error.
fn await_started(
    ready_rx: &flume::Receiver<Ready>,
    cpus: &[usize],
    timeout: Duration,
) -> Result<(), StartError> {
    let count = cpus.len();
    let deadline = Instant::now() + timeout;
    let mut started = 0;
    while started < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match ready_rx.recv_timeout(left) {
            Ok((_, Ok(()))) => started += 1,
            Ok((index, Err(message))) => {
                return Err(StartError::Shard {
                    index,
                    cpu: cpus[index],
                    message,
                })
            }
            Err(_) => {
                return Err(StartError::Timeout {
                    timeout_ms: timeout.as_millis(),
                    started,
                    total: count,
                })
            }
        }
    }
    Ok(())
}

impl Node {
    /// Starts one shard per CPU of `config.placement`. `payloads[i]` is moved to shard `i`
    /// (e.g. its listening socket); `init` runs on each shard's thread, inside its executor,
    /// and returns the shard's main future or an error that fails the whole node.
    pub fn start<M, P, I, F>(
        config: NodeConfig,
        payloads: Vec<P>,
        init: I,
    ) -> Result<Node, StartError>
    where
        M: Send + 'static,
        P: Send + 'static,
        I: Fn(Shard<M>, P) -> Result<F, String> + Send + Sync + 'static,
        F: Future<Output = ()> + 'static,
    {
        let cpus = config.placement.cpus.clone();
        let count = cpus.len();
        assert_eq!(payloads.len(), count, "one payload per shard");
        let init = Arc::new(init);
        let meshes = Mesh::build::<M>(count, config.mesh_capacity);
        // Each shard reports exactly once (started, or why not), so `count` slots never block.
        let (ready_tx, ready_rx) = flume::bounded::<Ready>(count);
        let mut go_txs = Vec::with_capacity(count);
        let mut stop_txs = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);

        let abort = |go_txs: &[flume::Sender<bool>], threads: Vec<(usize, JoinHandle<()>)>| {
            for g in go_txs {
                let _ = g.send(false);
            }
            for (_, t) in threads {
                let _ = t.join();
            }
        };

        for ((index, mesh), payload) in meshes.into_iter().enumerate().zip(payloads) {
            let cpu = cpus[index];
            let (go_tx, go_rx) = flume::bounded::<bool>(1);
            let (stop_tx, stop_rx) = flume::bounded::<()>(1);
            go_txs.push(go_tx);
            stop_txs.push(stop_tx);
            let seed = ShardSeed {
                index,
                count,
                cpu,
                mesh,
                payload,
                io_memory: config.io_memory_bytes,
                ring_depth: config.ring_depth,
                ready_tx: ready_tx.clone(),
                go_rx,
                stop_rx,
            };
            let init = init.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("tether-shard-{index}"))
                .spawn(move || run_shard(seed, &*init));
            match spawned {
                Ok(t) => threads.push((index, t)),
                Err(source) => {
                    abort(&go_txs, threads);
                    return Err(StartError::Spawn { index, source });
                }
            }
        }
        drop(ready_tx);
        if let Err(e) = await_started(&ready_rx, &cpus, config.start_timeout) {
            abort(&go_txs, threads);
            return Err(e);
        }
        for g in &go_txs {
            let _ = g.send(true);
        }
        Ok(Node {
            threads,
            stop: StopHandle {
                senders: Arc::new(stop_txs),
            },
        })
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.threads.len()
    }

    /// A handle that stops the node from any thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// OS thread ids are not exposed by std; the thread names are `tether-shard-N`.
    /// Waits until every shard has finished. Err names the shards whose thread panicked.
    pub fn join(self) -> Result<(), ShardsPanicked> {
        let mut panicked = Vec::new();
        for (index, t) in self.threads {
            if t.join().is_err() {
                panicked.push(index);
            }
        }
        if panicked.is_empty() {
            Ok(())
        } else {
            Err(ShardsPanicked { shards: panicked })
        }
    }

    /// Stops every shard and waits for them.
    pub fn stop(self) -> Result<(), ShardsPanicked> {
        self.stop.stop();
        self.join()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpus::{usable_cpus, ShardCount};
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    };

    fn placement() -> Placement {
        Placement::choose(ShardCount::Auto, None, &usable_cpus().unwrap()).unwrap()
    }

    #[test]
    fn shards_run_pinned_named_and_talk_over_the_mesh() {
        let p = placement();
        let n = p.shards();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let node = Node::start::<usize, (), _, _>(
            NodeConfig::new(p.clone()),
            vec![(); n],
            move |shard, ()| {
                let seen = seen2.clone();
                Ok(async move {
                    let name = std::thread::current().name().unwrap().to_string();
                    let affinity = crate::cpus::affinity_cpus().unwrap();
                    // Everyone sends its index to the next shard, then receives one message.
                    let next = (shard.index + 1) % shard.count;
                    shard.mesh.send_to(next, shard.index).await.unwrap();
                    let got = shard.mesh.recv().await.unwrap();
                    seen.lock()
                        .unwrap()
                        .push((shard.index, name, affinity, shard.cpu, got));
                })
            },
        )
        .unwrap();
        node.join().unwrap();
        let mut seen = seen.lock().unwrap().clone();
        seen.sort();
        assert_eq!(seen.len(), n);
        for (i, (index, name, affinity, cpu, got)) in seen.into_iter().enumerate() {
            assert_eq!(index, i);
            assert_eq!(name, format!("tether-shard-{i}"));
            assert_eq!(affinity, vec![cpu]);
            assert_eq!(cpu, p.cpus[i]);
            assert_eq!(got, (i + n - 1) % n);
        }
    }

    #[test]
    fn one_failing_shard_fails_the_node_and_no_shard_runs() {
        let p = placement();
        let n = p.shards();
        let ran = Arc::new(AtomicUsize::new(0));
        let ran2 = ran.clone();
        let err = Node::start::<(), (), _, _>(NodeConfig::new(p), vec![(); n], move |shard, ()| {
            if shard.index == n - 1 {
                return Err("bind failed".to_string());
            }
            let ran = ran2.clone();
            Ok(async move {
                ran.fetch_add(1, Ordering::SeqCst);
            })
        })
        .err()
        .expect("start must fail");
        assert!(matches!(err, StartError::Shard { index, .. } if index == n - 1));
        assert!(err.to_string().contains("bind failed"));
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn stop_ends_shards_that_would_run_forever() {
        let p = placement();
        let n = p.shards();
        let node = Node::start::<(), (), _, _>(NodeConfig::new(p), vec![(); n], |_, ()| {
            Ok(futures_lite::future::pending::<()>())
        })
        .unwrap();
        node.stop().unwrap();
    }

    #[test]
    fn pinning_to_an_unusable_cpu_fails_clearly() {
        let p = Placement {
            cpus: vec![crate::cpus::CPU_NUMBER_MAX],
        };
        let err = Node::start::<(), (), _, _>(NodeConfig::new(p), vec![()], |_, ()| Ok(async {}))
            .err()
            .expect("must fail");
        assert!(err.to_string().contains("cannot pin"), "{err}");
    }
}

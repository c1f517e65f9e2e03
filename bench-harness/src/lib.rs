//! `tether-bench`: side-by-side server benchmarks for tether.
//!
//! The crate holds the peer servers' shared plumbing (`peer`), the scenario files' schema
//! (`scenario`), the system under test of a run (`deploy`: one server, or a nats-server and
//! tether nodes), the run orchestration (`runner`: drive `tether-loadgen` and the probe, sample
//! the servers' RSS and CPU through `procfs`), the results' schema and statistics (`results`,
//! `stats`), the Markdown report and SVG plots (`report`, `plot`), and the `wss://` set-up:
//! test PKI, nginx in front of tether (`tls_stack`), and the hostile-client measurements
//! (`hostile`: clients that park mid-frame, stall, or trickle admin requests). The criterion
//! micro-benchmarks of the codec live in `benches/`.

pub mod deploy;
pub mod hostile;
pub mod natsws;
pub mod peer;
pub mod plot;
pub mod procfs;
pub mod report;
pub mod results;
pub mod runner;
pub mod scenario;
pub mod stats;
pub mod tls_stack;

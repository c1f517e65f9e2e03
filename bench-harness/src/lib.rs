//! `tether-bench`: side-by-side server benchmarks for tether.
//!
//! The crate holds the peer servers' shared plumbing (`peer`), the scenario files' schema
//! (`scenario`), the run orchestration (`runner`: start a server, drive `tether-loadgen`, sample
//! the server's RSS and CPU through `procfs`), the results' schema and statistics (`results`,
//! `stats`), and the Markdown report and SVG plots (`report`, `plot`). The criterion
//! micro-benchmarks of the codec live in `benches/`.

pub mod peer;
pub mod plot;
pub mod procfs;
pub mod report;
pub mod results;
pub mod runner;
pub mod scenario;
pub mod stats;

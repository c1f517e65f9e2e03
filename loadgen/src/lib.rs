//! `tether-loadgen`: an open-loop WebSocket load generator for hundreds of thousands of clients.
//!
//! The coordinator ([`coordinator`]) checks the plan against the host ([`preflight`]), spawns
//! worker processes of the same binary ([`worker`]) that each run a share of the global
//! schedule ([`plan`]) on a tokio current-thread runtime, and merges their HdrHistograms and
//! counters ([`stats`]) exactly. The tether workloads' backend publisher is [`backend`]. The
//! WebSocket protocol is the project's sans-IO core in the
//! client role (`tether::ws`); devices speak tether's protocol, or NATS over WebSocket to
//! nats-server's own listener ([`tether::nats::proto`], `--protocol nats`). See `docs/loadgen.md`.

pub mod backend;
pub mod cli;
pub mod coordinator;
pub mod plan;
pub mod preflight;
pub mod scenario;
pub mod stats;
pub mod sys;
pub mod threshold;
pub mod tls;
pub mod worker;

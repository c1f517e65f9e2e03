//! The thread-per-core runtime of tether. It knows nothing of WebSocket.
//!
//! What it owns:
//! - [`cpus`]: which CPUs a node may use (online CPUs within the process's affinity mask), the
//!   `--cpus` list syntax and the `--shards N|auto` choice, turned into a [`cpus::Placement`]
//!   (shard index -> CPU).
//! - [`node`]: one OS thread per shard, named `tether-shard-N`, pinned to its CPU, running one
//!   glommio `LocalExecutor`. All shards initialise behind a latch; if one cannot start, every
//!   shard is told to abort and the node fails whole with the shard's error. Shard indexes are
//!   dense `0..n` (glommio's executor ids are not used as indexes). A node stops cleanly: either
//!   every shard's main future finishes, or [`node::Node::stop`] cancels them.
//! - [`mesh`]: bounded flume channels from every shard to every shard; a message type per
//!   application, which must be `Send` (per-shard state itself stays `!Send` on its shard).
//! - [`listener`]: an `SO_REUSEPORT` listening socket built with libc so that the backlog is
//!   configurable (glommio's own `TcpListener::bind` fixes it at 1024), handed to glommio.

#![warn(missing_docs)]

pub mod cpus;
pub mod listener;
pub mod mesh;
pub mod node;
pub mod uring;

pub use cpus::{CpuListError, Placement, PlacementError, ShardCount};
pub use listener::{bind_reuseport, ListenerError};
pub use mesh::{Mesh, MeshEndpoint, MeshSendError};
pub use node::{Node, NodeConfig, Shard, ShardsPanicked, StartError};
pub use uring::IoUringUnavailable;

//! Weir, a programmable mail transfer agent. See docs/ARCHITECTURE.md for
//! the map of these modules and the path of a message through them.

pub mod auth;
pub mod cli;
pub mod config;
pub mod control;
pub mod delivery;
pub mod dns;
pub mod logging;
pub mod metrics;
pub mod plugin;
pub mod policy;
pub mod queue;
pub mod server;
pub mod smtp;
pub mod spam;
pub mod spf;
pub mod tls;

/// mimalloc rather than glibc's malloc, for everything that links Weir (the
/// binary, the benchmarks, the tests): a session's buffers are often freed
/// or grown on another tokio worker than the one that allocated them, and
/// glibc then takes the other thread's arena lock. Under load the two
/// workers waited on each other's arenas (futex) about once a message; with
/// mimalloc a cross-thread free is a lock-free push. See benches/README.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

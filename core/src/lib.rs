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

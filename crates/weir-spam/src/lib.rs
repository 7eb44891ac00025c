//! Weir's spam scorer, shared by the `spam-score` plugin (compiled to
//! WebAssembly) and the `weir spam` commands (native): the same analysis,
//! rules and classifier on both sides, so what `weir spam eval` reports is
//! what the plugin does.
//!
//! - [`analyze`]: one parse of a message (mail-parser) into the tokens the
//!   classifier uses and the facts the rules look at;
//! - [`rules`]: hand-written rules on headers and body (GTUBE, missing
//!   Date, suspicious links, ...), each a named symbol with a score;
//! - [`model`]: the trained model file (token hashes and per-class counts,
//!   sorted, read in place without parsing) and the trainer;
//! - [`bayes`]: Robinson's chi-square combining over the message's tokens;
//! - [`score`]: rules + classifier + other plugins' symbols → one score;
//! - [`eval`]: the seeded train/test split and the recall/false-positive
//!   report of `weir spam eval`.

pub mod analyze;
pub mod bayes;
pub mod eval;
pub mod model;
pub mod rules;
pub mod score;

pub use analyze::{analyze, Analysis};
pub use model::{Model, Trainer};
pub use score::{Scorer, Scored, Symbol};

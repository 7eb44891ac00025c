//! Says continue at every stage: the baseline for the per-call overhead
//! benchmark (benches/plugin_call.rs).
use weir_plugin_sdk::*;

#[derive(Default)]
pub struct Noop;

impl Plugin for Noop {
    const STAGES: &'static [Stage] =
        &[Stage::Connect, Stage::Helo, Stage::Auth, Stage::MailFrom, Stage::RcptTo, Stage::Data, Stage::Route];
    const STATELESS: bool = true;
}

export_plugin!(Noop);

//! Misbehaves on purpose: uses the dns capability at data, which its
//! policy entry does not grant.
use weir_plugin_sdk::*;

#[derive(Default)]
pub struct Snoop;

impl Plugin for Snoop {
    const STAGES: &'static [Stage] = &[Stage::Data];
    fn data(&mut self, _ctx: &Context) -> Decision {
        let _ = host::dns::txt("example.org");
        Decision::next()
    }
}

export_plugin!(Snoop);

//! Misbehaves on purpose: panics at data (a trap in WebAssembly).
use weir_plugin_sdk::*;

#[derive(Default)]
pub struct Panicker;

impl Plugin for Panicker {
    const STAGES: &'static [Stage] = &[Stage::Data];
    fn data(&mut self, ctx: &Context) -> Decision {
        let v: Vec<u8> = Vec::new();
        // Indexing past the end panics; the optimiser cannot see through black_box.
        let i = std::hint::black_box(ctx.size as usize + 10);
        Decision::next().because(format!("{}", v[i]))
    }
}

export_plugin!(Panicker);

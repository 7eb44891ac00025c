//! Misbehaves on purpose: loops forever at data (tests the time budget).
use weir_plugin_sdk::*;

#[derive(Default)]
pub struct Looper;

impl Plugin for Looper {
    const STAGES: &'static [Stage] = &[Stage::Data];
    fn data(&mut self, _ctx: &Context) -> Decision {
        let mut n: u64 = 0;
        loop {
            n = n.wrapping_add(1);
            std::hint::black_box(n);
        }
    }
}

export_plugin!(Looper);

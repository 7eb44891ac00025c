//! Misbehaves on purpose: allocates without bound at data (tests the memory cap).
use weir_plugin_sdk::*;

#[derive(Default)]
pub struct Hog {
    kept: Vec<Vec<u8>>,
}

impl Plugin for Hog {
    const STAGES: &'static [Stage] = &[Stage::Data];
    fn data(&mut self, _ctx: &Context) -> Decision {
        loop {
            let mut v = vec![0u8; 1 << 20];
            v[0] = 1;
            self.kept.push(std::hint::black_box(v));
        }
    }
}

export_plugin!(Hog);

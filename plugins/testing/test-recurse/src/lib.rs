//! Misbehaves on purpose: recurses without end at data, in frames that
//! live on the native stack only (no locals in linear memory), until
//! wasmtime's limit on the native stack a call may use stops it: a trap
//! ("call stack exhausted") on whichever stack the call runs on.
use weir_plugin_sdk::*;

#[derive(Default)]
pub struct Recurse;

/// Not a tail call, and not one LLVM can turn into a loop (the result is
/// rotated and mixed after the call returns).
#[inline(never)]
fn deeper(n: u64) -> u64 {
    if n == u64::MAX {
        return n;
    }
    deeper(n + 1).rotate_left((n % 61) as u32) ^ n
}

impl Plugin for Recurse {
    const STAGES: &'static [Stage] = &[Stage::Data];
    fn data(&mut self, ctx: &Context) -> Decision {
        Decision::next().because(format!("{}", deeper(ctx.size)))
    }
}

export_plugin!(Recurse);

//! The Rust SDK for Weir policy plugins.
//!
//! A plugin is a type implementing [`Plugin`] (one method per SMTP stage,
//! each defaulting to "continue") exported with [`export_plugin!`]. It
//! builds with `cargo build --target wasm32-wasip2 --release` into a
//! WebAssembly component of the `weir:plugin` world (see `sdk/wit/`).
//!
//! A value of the plugin type lives for one SMTP session, so its fields are
//! per-session state: every session starts from `Default::default()`. The
//! WebAssembly instance around it may serve several sessions (one call at
//! a time), so statics and thread-locals outlive a session: keep only
//! session-independent things there, such as a parsed configuration
//! ([`host::cached_config`]) or a data file ([`host::files::cached`]).
//!
//! Host capabilities are in [`host`]: they call the server when running in
//! Weir, and the [`testing::Harness`] when the plugin's tests run natively.

pub mod allocator;
pub mod host;
pub mod util;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
mod types;

pub use types::*;

/// Plugins allocate through [`allocator::SizeClasses`] (on wasm32, with one
/// thread; the `size-class-alloc` feature, on by default).
#[cfg(all(feature = "size-class-alloc", target_arch = "wasm32", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: allocator::SizeClasses = allocator::SizeClasses::new();

/// A stateful plugin's values, one for each session an instance holds
/// (the export keeps them; public for its tests).
#[doc(hidden)]
pub struct Sessions<P> {
    values: std::collections::HashMap<u64, P>,
}

impl<P> Default for Sessions<P> {
    fn default() -> Self {
        Sessions { values: std::collections::HashMap::new() }
    }
}

impl<P: Default> Sessions<P> {
    /// Forgets the sessions that `ended`, then gives `session`'s value (a
    /// fresh one at its first call).
    pub fn for_call(&mut self, session: u64, ended: &[u64]) -> &mut P {
        for s in ended {
            self.values.remove(s);
        }
        self.values.entry(session).or_default()
    }

    /// How many sessions' values are held.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_world",
        default_bindings_module: "weir_plugin_sdk::bindings",
    });
}

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod convert;

/// A policy plugin. Every method has a default that lets the message
/// continue; implement the stages you need and list them in `STAGES`.
pub trait Plugin: Default {
    /// The stages this plugin handles; placing it at another stage in a
    /// pipeline is refused when the policy is loaded.
    const STAGES: &'static [Stage];

    /// Whether the plugin keeps nothing in its fields from one call of a
    /// session to the next. A stateless plugin's calls may run on any
    /// instance: a few warm ones serve all sessions, so a server with many
    /// sessions open needs far fewer, and each call costs less.
    /// Leave it false if a method reads what an earlier one wrote
    /// in `self` (a counter, a result kept from mail_from for data): the
    /// SDK then keeps a value of the plugin type for each session, so one
    /// instance can hold several sessions' values and a few instances
    /// serve all sessions (one of its own for each session when the plugin
    /// is granted DNS or mail-auth, whose calls wait). (A plugin that
    /// says true but keeps state anyway loses it, since every switch to
    /// another session starts it from a fresh value; it never sees another
    /// session's.)
    const STATELESS: bool = false;

    fn connect(&mut self, _ctx: &Context) -> Decision {
        Decision::next()
    }
    fn helo(&mut self, _ctx: &Context) -> Decision {
        Decision::next()
    }
    fn auth(&mut self, _ctx: &Context) -> Decision {
        Decision::next()
    }
    fn mail_from(&mut self, _ctx: &Context) -> Decision {
        Decision::next()
    }
    fn rcpt_to(&mut self, _ctx: &Context) -> Decision {
        Decision::next()
    }
    fn data(&mut self, _ctx: &Context) -> Decision {
        Decision::next()
    }
    fn route(&mut self, _ctx: &Context) -> Decision {
        Decision::next()
    }
}

/// Calls the method for `ctx.stage`.
pub fn dispatch<P: Plugin>(p: &mut P, ctx: &Context) -> Decision {
    match ctx.stage {
        Stage::Connect => p.connect(ctx),
        Stage::Helo => p.helo(ctx),
        Stage::Auth => p.auth(ctx),
        Stage::MailFrom => p.mail_from(ctx),
        Stage::RcptTo => p.rcpt_to(ctx),
        Stage::Data => p.data(ctx),
        Stage::Route => p.route(ctx),
    }
}

/// Exports a [`Plugin`] type as the component's `weir:plugin` world.
#[macro_export]
macro_rules! export_plugin {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        mod __weir_plugin_export {
            #[allow(unused_imports)]
            use super::*;
            use $crate::bindings::weir::plugin::types as wit;
            struct Exported;
            thread_local! {
                static STATE: ::core::cell::RefCell<Option<$crate::convert::Exported<$ty>>> = const { ::core::cell::RefCell::new(None) };
            }
            impl $crate::bindings::Guest for Exported {
                fn describe() -> wit::PluginInfo {
                    wit::PluginInfo {
                        stages: <$ty as $crate::Plugin>::STAGES.iter().map(|s| $crate::convert::stage_to_wit(*s)).collect(),
                        stateless: <$ty as $crate::Plugin>::STATELESS,
                        // The SDK keeps a stateful plugin's values by session.
                        session_keyed: true,
                    }
                }
                fn on_stage(call: wit::Call, updates: Option<::std::vec::Vec<wit::Update>>) -> wit::Decision {
                    STATE.with(|s| $crate::convert::on_stage::<$ty>(s, call, updates))
                }
            }
            $crate::bindings::__export_world!(Exported with_types_in $crate::bindings);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::Sessions;

    #[test]
    fn each_session_keeps_its_own_value_until_it_ends() {
        let mut s: Sessions<u32> = Sessions::default();
        *s.for_call(1, &[]) += 1;
        *s.for_call(2, &[]) += 10;
        *s.for_call(1, &[]) += 1;
        assert_eq!(*s.for_call(1, &[]), 2);
        assert_eq!(*s.for_call(2, &[]), 10);
        // Session 1 ended: forgotten; session 3 starts fresh.
        assert_eq!(*s.for_call(3, &[1]), 0);
        assert_eq!(s.len(), 2);
        // Telling an end twice, or of a session never seen, is harmless.
        assert_eq!(*s.for_call(2, &[1, 7]), 10);
        assert_eq!(*s.for_call(1, &[]), 0, "a number seen again starts afresh");
    }
}

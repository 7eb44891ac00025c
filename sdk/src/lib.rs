//! The Rust SDK for Weir policy plugins.
//!
//! A plugin is a type implementing [`Plugin`] (one method per SMTP stage,
//! each defaulting to "continue") exported with [`export_plugin!`]. It
//! builds with `cargo build --target wasm32-wasip2 --release` into a
//! WebAssembly component of the `weir:plugin` world (see `sdk/wit/`).
//!
//! A value of the plugin type lives for one SMTP session, so its fields are
//! per-session state: every session starts from `Default::default()`. The
//! WebAssembly instance around it may serve several sessions in turn (one at
//! a time), so statics and thread-locals outlive a session: keep only
//! session-independent things there, such as a parsed configuration
//! ([`host::cached_config`]) or a data file ([`host::files::cached`]).
//!
//! Host capabilities are in [`host`]: they call the server when running in
//! Weir, and the [`testing::Harness`] when the plugin's tests run natively.

pub mod host;
pub mod util;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
mod types;

pub use types::*;

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
    /// in `self` (a counter, a result kept from mail_from for data): such a
    /// plugin gets an instance of its own for each session. (A plugin that
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
                    }
                }
                fn on_stage(e: wit::Event) -> wit::Decision {
                    STATE.with(|s| $crate::convert::on_stage::<$ty>(s, e))
                }
            }
            $crate::bindings::__export_world!(Exported with_types_in $crate::bindings);
        }
    };
}

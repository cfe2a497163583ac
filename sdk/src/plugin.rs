//! The `Plugin` trait: a plugin with typed config and state, exported by one macro.
//!
//! The host calls `oplet_init` once per instance with the manifest's `[config]`
//! table: the SDK reads it into `Config` through serde (errors name the key) and
//! calls `new`. Each event then reaches `handle` as a borrowed [`EventView`].
//! State lives in `self` until the host replaces the instance (a trap, a timeout,
//! a hot reload): then `new` runs again and in-memory state starts over.

use crate::{codec, from_value, Effect, Error, Event, EventView, Result, Value};
use serde::de::DeserializeOwned;

/// A plugin with config and state. Export it with [`export_plugin!`](crate::export_plugin).
pub trait Plugin: Sized + 'static {
    /// The manifest's `[config]` table, read through serde. Use
    /// `#[serde(deny_unknown_fields)]` so a typo in a key is an error, and
    /// `#[serde(default)]` for optional keys. `Value` takes any table as is.
    type Config: DeserializeOwned;

    /// Builds the instance from its config. An error refuses the plugin at load
    /// with its message: say which key is wrong and what to put there.
    fn new(config: Self::Config) -> Result<Self>;

    /// Turns one event into the effects the host should apply. An error
    /// dead-letters this event for this plugin (the instance is kept).
    fn handle(&mut self, event: &EventView<'_>) -> Result<Vec<Effect>>;

    /// `new` from a config `Value`, as `oplet_init` does: for native tests.
    fn from_config(config: &Value) -> Result<Self> {
        let config = from_value(config).map_err(|e| Error::new(e.with_root("config")))?;
        Self::new(config)
    }

    /// `handle` on an owned event, encoded as the host encodes it: for native tests.
    fn handle_event(&mut self, event: &Event) -> Result<Vec<Effect>> {
        let bytes = codec::encode(event)?;
        let view = EventView::parse(&bytes)?;
        self.handle(&view)
    }
}

/// Exports a [`Plugin`] type as the plugin's ABI (`oplet_abi_version`, `oplet_abi_features`,
/// `oplet_alloc`, `oplet_init`, `oplet_handle`), on `wasm32` only.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        const _: () = {
            ::std::thread_local! {
                static PLUGIN: ::core::cell::RefCell<::core::option::Option<$plugin>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }
            #[unsafe(no_mangle)]
            pub extern "C" fn oplet_abi_version() -> u32 {
                $crate::ABI_VERSION
            }
            #[unsafe(no_mangle)]
            pub extern "C" fn oplet_abi_features() -> u32 {
                $crate::ABI_FEATURES
            }
            #[unsafe(no_mangle)]
            pub extern "C" fn oplet_alloc(len: u32) -> u32 {
                $crate::guest::alloc(len)
            }
            #[unsafe(no_mangle)]
            pub extern "C" fn oplet_init(ptr: u32, len: u32) -> u64 {
                PLUGIN.with(|p| $crate::guest::plugin_init::<$plugin>(p, ptr, len))
            }
            #[unsafe(no_mangle)]
            pub extern "C" fn oplet_handle(ptr: u32, len: u32) -> u64 {
                PLUGIN.with(|p| $crate::guest::plugin_handle::<$plugin>(p, ptr, len))
            }
        };
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            fn is_a_plugin<P: $crate::Plugin>() {}
            let _ = is_a_plugin::<$plugin>;
        };
    };
}

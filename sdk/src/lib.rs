//! `oplet-sdk`: the plugin ABI of Oplet, shared by the host and by plugins.
//!
//! A plugin is one function from an [`Event`] to a list of [`Effect`]s. The host
//! encodes the event as MessagePack, calls the plugin's `oplet_handle` export, and
//! decodes the [`Reply`]. The same types are compiled into the host and the guest,
//! so the two sides cannot drift apart; [`ABI_VERSION`] is checked at load.
//!
//! Writing a plugin (built for `wasm32-unknown-unknown`): a type with a config
//! read through serde, handed each event as a borrowed, lazily read [`EventView`]:
//!
//! ```ignore
//! use oplet_sdk::{Effect, EventView, Plugin, Result};
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config { prefix: String }
//!
//! struct Invalidate { config: Config }
//!
//! impl Plugin for Invalidate {
//!     type Config = Config;
//!     fn new(config: Config) -> Result<Self> { Ok(Invalidate { config }) }
//!     fn handle(&mut self, event: &EventView) -> Result<Vec<Effect>> {
//!         let Some(change) = event.change() else { return Ok(vec![]) };
//!         let Some(id) = change.id() else { return Ok(vec![]) };
//!         Ok(vec![Effect::cache_delete([format!("{}{}", self.config.prefix, id.to_key_string())])])
//!     }
//! }
//! oplet_sdk::export_plugin!(Invalidate);
//! ```
//!
//! A plain function works too: `#[handler] fn handle(event: &EventView) -> ...`
//! (lazy) or `#[handler] fn handle(event: &Event) -> ...` (the whole event
//! decoded into owned values first), with an optional `#[init] fn(&Value)`.
//!
//! The ABI itself (exports, imports, memory ownership, MessagePack schemas) is
//! documented in `docs/abi.md` so plugins can be written in any language.
//!
//! Plugin state: a `Plugin` keeps state in `self` between calls, but the host
//! replaces an instance that trapped, ran out of time or memory, and loads a new
//! instance on every hot reload: that state is then gone. Keep durable state in
//! effects (a database row, a cache key), not in memory.

mod base64;
mod de;
mod effect;
mod event;
mod plugin;
mod raw;
mod reply;
#[cfg(feature = "testing")]
pub mod testing;
mod value;
mod view;

pub use de::{from_value, to_value, DeError};
pub use effect::{CapabilityKind, Effect, EmitTarget, LogLevel};
pub use event::{namespace_matches, Change, Event, EventBody, OperationType, SocketEvent};
pub use plugin::Plugin;
pub use raw::{RawArray, RawError, RawMap, RawValue};
pub use reply::read_ok_reply;
pub use value::{Map, Value};
pub use view::{BodyView, ChangeView, EventView, SocketView};

use serde::{Deserialize, Serialize};

/// Version of the binary interface. A module whose `oplet_abi_version` export
/// returns another number is refused at load.
pub const ABI_VERSION: u32 = 1;

/// Feature bit of the optional `oplet_abi_features` export (docs/abi.md §2.1):
/// the buffer `oplet_alloc(n)` returned stays the input buffer for any input of
/// up to `n` bytes until the host next calls `oplet_alloc`, so the host writes
/// each event there and makes one call per event instead of two.
pub const FEATURE_INPUT_REUSE: u32 = 1;

/// The features this SDK's exports provide (what its `oplet_abi_features` returns).
pub const ABI_FEATURES: u32 = FEATURE_INPUT_REUSE;

/// What a plugin returns for one call (of `oplet_handle` or `oplet_init`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Reply {
    /// The call succeeded and asks the host for these effects.
    Ok { effects: Vec<Effect> },
    /// The plugin refused the event; the host dead-letters it for this plugin.
    Err { message: String },
}

/// An error a plugin reports for one event (or its init): the host dead-letters
/// the event with this message. Any `std::error::Error` converts with `?`; use
/// [`Context`] to add what was being done, or to turn a `None` into an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl Error {
    pub fn new(message: impl Into<String>) -> Self {
        Error(message.into())
    }

    pub fn message(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(e: E) -> Self {
        Error(e.to_string())
    }
}

/// Adds what was being done to an error, or turns a `None` into one:
/// `change.id().context("the change has no _id")?`.
pub trait Context<T> {
    fn context(self, what: impl std::fmt::Display) -> Result<T>;
}

impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl std::fmt::Display) -> Result<T> {
        self.map_err(|e| Error(format!("{what}: {e}")))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl std::fmt::Display) -> Result<T> {
        self.ok_or_else(|| Error(what.to_string()))
    }
}

/// The bytes of `{"status": "ok", "effects": []}` (docs/abi.md §9), sent from a
/// static by the guest glue when a call asks for nothing.
#[doc(hidden)]
pub const EMPTY_OK_REPLY: &[u8] = &[
    0x82, 0xa6, b's', b't', b'a', b't', b'u', b's', 0xa2, b'o', b'k', 0xa7, b'e', b'f', b'f', b'e', b'c', b't', b's', 0x90,
];

/// The result type of plugin functions.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Encoding on the boundary: MessagePack with structs as maps (field names), so
/// any language's MessagePack library can read and write it.
pub mod codec {
    use serde::{de::DeserializeOwned, Serialize};

    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        rmp_serde::to_vec_named(value)
    }

    pub fn encode_into<T: Serialize + ?Sized>(
        buf: &mut Vec<u8>,
        value: &T,
    ) -> Result<(), rmp_serde::encode::Error> {
        value.serialize(&mut rmp_serde::Serializer::new(buf).with_struct_map())
    }

    pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }
}

#[cfg(feature = "macros")]
pub use oplet_sdk_macros::{handler, init};

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod guest;

/// Packs a guest pointer and length into the `u64` that `oplet_handle` returns:
/// pointer in the high 32 bits, length in the low 32 bits.
pub fn pack_ptr_len(ptr: u32, len: u32) -> u64 {
    ((ptr as u64) << 32) | len as u64
}

/// Inverse of [`pack_ptr_len`].
pub fn unpack_ptr_len(packed: u64) -> (u32, u32) {
    ((packed >> 32) as u32, packed as u32)
}

/// Writes a line to the host's log from plugin code (on native builds, to stderr,
/// so a plugin's unit tests can run without a host).
pub fn log(level: LogLevel, message: &str) {
    #[cfg(target_arch = "wasm32")]
    guest::log(level as u32, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

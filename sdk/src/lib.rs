//! `oplet-sdk`: the plugin ABI of Oplet, shared by the host and by plugins.
//!
//! A plugin is one function from an [`Event`] to a list of [`Effect`]s. The host
//! encodes the event as MessagePack, calls the plugin's `oplet_handle` export, and
//! decodes the [`Reply`]. The same types are compiled into the host and the guest,
//! so the two sides cannot drift apart; [`ABI_VERSION`] is checked at load.
//!
//! Writing a plugin (built for `wasm32-unknown-unknown`):
//!
//! ```ignore
//! use oplet_sdk::{handler, Effect, Event, Result};
//!
//! #[handler]
//! fn handle(event: &Event) -> Result<Vec<Effect>> {
//!     Ok(vec![Effect::log_info(format!("saw event {}", event.seq))])
//! }
//! ```
//!
//! The ABI itself (exports, imports, memory ownership, MessagePack schemas) is
//! documented in `docs/abi.md` so plugins can be written in any language.
//!
//! Plugin state: a plugin may keep state in statics between calls, but the host
//! replaces an instance that trapped, ran out of time or memory, and loads a new
//! instance on every hot reload: that state is then gone. Keep durable state in
//! effects (a database row, a cache key), not in memory.

mod effect;
mod event;
mod value;

pub use effect::{CapabilityKind, Effect, EmitTarget, LogLevel};
pub use event::{namespace_matches, Change, Event, EventBody, OperationType, SocketEvent};
pub use value::{Map, Value};

use serde::{Deserialize, Serialize};

/// Version of the binary interface. A module whose `oplet_abi_version` export
/// returns another number is refused at load.
pub const ABI_VERSION: u32 = 1;

/// What a plugin returns for one call (of `oplet_handle` or `oplet_init`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Reply {
    /// The call succeeded and asks the host for these effects.
    Ok { effects: Vec<Effect> },
    /// The plugin refused the event; the host dead-letters it for this plugin.
    Err { message: String },
}

/// An error a plugin reports for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl Error {
    pub fn new(message: impl Into<String>) -> Self {
        Error(message.into())
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

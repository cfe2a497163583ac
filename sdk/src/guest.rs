//! Guest side of the ABI, compiled only for `wasm32`: the exports' bodies that
//! `export_plugin!`, `#[handler]` and `#[init]` call, so authors never touch pointers.
//!
//! Memory: one input buffer per instance, handed out by `oplet_alloc` and reused
//! for every call (grown only when an event is larger, never zeroed); the event is
//! read in place. Only `oplet_alloc` moves it, which is what the exports'
//! `oplet_abi_features` promise (input reuse): the host then skips `oplet_alloc`
//! for an event that fits. One reply buffer, reused too, sized exactly for a large reply so
//! a 16 MB document is not held twice over by a doubling `Vec`.

use crate::{codec, Effect, Error, Event, EventView, Plugin, Reply, Value};
use std::cell::RefCell;
use std::io::Write;

thread_local! {
    static INPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static REPLY: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

#[link(wasm_import_module = "oplet")]
extern "C" {
    #[link_name = "log"]
    fn host_log(level: u32, ptr: *const u8, len: u32);
}

/// Writes a line to the host's log (0 error, 1 warn, 2 info, 3 debug, 4 trace).
pub fn log(level: u32, message: &str) {
    // SAFETY: the host reads `len` bytes at `ptr` from this module's memory during
    // the call; the slice outlives the call.
    unsafe { host_log(level, message.as_ptr(), message.len() as u32) }
}

fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            log(0, &format!("plugin panicked: {info}"));
        }));
    });
}

/// Body of the `oplet_alloc` export: the input buffer, at least `len` bytes.
pub fn alloc(len: u32) -> u32 {
    INPUT.with(|cell| {
        let mut buf = cell.borrow_mut();
        buf.clear();
        if buf.capacity() < len as usize {
            // Free the old buffer before taking the new one: the peak is one buffer.
            *buf = Vec::new();
            buf.reserve_exact(len as usize);
        }
        buf.as_mut_ptr() as u32
    })
}

/// Runs `f` on the `len` bytes the host wrote into the input buffer.
fn with_input<R>(ptr: u32, len: u32, f: impl FnOnce(&[u8]) -> crate::Result<R>) -> crate::Result<R> {
    INPUT.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.as_ptr() as u32 != ptr || buf.capacity() < len as usize {
            return Err(Error::new(format!(
                "the host passed a buffer (ptr {ptr:#x}, len {len}) that oplet_alloc did not return"
            )));
        }
        // SAFETY: the ABI: the host wrote `len` bytes at `ptr`, which is this
        // buffer, within its capacity.
        unsafe { buf.set_len(len as usize) };
        f(&buf)
    })
}

/// A writer that refuses to grow the buffer, so a reply that does not fit is
/// measured first and the buffer sized exactly.
struct NoGrow<'a>(&'a mut Vec<u8>);

impl Write for NoGrow<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.0.capacity() - self.0.len() < b.len() {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        self.0.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Count(usize);

impl Write for Count {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len();
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn encode_reply(buf: &mut Vec<u8>, r: &Reply) -> Result<(), rmp_serde::encode::Error> {
    buf.clear();
    if rmp_serde::encode::write_named(&mut NoGrow(buf), r).is_ok() {
        return Ok(());
    }
    let mut n = Count(0);
    rmp_serde::encode::write_named(&mut n, r)?;
    buf.clear();
    if buf.capacity() < n.0 {
        *buf = Vec::new();
        buf.reserve_exact(n.0.max(256));
    }
    rmp_serde::encode::write_named(buf, r)
}

fn reply(r: &Reply) -> u64 {
    if matches!(r, Reply::Ok { effects } if effects.is_empty()) {
        let b = crate::EMPTY_OK_REPLY;
        return crate::pack_ptr_len(b.as_ptr() as u32, b.len() as u32);
    }
    REPLY.with(|cell| {
        let mut buf = cell.borrow_mut();
        if let Err(e) = encode_reply(&mut buf, r) {
            buf.clear();
            let fallback = Reply::Err { message: format!("plugin could not encode its reply: {e}") };
            codec::encode_into(&mut buf, &fallback).expect("error reply encodes");
        }
        crate::pack_ptr_len(buf.as_ptr() as u32, buf.len() as u32)
    })
}

fn finish(r: crate::Result<Vec<Effect>>) -> u64 {
    match r {
        Ok(effects) => reply(&Reply::Ok { effects }),
        Err(e) => reply(&Reply::Err { message: e.0 }),
    }
}

/// Body of `oplet_handle` for `#[handler] fn(&Event)`: the whole event decoded
/// into owned values first.
pub fn handle(ptr: u32, len: u32, f: fn(&Event) -> crate::Result<Vec<Effect>>) -> u64 {
    install_panic_hook();
    finish(with_input(ptr, len, |bytes| {
        let event: Event =
            codec::decode(bytes).map_err(|e| Error::new(format!("plugin could not decode the event: {e}")))?;
        f(&event)
    }))
}

/// Body of `oplet_handle` for `#[handler] fn(&EventView)`: read in place.
pub fn handle_view(ptr: u32, len: u32, f: fn(&EventView<'_>) -> crate::Result<Vec<Effect>>) -> u64 {
    install_panic_hook();
    finish(with_input(ptr, len, |bytes| {
        let view =
            EventView::parse(bytes).map_err(|e| Error::new(format!("plugin could not read the event: {e}")))?;
        f(&view)
    }))
}

/// Body of the `oplet_init` export for `#[init]`.
pub fn init(ptr: u32, len: u32, f: fn(&Value) -> crate::Result<()>) -> u64 {
    install_panic_hook();
    finish(with_input(ptr, len, |bytes| {
        let config: Value =
            codec::decode(bytes).map_err(|e| Error::new(format!("plugin could not decode its config: {e}")))?;
        f(&config).map(|()| Vec::new())
    }))
}

/// Body of `oplet_init` for a [`Plugin`]: config through serde, then `new`.
pub fn plugin_init<P: Plugin>(slot: &RefCell<Option<P>>, ptr: u32, len: u32) -> u64 {
    install_panic_hook();
    // A fresh init replaces the old state first, so its memory is free for `new`.
    *slot.borrow_mut() = None;
    let made = with_input(ptr, len, |bytes| {
        let config: Value =
            codec::decode(bytes).map_err(|e| Error::new(format!("plugin could not decode its config: {e}")))?;
        P::from_config(&config)
    });
    finish(made.map(|p| {
        *slot.borrow_mut() = Some(p);
        Vec::new()
    }))
}

/// Body of `oplet_handle` for a [`Plugin`].
pub fn plugin_handle<P: Plugin>(slot: &RefCell<Option<P>>, ptr: u32, len: u32) -> u64 {
    install_panic_hook();
    finish(with_input(ptr, len, |bytes| {
        let view =
            EventView::parse(bytes).map_err(|e| Error::new(format!("plugin could not read the event: {e}")))?;
        let mut slot = slot.borrow_mut();
        let plugin = slot.as_mut().ok_or_else(|| Error::new("plugin has no state: oplet_init was not called"))?;
        plugin.handle(&view)
    }))
}

//! Guest side of the ABI, compiled only for `wasm32`: the exports' bodies that the
//! `#[handler]` and `#[init]` attributes call, so authors never touch pointers.
//!
//! Memory ownership: the host asks `oplet_alloc(len)` for an input buffer and
//! writes the MessagePack bytes there; `oplet_handle`/`oplet_init` take that buffer
//! back and free it. The reply lives in a buffer owned by the guest that stays
//! valid until the next call into the module; the host copies it out at once.

use crate::{codec, Effect, Event, Reply, Value};
use std::cell::RefCell;

thread_local! {
    static REPLY: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
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

/// Body of the `oplet_alloc` export.
pub fn alloc(len: u32) -> u32 {
    let buf = vec![0u8; len as usize].into_boxed_slice();
    Box::into_raw(buf) as *mut u8 as u32
}

fn take_input(ptr: u32, len: u32) -> Box<[u8]> {
    // SAFETY: `ptr`/`len` are exactly what `alloc` returned for this call (the ABI
    // contract), so this reclaims that boxed slice once.
    unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr as *mut u8, len as usize)) }
}

fn reply(r: &Reply) -> u64 {
    REPLY.with(|cell| {
        let mut buf = cell.borrow_mut();
        buf.clear();
        if let Err(e) = codec::encode_into(&mut buf, r) {
            buf.clear();
            let fallback = Reply::Err {
                message: format!("plugin could not encode its reply: {e}"),
            };
            codec::encode_into(&mut buf, &fallback).expect("error reply encodes");
        }
        crate::pack_ptr_len(buf.as_ptr() as u32, buf.len() as u32)
    })
}

/// Body of the `oplet_handle` export.
pub fn handle(ptr: u32, len: u32, f: fn(&Event) -> crate::Result<Vec<Effect>>) -> u64 {
    install_panic_hook();
    let input = take_input(ptr, len);
    let event: Event = match codec::decode(&input) {
        Ok(e) => e,
        Err(e) => {
            return reply(&Reply::Err {
                message: format!("plugin could not decode the event: {e}"),
            })
        }
    };
    drop(input);
    match f(&event) {
        Ok(effects) => reply(&Reply::Ok { effects }),
        Err(e) => reply(&Reply::Err { message: e.0 }),
    }
}

/// Body of the `oplet_init` export.
pub fn init(ptr: u32, len: u32, f: fn(&Value) -> crate::Result<()>) -> u64 {
    install_panic_hook();
    let input = take_input(ptr, len);
    let config: Value = match codec::decode(&input) {
        Ok(c) => c,
        Err(e) => {
            return reply(&Reply::Err {
                message: format!("plugin could not decode its config: {e}"),
            })
        }
    };
    match f(&config) {
        Ok(()) => reply(&Reply::Ok { effects: Vec::new() }),
        Err(e) => reply(&Reply::Err { message: e.0 }),
    }
}

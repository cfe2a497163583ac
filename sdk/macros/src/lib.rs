//! The `#[handler]` and `#[init]` attributes of `oplet-sdk`.
//!
//! Each keeps the annotated function as written and adds, on `wasm32` only, the
//! ABI exports that call it through `oplet_sdk::guest`. Plain token handling, no
//! `syn`: the only thing read from the item is the function's name.

use proc_macro::{Delimiter, Ident, TokenStream, TokenTree};

/// Whether the function's parameter list names `EventView` (the lazy handler
/// style) rather than `Event` (the owned one).
fn takes_view(item: &TokenStream) -> bool {
    let mut saw_fn = false;
    for tt in item.clone() {
        match tt {
            TokenTree::Ident(id) if id.to_string() == "fn" => saw_fn = true,
            TokenTree::Group(g) if saw_fn && g.delimiter() == Delimiter::Parenthesis => {
                return contains_ident(g.stream(), "EventView");
            }
            _ => {}
        }
    }
    false
}

fn contains_ident(stream: TokenStream, name: &str) -> bool {
    stream.into_iter().any(|tt| match tt {
        TokenTree::Ident(id) => id.to_string() == name,
        TokenTree::Group(g) => contains_ident(g.stream(), name),
        _ => false,
    })
}

fn fn_name(item: &TokenStream) -> Result<Ident, TokenStream> {
    let mut saw_fn = false;
    for tt in item.clone() {
        if let TokenTree::Ident(id) = tt {
            if saw_fn {
                return Ok(id);
            }
            if id.to_string() == "fn" {
                saw_fn = true;
            }
        }
    }
    Err(compile_error("oplet_sdk attributes go on a function: `fn handle(event: &Event) -> Result<Vec<Effect>>`"))
}

fn compile_error(msg: &str) -> TokenStream {
    format!("compile_error!({msg:?});").parse().expect("valid tokens")
}

fn with_exports(item: TokenStream, exports: String) -> TokenStream {
    let mut out = item;
    let extra: TokenStream = exports.parse().expect("generated exports parse");
    out.extend(extra);
    out
}

/// Marks `fn(&Event) -> oplet_sdk::Result<Vec<Effect>>` (the event decoded whole)
/// or `fn(&EventView) -> ...` (read lazily in place) as the plugin's handler and
/// generates the `oplet_abi_version`, `oplet_abi_features`, `oplet_alloc` and
/// `oplet_handle` exports.
#[proc_macro_attribute]
pub fn handler(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return compile_error("#[handler] takes no arguments");
    }
    let name = match fn_name(&item) {
        Ok(n) => n,
        Err(e) => return e,
    };
    let (glue, event_type) = if takes_view(&item) {
        ("handle_view", "::oplet_sdk::EventView<'_>")
    } else {
        ("handle", "::oplet_sdk::Event")
    };
    let exports = format!(
        r#"
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        const _: () = {{
            #[unsafe(no_mangle)]
            pub extern "C" fn oplet_abi_version() -> u32 {{ ::oplet_sdk::ABI_VERSION }}
            #[unsafe(no_mangle)]
            pub extern "C" fn oplet_abi_features() -> u32 {{ ::oplet_sdk::ABI_FEATURES }}
            #[unsafe(no_mangle)]
            pub extern "C" fn oplet_alloc(len: u32) -> u32 {{ ::oplet_sdk::guest::alloc(len) }}
            #[unsafe(no_mangle)]
            pub extern "C" fn oplet_handle(ptr: u32, len: u32) -> u64 {{
                ::oplet_sdk::guest::{glue}(ptr, len, {name})
            }}
        }};
        // Natively (unit tests) there are no exports: still check the signature
        // and count the function as used.
        #[cfg(not(target_arch = "wasm32"))]
        const _: fn(&{event_type}) -> ::oplet_sdk::Result<::std::vec::Vec<::oplet_sdk::Effect>> = {name};
        "#
    );
    with_exports(item, exports)
}

/// Marks `fn(&Value) -> oplet_sdk::Result<()>` as the plugin's init, called once
/// per instance with the `[config]` table of its manifest (`oplet_init` export).
#[proc_macro_attribute]
pub fn init(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return compile_error("#[init] takes no arguments");
    }
    let name = match fn_name(&item) {
        Ok(n) => n,
        Err(e) => return e,
    };
    let exports = format!(
        r#"
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        const _: () = {{
            #[unsafe(no_mangle)]
            pub extern "C" fn oplet_init(ptr: u32, len: u32) -> u64 {{
                ::oplet_sdk::guest::init(ptr, len, {name})
            }}
        }};
        #[cfg(not(target_arch = "wasm32"))]
        const _: fn(&::oplet_sdk::Value) -> ::oplet_sdk::Result<()> = {name};
        "#
    );
    with_exports(item, exports)
}

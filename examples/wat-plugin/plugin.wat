;; A complete Oplet plugin written by hand in WebAssembly text, from docs/abi.md
;; alone: no SDK, no MessagePack library. Whatever the event, it asks the host for
;; one log line, "hello from WAT".
;;
;; Build: any WAT assembler, e.g. `wasm-tools parse plugin.wat -o hello-wat.wasm`
;; (or the `wat` crate), then put hello-wat.wasm and hello-wat.toml (beside this
;; file) in the plugin folder. tests/wat_plugin.rs of examples/hello-plugin checks
;; the reply bytes below against the SDK.
(module
  ;; Linear memory, exported so the host can write events and read replies.
  ;; Page 0 holds the constant reply (offset 16); the heap starts at 1024.
  (memory (export "memory") 1)

  (global $heap_base i32 (i32.const 1024))
  (global $next (mut i32) (i32.const 1024))

  ;; The ABI this module speaks; the host refuses any other number.
  (func (export "oplet_abi_version") (result i32)
    (i32.const 1))

  ;; The host calls this for a buffer of `len` bytes, then writes the event there.
  ;; A bump allocator: hand out the next `len` bytes, growing memory when needed.
  (func (export "oplet_alloc") (param $len i32) (result i32)
    (local $ptr i32)
    (local $end i32)
    (local.set $ptr (global.get $next))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then
        ;; grow to ceil(end / 64 KiB) pages; trap if the host refuses
        (if (i32.eq
              (memory.grow
                (i32.sub (i32.shr_u (i32.add (local.get $end) (i32.const 65535)) (i32.const 16))
                         (memory.size)))
              (i32.const -1))
          (then unreachable))))
    (global.set $next (local.get $end))
    (local.get $ptr))

  ;; One event: the input at ($ptr, $len) is ours now. We never read it, so we free
  ;; it (and everything else) by resetting the bump pointer, and return the reply
  ;; packed as (pointer << 32) | length: pointer 16 (0x10), length 70 (0x46).
  ;; The reply is constant, so it stays valid until the next call, as required.
  (func (export "oplet_handle") (param $ptr i32) (param $len i32) (result i64)
    (global.set $next (global.get $heap_base))
    (i64.const 0x0000001000000046))

  ;; The reply, MessagePack, 70 bytes:
  ;; {"status": "ok", "effects": [{"kind": "log", "data": {"level": "info", "message": "hello from WAT"}}]}
  ;; fixmap = 0x80 | entries, fixarray = 0x90 | items, fixstr = 0xa0 | byte length.
  (data (i32.const 16)
    "\82"                        ;; Reply: map of 2 entries
    "\a6status"  "\a2ok"         ;;   "status": "ok"
    "\a7effects" "\91"           ;;   "effects": array of 1
    "\82"                        ;;     Effect: map of 2 entries
    "\a4kind"    "\a3log"        ;;       "kind": "log"
    "\a4data"    "\82"           ;;       "data": map of 2 entries
    "\a5level"   "\a4info"       ;;         "level": "info"
    "\a7message"                 ;;         "message":
    "\aehello from WAT"))        ;;           str of 14 bytes

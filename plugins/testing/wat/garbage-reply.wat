;; garbage-reply: every export is right, but oplet_handle replies with bytes that
;; are not MessagePack of a Reply (0xc1 is the one byte MessagePack never uses).
;; Tests that the host fails the event for this plugin with a decode error that
;; names the plugin, and neither crashes nor applies anything.
(module
  (memory (export "memory") 1)
  ;; Bump allocator; every call of oplet_handle frees everything (it owns the input).
  (global $heap_base i32 (i32.const 1024))
  (global $next (mut i32) (i32.const 1024))

  (func (export "oplet_abi_version") (result i32)
    (i32.const 1))

  (func (export "oplet_alloc") (param $len i32) (result i32)
    (local $ptr i32)
    (local $end i32)
    (local.set $ptr (global.get $next))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    ;; Grow linear memory to ceil(end / 64 KiB) pages when needed.
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.eq
              (memory.grow
                (i32.sub (i32.shr_u (i32.add (local.get $end) (i32.const 65535)) (i32.const 16))
                         (memory.size)))
              (i32.const -1))
          (then unreachable))))
    (global.set $next (local.get $end))
    (local.get $ptr))

  ;; Returns the 16 bytes at offset 16: (16 << 32) | 16.
  (func (export "oplet_handle") (param $ptr i32) (param $len i32) (result i64)
    (global.set $next (global.get $heap_base))
    (i64.const 0x0000001000000010))

  (data (i32.const 16) "\c1 not a reply! \c1"))

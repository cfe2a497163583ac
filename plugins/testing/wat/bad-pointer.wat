;; bad-pointer: every export is right, but oplet_handle returns a reply pointer and
;; length outside linear memory (ptr 0xfffffff0, len 0x20: past the one 64 KiB page,
;; and ptr + len overflows 32 bits). Tests that the host bounds-checks the reply and
;; fails the event for this plugin, rather than reading out of bounds or panicking.
(module
  (memory (export "memory") 1 1)
  (global $heap_base i32 (i32.const 1024))
  (global $next (mut i32) (i32.const 1024))

  (func (export "oplet_abi_version") (result i32)
    (i32.const 1))

  ;; Memory is fixed at one page: inputs larger than 63 KiB trap here.
  (func (export "oplet_alloc") (param $len i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $next))
    (global.set $next (i32.add (local.get $ptr) (local.get $len)))
    (if (i32.gt_u (global.get $next) (i32.const 65536))
      (then unreachable))
    (local.get $ptr))

  (func (export "oplet_handle") (param $ptr i32) (param $len i32) (result i64)
    (global.set $next (global.get $heap_base))
    (i64.const 0xfffffff000000020)))

;; wrong-abi: every export is present and oplet_handle even answers correctly, but
;; oplet_abi_version returns 999. Tests that the host refuses the module at load,
;; saying which ABI version it found and which it supports (1).
(module
  (memory (export "memory") 1)
  (global $heap_base i32 (i32.const 1024))
  (global $next (mut i32) (i32.const 1024))

  (func (export "oplet_abi_version") (result i32)
    (i32.const 999))

  (func (export "oplet_alloc") (param $len i32) (result i32)
    (local $ptr i32)
    (local $end i32)
    (local.set $ptr (global.get $next))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
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

  ;; {"status": "ok", "effects": []}: 20 bytes at offset 16.
  (func (export "oplet_handle") (param $ptr i32) (param $len i32) (result i64)
    (global.set $next (global.get $heap_base))
    (i64.const 0x0000001000000014))

  (data (i32.const 16)
    "\82"                          ;; map of 2 entries
    "\a6status" "\a2ok"            ;; "status": "ok"
    "\a7effects" "\90"))           ;; "effects": []

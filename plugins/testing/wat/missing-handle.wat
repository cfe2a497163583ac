;; missing-handle: exports memory, oplet_abi_version (1) and oplet_alloc, but no
;; oplet_handle. Tests that the host refuses the module at load (and on hot reload
;; keeps the old version running), with a message naming the missing export.
(module
  (memory (export "memory") 1)
  (global $next (mut i32) (i32.const 1024))

  (func (export "oplet_abi_version") (result i32)
    (i32.const 1))

  ;; Never grows memory: the host must refuse this module before calling it.
  (func (export "oplet_alloc") (param $len i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $next))
    (global.set $next (i32.add (local.get $ptr) (local.get $len)))
    (local.get $ptr)))

// The ABI v1 glue (docs/abi.md §2–4): the exports the host calls, the `oplet.log`
// import, and the abort handler that explains a trap. Build plugins with
// `--use abort=<pdk>/assembly/abi/opletAbort` so no `env.abort` import is needed
// (the host refuses any import but `oplet.log`).

import { Event, Val } from "./event";
import { Effect } from "./effect";
import { Writer } from "./msgpack";

@external("oplet", "log")
declare function hostLog(level: u32, ptr: usize, len: usize): void;

/** Writes a line to the host's log (0 error … 4 trace). */
export function log(level: u32, message: string): void {
  const bytes = String.UTF8.encode(message);
  hostLog(level, changetype<usize>(bytes), <usize>bytes.byteLength);
}

let eventHandler: ((e: Event) => Effect[]) | null = null;
let initHandler: ((config: Val) => void) | null = null;
let failure: string | null = null;
// The last input and reply stay reachable (so the GC keeps them) until the next call.
let input: ArrayBuffer = new ArrayBuffer(0);
const reply: Writer = new Writer(1024);

/** Registers the function that handles each event. */
export function onEvent(handler: (e: Event) => Effect[]): void { eventHandler = handler; }

/** Registers the function that receives the manifest's [config] once per instance. */
export function onInit(handler: (config: Val) => void): void { initHandler = handler; }

/**
 * Refuses the current event (or the config, during init): the host dead-letters the
 * event for this plugin with `message`. Effects returned with it are ignored.
 */
export function fail(message: string): void { failure = message; }

/** The host traps a plugin that aborts; say why at error level first (§3). */
export function opletAbort(message: string | null, file: string | null, line: u32, column: u32): void {
  const m = message == null ? "abort" : message;
  const at = file == null ? "" : " at " + file + ":" + line.toString() + ":" + column.toString();
  log(0, "plugin aborted: " + m + at);
  unreachable();
}

export function oplet_abi_version(): u32 { return 1; }

export function oplet_alloc(len: u32): usize {
  // Reuse the last input buffer when it is big enough (no fresh zeroed memory per event).
  if (<u32>input.byteLength < len) input = new ArrayBuffer(<i32>len);
  return changetype<usize>(input);
}

function finish(effects: Effect[] | null): u64 {
  reply.clear();
  const f = failure;
  if (f != null) {
    reply.mapLen(2);
    reply.str("status"); reply.str("err");
    reply.str("message"); reply.str(f);
  } else {
    reply.mapLen(2);
    reply.str("status"); reply.str("ok");
    reply.str("effects");
    const n = effects == null ? 0 : effects.length;
    reply.arrayLen(<u32>n);
    for (let i = 0; i < n; i++) {
      const e = (<Effect[]>effects)[i];
      reply.raw(e.w.ptr(), e.w.len);
    }
  }
  failure = null;
  // `--runtime minimal` frees only when asked: everything the call built is garbage
  // now (the reply and the input buffer are globals), so collect once per call.
  if (ASC_RUNTIME == 1) __collect();
  return (<u64>reply.ptr() << 32) | <u64>reply.len;
}

export function oplet_handle(ptr: usize, len: u32): u64 {
  failure = null;
  const h = eventHandler;
  if (h == null) return finish([]);
  const effects = h(Event.read(ptr, <usize>len));
  return finish(effects);
}

export function oplet_init(ptr: usize, len: u32): u64 {
  failure = null;
  const h = initHandler;
  if (h != null) h(new Val(ptr, ptr + <usize>len));
  return finish([]);
}

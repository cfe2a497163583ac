// A test plugin in AssemblyScript that misbehaves on request, so the tests can see
// an AssemblyScript plugin fail alone and with its reason, like the Rust `faulty`
// plugin: the document's `do` field says what to do (trap, fail, loop, grow, ok).

export * from "../../../pdk/assemblyscript/assembly/abi";
import { onEvent, fail, Event, Effect, Record, LogLevel } from "../../../pdk/assemblyscript/assembly/index";

let hoard = new Array<ArrayBuffer>();

onEvent((e: Event): Effect[] => {
  const c = e.change;
  if (c == null) return [];
  const what = c.field("do");
  const action = what == null ? "ok" : what.toKeyString();
  if (action == "trap") throw new Error("asked to trap");
  if (action == "fail") { fail("asked to fail"); return []; }
  if (action == "loop") { let i: i64 = 0; while (i >= 0) i++; }
  if (action == "grow") { while (true) hoard.push(new ArrayBuffer(1 << 20)); }
  return [
    Effect.audit(new Record().str("action", action).val("n", c.id())),
    Effect.log(LogLevel.Debug, "handled " + e.id),
  ];
});

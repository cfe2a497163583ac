// paid-orders, in AssemblyScript: an audit record for each order whose status
// becomes "paid" (the README's example, written with the Oplet AssemblyScript PDK).
// It reads three fields of the event lazily and copies the order's _id as bytes.

export * from "../../../pdk/assemblyscript/assembly/abi";
import { onEvent, onInit, fail, Event, Effect, Record, Val } from "../../../pdk/assemblyscript/assembly/index";

let paidStatus = "paid";

onInit((config: Val): void => {
  const s = config.get("paid_status");
  if (s != null) {
    const text = s.asString();
    if (text == null) { fail("config paid_status must be a string"); return; }
    paidStatus = text;
  }
});

onEvent((e: Event): Effect[] => {
  const effects = new Array<Effect>();
  const c = e.change;
  if (c == null) return effects;
  const status = c.field("status");
  if (status == null || !status.equalsString(paidStatus)) return effects;
  if (c.field("total") != null && !(<Val>c.field("total")).isMap() && (<Val>c.field("total")).asFloat() < 0) {
    fail("order " + (c.id() == null ? "?" : (<Val>c.id()).toKeyString()) + " has a negative total");
    return effects;
  }
  const record = new Record()
    .str("what", "order paid")
    .val("order", c.id())
    .val("total", c.field("total"))
    .str("ns", c.namespace())
    .int("seq", <i64>e.seq);
  effects.push(Effect.audit(record));
  return effects;
});

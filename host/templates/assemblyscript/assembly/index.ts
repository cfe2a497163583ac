// {{name}}: an Oplet plugin in AssemblyScript. On every change to an order it
// drops the order's cached copy, and when the order becomes paid it writes an
// audit record. Edit the onEvent handler; `npm run build && npm test` checks it
// against expected.jsonl (see README.md).

// The ABI exports the host calls (oplet_abi_version, oplet_alloc, oplet_init, oplet_handle).
export * from "@oplet/pdk/assembly/abi";
import { onEvent, onInit, fail, Event, Effect, Record, Val } from "@oplet/pdk/assembly/index";

// The manifest's [config], read once per instance (the host replaces an instance
// after a trap or a reload, so module globals start over then).
let paidStatus = "paid";
let cachePrefix = "order:";

onInit((config: Val): void => {
  const paid = config.get("paid_status");
  if (paid != null) {
    const s = paid.asString();
    // fail() during init refuses the plugin at load with this message: say what to fix.
    if (s == null) { fail("config.paid_status must be a string"); return; }
    paidStatus = s;
  }
  const prefix = config.get("cache_prefix");
  if (prefix != null) {
    const s = prefix.asString();
    if (s == null) { fail("config.cache_prefix must be a string"); return; }
    cachePrefix = s;
  }
});

// Once per event the manifest subscribes to. No I/O here: return effects, the host
// applies them (if the manifest asks for them and the host grants them).
onEvent((e: Event): Effect[] => {
  const effects = new Array<Effect>();
  const c = e.change;
  if (c == null) return effects;   // changes only; a newer host may send other kinds
  const id = c.id();
  // `_id` is usually an ObjectId, {"$oid": "65a1..."}: toKeyString() gives its hex.
  const order = id == null ? "" : id.toKeyString();
  effects.push(Effect.cacheDelete([cachePrefix + order]));

  // Paid now: a new or replaced order that says so, or an update that set the
  // status (an update of another field of an order paid long ago is not audited again).
  let status: Val | null = null;
  if (c.op == "insert" || c.op == "replace") status = c.fullDocument == null ? null : (<Val>c.fullDocument).get("status");
  else if (c.op == "update") status = c.updated("status");
  if (status != null && status.equalsString(paidStatus)) {
    // The host keys audit records by event id: a replayed event is not recorded twice.
    effects.push(Effect.audit(new Record().str("order", order).val("total", c.field("total"))));
  }
  return effects;
});

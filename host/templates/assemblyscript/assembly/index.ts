// {{name}}: an Oplet plugin in AssemblyScript. On every change to an order it
// writes a line in the host's log, and when the order becomes paid it writes an
// audit record: both work on a host with no Redis or PostgreSQL configured.
// Edit the onEvent handler; `npm run build && npm test` checks it against
// expected.jsonl (see README.md).

// The ABI exports the host calls (oplet_abi_version, oplet_alloc, oplet_init, oplet_handle).
export * from "@oplet/pdk/assembly/abi";
import { onEvent, onInit, fail, Event, Effect, LogLevel, Record, Val } from "@oplet/pdk/assembly/index";

// The manifest's [config], read once per instance (the host replaces an instance
// after a trap or a reload, so module globals start over then).
let paidStatus = "paid";

onInit((config: Val): void => {
  const paid = config.get("paid_status");
  if (paid != null) {
    const s = paid.asString();
    // fail() during init refuses the plugin at load with this message: say what to fix.
    if (s == null) { fail("config.paid_status must be a string"); return; }
    paidStatus = s;
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
  // A line in the host's log, naming this plugin and the event: it needs no
  // capability and no service, so it shows the plugin at work on any host.
  effects.push(Effect.log(LogLevel.Info, "order " + order + ": " + c.op));
  // On a host with [redis], drop the order's cached copy too: ask for it in the
  // manifest (cache_prefixes = ["order:"]) and have the host grant it. Without
  // [redis] the host dead-letters cache deletes.
  // effects.push(Effect.cacheDelete(["order:" + order]));

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

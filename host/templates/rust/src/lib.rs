//! {{name}}: an Oplet plugin. On every change to an order it writes a line in the
//! host's log, and when the order becomes paid it writes an audit record: both work
//! on a host with no Redis or PostgreSQL configured.
//! Edit `handle`; `cargo test` runs it natively, `oplet plugin test ... --expect
//! expected.jsonl` runs the built module as the host would (see README.md).

use oplet_sdk::{ChangeView, Effect, EventView, Plugin, RawValue, Result};
use serde::{Deserialize, Serialize};

/// The manifest's `[config]` table, read through serde: a typo in a key or a
/// wrong type refuses the plugin at load, naming the key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The `status` value that means "paid".
    pub paid_status: String,
}

/// One instance's state. The host replaces the instance after a trap or a reload
/// (calling `new` again), so keep only what `new` can rebuild here.
pub struct {{type}} {
    config: Config,
}

/// The audit record: it borrows the total from the event's bytes, no copy.
#[derive(Serialize)]
struct Paid<'a> {
    order: String,
    total: Option<RawValue<'a>>,
}

impl Plugin for {{type}} {
    type Config = Config;

    /// Once per instance. An error refuses the plugin at load: say what to fix.
    fn new(config: Config) -> Result<Self> {
        Ok({{type}} { config })
    }

    /// Once per event the manifest subscribes to. No I/O here: return effects,
    /// the host applies them (if the manifest asks for them and the host grants them).
    fn handle(&mut self, event: &EventView) -> Result<Vec<Effect>> {
        // Changes only; a newer host may send kinds this plugin does not know.
        let Some(change) = event.change() else { return Ok(vec![]) };
        // `_id` is usually an ObjectId, {"$oid": "65a1..."}: `to_key_string` gives its hex.
        let order = change.id().map(|id| id.to_key_string()).unwrap_or_default();

        // A line in the host's log, naming this plugin and the event: it needs no
        // capability and no service, so it shows the plugin at work on any host.
        let mut effects = vec![Effect::log_info(format!("order {order}: {}", change.op()))];
        // On a host with `[redis]`, drop the order's cached copy too: ask for it in
        // the manifest (`cache_prefixes = ["order:"]`) and have the host grant it.
        // Without `[redis]` the host dead-letters cache deletes.
        // effects.push(Effect::cache_delete([format!("order:{order}")]));
        if became_paid(change, &self.config.paid_status) {
            // The host keys audit records by event id: a replayed event is not recorded twice.
            effects.push(Effect::audit(&Paid { order, total: change.field("total") })?);
        }
        Ok(effects)
    }
}

oplet_sdk::export_plugin!({{type}});

/// Whether this change is the one that set the order's status to `paid`: a new
/// or replaced order that says so, or an update that set it (an update of another
/// field of an order paid long ago must not audit it again).
fn became_paid(change: &ChangeView, paid: &str) -> bool {
    let status = match change.op() {
        "insert" | "replace" => change.full_document().and_then(|d| d.get_key("status")),
        "update" => change.updated_fields().and_then(|u| u.get("status")),
        _ => None,
    };
    status.and_then(|s| s.as_str()) == Some(paid)
}

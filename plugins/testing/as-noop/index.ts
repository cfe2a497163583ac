// as-noop: an AssemblyScript plugin that asks for nothing, for the per-event bench
// (benches/as_plugin.rs) beside the Rust `noop`: what the PDK costs per call when
// the handler does no work (read the header, reply with no effects).

export * from "../../../pdk/assemblyscript/assembly/abi";
import { onEvent, Event, Effect } from "../../../pdk/assemblyscript/assembly/index";

onEvent((e: Event): Effect[] => {
  return new Array<Effect>();
});

// as-noop, reply only: the PDK's exports and reply writer, but an oplet_handle that
// never reads the event. benches/as_plugin.rs sets it beside as-noop to split the
// AS no-op's cost into reading the event (Event.read) and the call with its reply.

export { oplet_abi_version, oplet_alloc, oplet_init, opletAbort } from "../../../pdk/assemblyscript/assembly/abi";
import { Writer } from "../../../pdk/assemblyscript/assembly/msgpack";

const reply = new Writer(64);

export function oplet_handle(ptr: usize, len: u32): u64 {
  reply.clear();
  reply.mapLen(2);
  reply.str("status"); reply.str("ok");
  reply.str("effects"); reply.arrayLen(0);
  return (<u64>reply.ptr() << 32) | <u64>reply.len;
}

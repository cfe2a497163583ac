// The Oplet plugin development kit for AssemblyScript: the ABI v1 exports
// (docs/abi.md §2–4), handlers registered with `onEvent` / `onInit`, lazy events
// and effects. A plugin's entry file re-exports the ABI and registers a handler:
//
//   export * from "<pdk>/assembly/abi";
//   import { onEvent, Event, Effect } from "<pdk>/assembly/index";
//   onEvent((e: Event): Effect[] => [Effect.log(LogLevel.Info, "seq " + e.seq.toString())]);

export { Kind, Reader, Writer } from "./msgpack";
export { Val, Event, Change, SocketEvent } from "./event";
export { Effect, Record, LogLevel } from "./effect";
export { onEvent, onInit, fail, log } from "./abi";

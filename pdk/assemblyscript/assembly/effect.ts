// Effects a plugin asks the host for (docs/abi.md §7.6), written straight to
// MessagePack: `Record` builds a map (a row, a payload, an audit record) field by
// field, and can copy a value of the event whole without decoding it.

import { Writer } from "./msgpack";
import { Val } from "./event";

/** A map under construction: `new Record().str("op", c.op).val("key", c.key)`. */
export class Record {
  w: Writer = new Writer(128);
  count: u32 = 0;

  private key(k: string): Writer { this.count++; this.w.str(k); return this.w; }

  str(k: string, v: string): Record { this.key(k).str(v); return this; }
  int(k: string, v: i64): Record { this.key(k).int(v); return this; }
  float(k: string, v: f64): Record { this.key(k).float(v); return this; }
  bool(k: string, v: bool): Record { this.key(k).bool(v); return this; }
  nil(k: string): Record { this.key(k).nil(); return this; }
  /** A value of the event (or null → nil), copied as its bytes. */
  val(k: string, v: Val | null): Record {
    const w = this.key(k);
    if (v == null) w.nil();
    else w.raw(v.pos, <i32>(v.valueEnd() - v.pos));
    return this;
  }
  /** A nested map. */
  record(k: string, r: Record): Record { r.writeTo(this.key(k)); return this; }
  /** An array of strings. */
  strings(k: string, items: string[]): Record {
    const w = this.key(k);
    w.arrayLen(<u32>items.length);
    for (let i = 0; i < items.length; i++) w.str(items[i]);
    return this;
  }

  writeTo(w: Writer): void {
    w.mapLen(this.count);
    w.raw(this.w.ptr(), this.w.len);
  }
}

export enum LogLevel { Error = 0, Warn = 1, Info = 2, Debug = 3, Trace = 4 }
const LEVELS: string[] = ["error", "warn", "info", "debug", "trace"];

/** One effect, already encoded as `{"kind": K, "data": {...}}`. */
export class Effect {
  w: Writer = new Writer(64);

  private static of(kind: string, fields: u32): Effect {
    const e = new Effect();
    e.w.mapLen(2);
    e.w.str("kind");
    e.w.str(kind);
    e.w.str("data");
    e.w.mapLen(fields);
    return e;
  }

  /** Delete cache keys (capability `cache_prefixes`). */
  static cacheDelete(keys: string[]): Effect {
    const e = Effect.of("cache_delete", 1);
    e.w.str("keys");
    e.w.arrayLen(<u32>keys.length);
    for (let i = 0; i < keys.length; i++) e.w.str(keys[i]);
    return e;
  }

  /** Insert or update a row by its key columns (capability `tables`). */
  static rowUpsert(table: string, keyColumns: string[], values: Record): Effect {
    const e = Effect.of("row_upsert", 3);
    e.w.str("table"); e.w.str(table);
    e.w.str("key"); e.w.arrayLen(<u32>keyColumns.length);
    for (let i = 0; i < keyColumns.length; i++) e.w.str(keyColumns[i]);
    e.w.str("values"); values.writeTo(e.w);
    return e;
  }

  /** Delete the rows whose columns equal `key` (capability `tables`). */
  static rowDelete(table: string, key: Record): Effect {
    const e = Effect.of("row_delete", 2);
    e.w.str("table"); e.w.str(table);
    e.w.str("key"); key.writeTo(e.w);
    return e;
  }

  /** Append a record to the audit sink (capability `audit`). */
  static audit(record: Record): Effect {
    const e = Effect.of("audit", 1);
    e.w.str("record"); record.writeTo(e.w);
    return e;
  }

  /** Send a Socket.IO event to one client (capability `emit`). */
  static emitToClient(client: string, event: string, payload: Record | null): Effect {
    return Effect.emit("client", client, event, payload);
  }

  /** Send a Socket.IO event to a room (capability `emit`). */
  static emitToRoom(room: string, event: string, payload: Record | null): Effect {
    return Effect.emit("room", room, event, payload);
  }

  private static emit(targetKind: string, target: string, event: string, payload: Record | null): Effect {
    const e = Effect.of("emit", 3);
    e.w.str("to"); e.w.mapLen(1); e.w.str(targetKind); e.w.str(target);
    e.w.str("event"); e.w.str(event);
    e.w.str("payload");
    if (payload == null) e.w.nil(); else payload.writeTo(e.w);
    return e;
  }

  /** A line in the host log, attributed to the plugin and the event. */
  static log(level: LogLevel, message: string): Effect {
    const e = Effect.of("log", 2);
    e.w.str("level"); e.w.str(LEVELS[<i32>level]);
    e.w.str("message"); e.w.str(message);
    return e;
  }
}

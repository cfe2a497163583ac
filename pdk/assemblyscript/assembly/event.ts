// The event a plugin receives (docs/abi.md §7.1–7.4), read lazily: `Event` finds
// where each header field and the body are, once; `Val` is a position in the
// input bytes that decodes only what the plugin asks for (`get("a.b")`,
// `asString()`), so a plugin pays for the fields it touches, not the document.

import { Kind, Reader } from "./msgpack";

/** A value inside the event's bytes (or any MessagePack bytes). */
export class Val {
  constructor(public pos: usize, public end: usize) {}

  reader(): Reader { return new Reader(this.pos, this.end); }

  kind(): Kind { return this.reader().kind(); }
  isNull(): bool { return this.kind() == Kind.Nil; }
  isString(): bool { return this.kind() == Kind.Str; }
  isMap(): bool { return this.kind() == Kind.Map; }
  isArray(): bool { return this.kind() == Kind.Array; }

  /** The string, or null when this is not a string. */
  asString(): string | null {
    return this.isString() ? this.reader().str() : null;
  }

  /** Whether this is the string `s`, without decoding it. */
  equalsString(s: string): bool {
    if (!this.isString()) return false;
    const r = this.reader();
    // An ASCII `s` (the usual case) is compared char by char: no UTF-8 copy of it.
    if (isAscii(s)) { r.key(); return r.keyIs(s); }
    const bytes = String.UTF8.encode(s);
    return r.strEquals(changetype<usize>(bytes), bytes.byteLength);
  }

  /** An integer (a float with no fraction counts), else `fallback`. */
  asInt(fallback: i64 = 0): i64 {
    const k = this.kind();
    if (k == Kind.Int) return this.reader().int();
    if (k == Kind.Float) {
      const f = this.reader().float();
      if (Math.floor(f) == f && isFinite(f)) return <i64>f;
    }
    return fallback;
  }

  asFloat(fallback: f64 = NaN): f64 {
    const k = this.kind();
    return k == Kind.Int || k == Kind.Float ? this.reader().float() : fallback;
  }

  /** Strict boolean: only true/false; else `fallback`. */
  asBool(fallback: bool = false): bool {
    return this.kind() == Kind.Bool ? this.reader().bool() : fallback;
  }

  /** Lenient truth as MongoDB-compatible servers store it: true, or a non-zero number. */
  isTruthy(): bool {
    const k = this.kind();
    if (k == Kind.Bool) return this.reader().bool();
    if (k == Kind.Int || k == Kind.Float) return this.reader().float() != 0;
    return false;
  }

  /** The field `key` of a map, or null. */
  get(key: string): Val | null {
    if (!this.isMap()) return null;
    if (isAscii(key)) return this.findAscii(key);
    const bytes = String.UTF8.encode(key);
    return this.find(changetype<usize>(bytes), bytes.byteLength);
  }

  /** `find` for an ASCII key: compared with each key's bytes, no UTF-8 copy of it. */
  private findAscii(key: string): Val | null {
    const r = this.reader();
    const n = r.mapLen();
    for (let i: u32 = 0; i < n; i++) {
      if (r.kind() == Kind.Str) {
        r.key();
        if (r.keyIs(key)) return new Val(r.pos, this.end);
      } else {
        r.skip();
      }
      r.skip();
    }
    return null;
  }

  private find(key: usize, keyLen: usize): Val | null {
    const r = this.reader();
    const n = r.mapLen();
    for (let i: u32 = 0; i < n; i++) {
      if (r.kind() == Kind.Str) {
        if (r.strEquals(key, keyLen)) return new Val(r.pos, this.end);
      } else {
        r.skip();
      }
      r.skip();
    }
    return null;
  }

  /** Item `i` of an array, or null. */
  at(i: u32): Val | null {
    if (!this.isArray()) return null;
    const r = this.reader();
    const n = r.arrayLen();
    if (i >= n) return null;
    for (let j: u32 = 0; j < i; j++) r.skip();
    return new Val(r.pos, this.end);
  }

  /** A nested value by dotted path: "profile.name", "items.0.sku". */
  path(path: string): Val | null {
    // One segment (the usual `field("status")`): no split, no array of parts.
    if (path.indexOf(".") < 0 && this.isMap()) return this.get(path);
    let cur: Val | null = this;
    const parts = path.split(".");
    for (let i = 0; i < parts.length && cur != null; i++) {
      const part = parts[i];
      const c: Val = cur;
      if (c.isMap()) cur = c.get(part);
      else if (c.isArray()) {
        const n = I32.parseInt(part);
        cur = isNaN(n) || n < 0 ? null : c.at(<u32>n);
      } else cur = null;
    }
    return cur;
  }

  /** The number of entries of a map or items of an array; 0 otherwise. */
  len(): u32 {
    const k = this.kind();
    if (k == Kind.Map) return this.reader().mapLen();
    if (k == Kind.Array) return this.reader().arrayLen();
    return 0;
  }

  /** The keys of a map, in order. */
  keys(): string[] {
    const out = new Array<string>();
    if (!this.isMap()) return out;
    const r = this.reader();
    const n = r.mapLen();
    for (let i: u32 = 0; i < n; i++) {
      if (r.kind() == Kind.Str) out.push(r.str()); else r.skip();
      r.skip();
    }
    return out;
  }

  /** The end of this value's bytes (for copying it whole into an effect). */
  valueEnd(): usize {
    const r = this.reader();
    r.skip();
    return r.pos;
  }

  /**
   * The value as text for keys and messages, as the Rust SDK's `to_key_string`:
   * strings as they are, numbers and booleans printed, {"$oid": h} as h,
   * {"$numberDecimal": d} as d, {"$date": ms} as ms; anything else as JSON.
   */
  toKeyString(): string {
    const k = this.kind();
    if (k == Kind.Str) return this.reader().str();
    if (k == Kind.Int) return this.reader().int().toString();
    if (k == Kind.Float) return this.reader().float().toString();
    if (k == Kind.Bool) return this.reader().bool() ? "true" : "false";
    if (k == Kind.Map && this.len() == 1) {
      const keys = this.keys();
      const key = keys[0];
      if (key == "$oid" || key == "$numberDecimal" || key == "$date") {
        const inner = this.get(key);
        if (inner != null) return inner.toKeyString();
      }
    }
    return this.toJson();
  }

  /** Compact JSON of the value (maps keep their order). */
  toJson(): string {
    const parts = new Array<string>();
    json(this.reader(), parts, 0);
    return parts.join("");
  }
}

function json(r: Reader, out: string[], depth: i32): void {
  if (depth > 200) { out.push("null"); r.skip(); return; }
  const k = r.kind();
  if (k == Kind.Nil) { r.skip(); out.push("null"); }
  else if (k == Kind.Bool) out.push(r.bool() ? "true" : "false");
  else if (k == Kind.Int) out.push(r.int().toString());
  else if (k == Kind.Float) { const f = r.float(); out.push(isFinite(f) ? f.toString() : "null"); }
  else if (k == Kind.Str) out.push(quote(r.str()));
  else if (k == Kind.Array) {
    const n = r.arrayLen();
    out.push("[");
    for (let i: u32 = 0; i < n; i++) { if (i > 0) out.push(","); json(r, out, depth + 1); }
    out.push("]");
  } else if (k == Kind.Map) {
    const n = r.mapLen();
    out.push("{");
    for (let i: u32 = 0; i < n; i++) {
      if (i > 0) out.push(",");
      if (r.kind() == Kind.Str) out.push(quote(r.str())); else { r.skip(); out.push("\"?\""); }
      out.push(":");
      json(r, out, depth + 1);
    }
    out.push("}");
  } else { r.skip(); out.push("null"); }
}

function quote(s: string): string {
  let out = "\"";
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c == 0x22) out += "\\\"";
    else if (c == 0x5c) out += "\\\\";
    else if (c < 0x20) out += "\\u" + c.toString(16).padStart(4, "0");
    else out += String.fromCharCode(c);
  }
  return out + "\"";
}

/** A change in a database collection (docs/abi.md §7.2). */
function isAscii(s: string): bool {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) >= 0x80) return false;
  return true;
}

// Header strings are decoded on first use (then kept): a plugin that never reads
// `id` or `db` does not pay for a string it does not use. `*At` is where the
// string's MessagePack bytes are (0: absent, read as "").
const scratch = new Reader(0, 0);

function strAt(pos: usize, end: usize): string {
  if (pos == 0) return "";
  scratch.pos = pos;
  scratch.end = end;
  return scratch.str();
}

/** Whether the string at `pos` is the ASCII `s`, without decoding it. */
function strIs(pos: usize, end: usize, s: string): bool {
  if (pos == 0) return false;
  scratch.pos = pos;
  scratch.end = end;
  scratch.key();
  return scratch.keyIs(s);
}

/** Records where the string at the reader is and moves past it (a non-string throws, as before). */
function strPos(r: Reader): usize {
  const at = r.pos;
  r.key();
  return at;
}

export class Change {
  end: usize = 0;
  opAt: usize = 0;
  dbAt: usize = 0;
  collAt: usize = 0;
  private opS: string | null = null;
  private dbS: string | null = null;
  private collS: string | null = null;
  /** "insert", "update", "replace", "delete", ...; "snapshot" for an existing
   *  document read by the host's initial snapshot or `oplet backfill`. */
  get op(): string { let s = this.opS; if (s == null) { s = strAt(this.opAt, this.end); this.opS = s; } return s; }
  get db(): string { let s = this.dbS; if (s == null) { s = strAt(this.dbAt, this.end); this.dbS = s; } return s; }
  get coll(): string { let s = this.collS; if (s == null) { s = strAt(this.collAt, this.end); this.collS = s; } return s; }
  /** The documentKey, usually {"_id": ...}. */
  key: Val | null = null;
  /** The whole document after the change, when the server sent it. */
  fullDocument: Val | null = null;
  /** Fields an update set, keyed by dotted path. */
  updatedFields: Val | null = null;
  removedFields: Val | null = null;
  before: Val | null = null;

  /** db + "." + coll */
  namespace(): string { return this.db + "." + this.coll; }

  /** documentKey._id */
  id(): Val | null { return this.key == null ? null : (<Val>this.key).get("_id"); }

  /**
   * A field of the document after the change (dotted path): from the full document
   * when present, else what the update set (the path itself, or a parent set whole).
   */
  field(path: string): Val | null {
    if (this.fullDocument != null) {
      const v = (<Val>this.fullDocument).path(path);
      if (v != null) return v;
    }
    return this.updated(path);
  }

  /** A field's new value from updatedFields, or null if the update did not set it. */
  updated(path: string): Val | null {
    if (this.updatedFields == null) return null;
    const updated = <Val>this.updatedFields;
    const whole = updated.get(path);
    if (whole != null) return whole;
    let dot = path.indexOf(".");
    while (dot >= 0) {
      const parent = updated.get(path.substring(0, dot));
      if (parent != null) {
        const inner = parent.path(path.substring(dot + 1));
        if (inner != null) return inner;
      }
      dot = path.indexOf(".", dot + 1);
    }
    return null;
  }
}

/** An event a Socket.IO client sent (docs/abi.md §7.3). */
export class SocketEvent {
  end: usize = 0;
  clientAt: usize = 0;
  eventAt: usize = 0;
  private clientS: string | null = null;
  private eventS: string | null = null;
  get client(): string { let s = this.clientS; if (s == null) { s = strAt(this.clientAt, this.end); this.clientS = s; } return s; }
  get event(): string { let s = this.eventS; if (s == null) { s = strAt(this.eventAt, this.end); this.eventS = s; } return s; }
  payload: Val | null = null;
}

/** One event (docs/abi.md §7.1). Header numbers are read once, header strings on first use; documents stay bytes. */
export class Event {
  seq: u64 = 0;
  timeMs: i64 = 0;
  end: usize = 0;
  idAt: usize = 0;
  sourceAt: usize = 0;
  kindAt: usize = 0;
  private idS: string | null = null;
  private sourceS: string | null = null;
  private kindS: string | null = null;
  get id(): string { let s = this.idS; if (s == null) { s = strAt(this.idAt, this.end); this.idS = s; } return s; }
  get source(): string { let s = this.sourceS; if (s == null) { s = strAt(this.sourceAt, this.end); this.sourceS = s; } return s; }
  /** "change", "socket", or a kind this PDK does not know (a newer host). */
  get kind(): string { let s = this.kindS; if (s == null) { s = strAt(this.kindAt, this.end); this.kindS = s; } return s; }
  change: Change | null = null;
  socket: SocketEvent | null = null;

  /** Reads the event at [ptr, ptr + len). Unknown keys are skipped. */
  static read(ptr: usize, len: usize): Event {
    const end = ptr + len;
    const e = new Event();
    e.end = end;
    const r = new Reader(ptr, end);
    const n = r.mapLen();
    for (let i: u32 = 0; i < n; i++) {
      // Keys are compared as bytes, not decoded: a string less per key.
      r.key();
      if (r.keyIs("seq")) e.seq = <u64>r.int();
      else if (r.keyIs("id")) e.idAt = strPos(r);
      else if (r.keyIs("source")) e.sourceAt = strPos(r);
      else if (r.keyIs("time_ms")) e.timeMs = r.int();
      else if (r.keyIs("body")) readBody(e, r, end);
      else r.skip();
    }
    return e;
  }
}

function nullable(r: Reader, end: usize): Val | null {
  const at = r.pos;
  if (at < end && load<u8>(at) == 0xc0) { r.pos = at + 1; return null; }
  r.skip();
  return new Val(at, end);
}

function readBody(e: Event, r: Reader, end: usize): void {
  const n = r.mapLen();
  let dataAt: usize = 0;
  for (let i: u32 = 0; i < n; i++) {
    r.key();
    if (r.keyIs("kind")) e.kindAt = strPos(r);
    else if (r.keyIs("data")) { dataAt = r.pos; r.skip(); }
    else r.skip();
  }
  if (dataAt == 0) return;
  const d = new Reader(dataAt, end);
  if (d.kind() != Kind.Map) return;
  const m = d.mapLen();
  if (strIs(e.kindAt, end, "change")) {
    const c = new Change();
    c.end = end;
    for (let i: u32 = 0; i < m; i++) {
      d.key();
      if (d.keyIs("op")) c.opAt = strPos(d);
      else if (d.keyIs("db")) c.dbAt = strPos(d);
      else if (d.keyIs("coll")) c.collAt = strPos(d);
      else if (d.keyIs("key")) c.key = nullable(d, end);
      else if (d.keyIs("full_document")) c.fullDocument = nullable(d, end);
      else if (d.keyIs("updated_fields")) c.updatedFields = nullable(d, end);
      else if (d.keyIs("removed_fields")) c.removedFields = nullable(d, end);
      else if (d.keyIs("before")) c.before = nullable(d, end);
      else d.skip();
    }
    e.change = c;
  } else if (strIs(e.kindAt, end, "socket")) {
    const s = new SocketEvent();
    s.end = end;
    for (let i: u32 = 0; i < m; i++) {
      d.key();
      if (d.keyIs("client")) s.clientAt = strPos(d);
      else if (d.keyIs("event")) s.eventAt = strPos(d);
      else if (d.keyIs("payload")) s.payload = nullable(d, end);
      else d.skip();
    }
    e.socket = s;
  }
}

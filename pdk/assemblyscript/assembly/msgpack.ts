// MessagePack, the encoding on Oplet's plugin boundary (docs/abi.md §6): a reader
// that walks bytes in linear memory without copying them, and a growable writer.
// The event view (event.ts) reads lazily with `Reader`; effects (effect.ts) are
// written with `Writer`.

/** The shape of the value at a position. */
export enum Kind { Nil, Bool, Int, Float, Str, Bin, Array, Map, Ext, Invalid }

@inline function be16(p: usize): u32 { return (<u32>load<u8>(p) << 8) | load<u8>(p + 1); }
@inline function be32(p: usize): u32 { return bswap<u32>(load<u32>(p)); }
@inline function be64(p: usize): u64 { return bswap<u64>(load<u64>(p)); }

/** Reads the value at `pos` (an absolute address) inside [.., end). */
export class Reader {
  constructor(public pos: usize, public end: usize) {}

  kind(): Kind {
    if (this.pos >= this.end) return Kind.Invalid;
    const b = load<u8>(this.pos);
    if (b <= 0x7f || b >= 0xe0) return Kind.Int;
    if (b <= 0x8f) return Kind.Map;
    if (b <= 0x9f) return Kind.Array;
    if (b <= 0xbf) return Kind.Str;
    switch (b) {
      case 0xc0: return Kind.Nil;
      case 0xc2: case 0xc3: return Kind.Bool;
      case 0xc4: case 0xc5: case 0xc6: return Kind.Bin;
      case 0xca: case 0xcb: return Kind.Float;
      case 0xcc: case 0xcd: case 0xce: case 0xcf:
      case 0xd0: case 0xd1: case 0xd2: case 0xd3: return Kind.Int;
      case 0xd9: case 0xda: case 0xdb: return Kind.Str;
      case 0xdc: case 0xdd: return Kind.Array;
      case 0xde: case 0xdf: return Kind.Map;
      case 0xc7: case 0xc8: case 0xc9: case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: return Kind.Ext;
    }
    return Kind.Invalid;
  }

  private need(n: usize): void {
    if (this.pos + n > this.end) throw new Error("oplet-pdk: truncated MessagePack");
  }

  /** The length of the string at pos, moving pos to its first byte. */
  strLen(): usize {
    this.need(1);
    const b = load<u8>(this.pos);
    let n: usize = 0;
    if (b >= 0xa0 && b <= 0xbf) { n = b & 0x1f; this.pos += 1; }
    else if (b == 0xd9) { this.need(2); n = load<u8>(this.pos + 1); this.pos += 2; }
    else if (b == 0xda) { this.need(3); n = be16(this.pos + 1); this.pos += 3; }
    else if (b == 0xdb) { this.need(5); n = be32(this.pos + 1); this.pos += 5; }
    else throw new Error("oplet-pdk: expected a string");
    this.need(n);
    return n;
  }

  /** A string: decoded into a new AssemblyScript string. */
  str(): string {
    const n = this.strLen();
    const s = String.UTF8.decodeUnsafe(this.pos, n);
    this.pos += n;
    return s;
  }

  /** Where the last `key()` is in memory, and its length in bytes. */
  kpos: usize = 0;
  klen: usize = 0;

  /** Moves past a map key without decoding it; compare it with `keyIs`. */
  key(): void {
    const n = this.strLen();
    this.kpos = this.pos;
    this.klen = n;
    this.pos += n;
  }

  /** Whether the last `key()` is the ASCII string `s` (no allocation). */
  keyIs(s: string): bool {
    const n = <usize>s.length;
    if (n != this.klen) return false;
    for (let i: usize = 0; i < n; i++) {
      if (<u32>load<u8>(this.kpos + i) != <u32>s.charCodeAt(<i32>i)) return false;
    }
    return true;
  }

  /** Whether the string at pos equals the UTF-8 bytes at (key, keyLen); moves past it. */
  strEquals(key: usize, keyLen: usize): bool {
    const n = this.strLen();
    const at = this.pos;
    this.pos += n;
    return n == keyLen && memory.compare(at, key, n) == 0;
  }

  int(): i64 {
    this.need(1);
    const b = load<u8>(this.pos);
    if (b <= 0x7f) { this.pos += 1; return <i64>b; }
    if (b >= 0xe0) { this.pos += 1; return <i64><i8>b; }
    switch (b) {
      case 0xcc: this.need(2); this.pos += 2; return <i64>load<u8>(this.pos - 1);
      case 0xcd: this.need(3); this.pos += 3; return <i64>be16(this.pos - 2);
      case 0xce: this.need(5); this.pos += 5; return <i64>be32(this.pos - 4);
      case 0xcf: this.need(9); this.pos += 9; return <i64>be64(this.pos - 8);
      case 0xd0: this.need(2); this.pos += 2; return <i64>load<i8>(this.pos - 1);
      case 0xd1: this.need(3); this.pos += 3; return <i64><i16>be16(this.pos - 2);
      case 0xd2: this.need(5); this.pos += 5; return <i64><i32>be32(this.pos - 4);
      case 0xd3: this.need(9); this.pos += 9; return <i64>be64(this.pos - 8);
    }
    throw new Error("oplet-pdk: expected an integer");
    return 0;
  }

  float(): f64 {
    this.need(1);
    const b = load<u8>(this.pos);
    if (b == 0xcb) { this.need(9); this.pos += 9; return reinterpret<f64>(be64(this.pos - 8)); }
    if (b == 0xca) { this.need(5); this.pos += 5; return <f64>reinterpret<f32>(be32(this.pos - 4)); }
    return <f64>this.int();
  }

  bool(): bool {
    this.need(1);
    const b = load<u8>(this.pos);
    if (b != 0xc2 && b != 0xc3) throw new Error("oplet-pdk: expected a boolean");
    this.pos += 1;
    return b == 0xc3;
  }

  /** The number of entries of the map at pos, moving pos to its first key. */
  mapLen(): u32 {
    this.need(1);
    const b = load<u8>(this.pos);
    if (b >= 0x80 && b <= 0x8f) { this.pos += 1; return b & 0x0f; }
    if (b == 0xde) { this.need(3); this.pos += 3; return be16(this.pos - 2); }
    if (b == 0xdf) { this.need(5); this.pos += 5; return be32(this.pos - 4); }
    throw new Error("oplet-pdk: expected a map");
    return 0;
  }

  /** The number of items of the array at pos, moving pos to its first item. */
  arrayLen(): u32 {
    this.need(1);
    const b = load<u8>(this.pos);
    if (b >= 0x90 && b <= 0x9f) { this.pos += 1; return b & 0x0f; }
    if (b == 0xdc) { this.need(3); this.pos += 3; return be16(this.pos - 2); }
    if (b == 0xdd) { this.need(5); this.pos += 5; return be32(this.pos - 4); }
    throw new Error("oplet-pdk: expected an array");
    return 0;
  }

  /** Moves pos past one whole value (iteratively: no recursion on deep nesting). */
  skip(): void {
    let pending: u64 = 1;
    while (pending > 0) {
      pending--;
      this.need(1);
      const b = load<u8>(this.pos);
      if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) { this.pos += 1; continue; }
      if (b <= 0x8f) { this.pos += 1; pending += 2 * <u64>(b & 0x0f); continue; }
      if (b <= 0x9f) { this.pos += 1; pending += <u64>(b & 0x0f); continue; }
      if (b <= 0xbf) { this.pos += 1 + (b & 0x1f); continue; }
      switch (b) {
        case 0xcc: case 0xd0: this.pos += 2; break;
        case 0xcd: case 0xd1: this.pos += 3; break;
        case 0xce: case 0xd2: case 0xca: this.pos += 5; break;
        case 0xcf: case 0xd3: case 0xcb: this.pos += 9; break;
        case 0xd9: case 0xc4: this.need(2); this.pos += 2 + load<u8>(this.pos + 1); break;
        case 0xda: case 0xc5: this.need(3); this.pos += 3 + be16(this.pos + 1); break;
        case 0xdb: case 0xc6: this.need(5); this.pos += 5 + be32(this.pos + 1); break;
        case 0xdc: this.need(3); pending += be16(this.pos + 1); this.pos += 3; break;
        case 0xdd: this.need(5); pending += be32(this.pos + 1); this.pos += 5; break;
        case 0xde: this.need(3); pending += 2 * <u64>be16(this.pos + 1); this.pos += 3; break;
        case 0xdf: this.need(5); pending += 2 * <u64>be32(this.pos + 1); this.pos += 5; break;
        case 0xd4: this.pos += 3; break;
        case 0xd5: this.pos += 4; break;
        case 0xd6: this.pos += 6; break;
        case 0xd7: this.pos += 10; break;
        case 0xd8: this.pos += 18; break;
        case 0xc7: this.need(2); this.pos += 3 + load<u8>(this.pos + 1); break;
        case 0xc8: this.need(3); this.pos += 4 + be16(this.pos + 1); break;
        case 0xc9: this.need(5); this.pos += 6 + be32(this.pos + 1); break;
        default: throw new Error("oplet-pdk: invalid MessagePack byte");
      }
      if (this.pos > this.end) throw new Error("oplet-pdk: truncated MessagePack");
    }
  }
}

/** A growable byte buffer that writes MessagePack. */
export class Writer {
  buf: ArrayBuffer;
  len: i32 = 0;

  constructor(capacity: i32 = 256) {
    this.buf = new ArrayBuffer(capacity);
  }

  /** Empties the buffer, keeping its memory. */
  clear(): void { this.len = 0; }

  ptr(): usize { return changetype<usize>(this.buf); }

  private reserve(n: i32): usize {
    const want = this.len + n;
    if (want > this.buf.byteLength) {
      let cap = this.buf.byteLength * 2;
      if (cap < want) cap = want;
      const next = new ArrayBuffer(cap);
      memory.copy(changetype<usize>(next), changetype<usize>(this.buf), this.len);
      this.buf = next;
    }
    const at = changetype<usize>(this.buf) + <usize>this.len;
    this.len = want;
    return at;
  }

  byte(b: u8): void { store<u8>(this.reserve(1), b); }

  raw(ptr: usize, n: i32): void {
    const at = this.reserve(n);
    memory.copy(at, ptr, n);
  }

  nil(): void { this.byte(0xc0); }

  bool(b: bool): void { this.byte(b ? 0xc3 : 0xc2); }

  int(i: i64): void {
    if (i >= 0) {
      if (i <= 0x7f) { this.byte(<u8>i); return; }
      if (i <= 0xff) { this.byte(0xcc); this.byte(<u8>i); return; }
      if (i <= 0xffff) { const p = this.reserve(3); store<u8>(p, 0xcd); store<u16>(p + 1, bswap<u16>(<u16>i)); return; }
      if (i <= 0xffffffff) { const p = this.reserve(5); store<u8>(p, 0xce); store<u32>(p + 1, bswap<u32>(<u32>i)); return; }
      const p = this.reserve(9); store<u8>(p, 0xcf); store<u64>(p + 1, bswap<u64>(<u64>i)); return;
    }
    if (i >= -32) { this.byte(<u8>(<i8>i)); return; }
    if (i >= -128) { this.byte(0xd0); this.byte(<u8>(<i8>i)); return; }
    if (i >= -32768) { const p = this.reserve(3); store<u8>(p, 0xd1); store<u16>(p + 1, bswap<u16>(<u16>(<i16>i))); return; }
    if (i >= -2147483648) { const p = this.reserve(5); store<u8>(p, 0xd2); store<u32>(p + 1, bswap<u32>(<u32>(<i32>i))); return; }
    const p = this.reserve(9); store<u8>(p, 0xd3); store<u64>(p + 1, bswap<u64>(<u64>i));
  }

  float(f: f64): void {
    const p = this.reserve(9);
    store<u8>(p, 0xcb);
    store<u64>(p + 1, bswap<u64>(reinterpret<u64>(f)));
  }

  private header(n: u32, fix: u8, fixMax: u32, m16: u8, m32: u8): void {
    if (n <= fixMax) { this.byte(fix | <u8>n); return; }
    if (n <= 0xffff) { const p = this.reserve(3); store<u8>(p, m16); store<u16>(p + 1, bswap<u16>(<u16>n)); return; }
    const p = this.reserve(5); store<u8>(p, m32); store<u32>(p + 1, bswap<u32>(n));
  }

  str(s: string): void {
    const n = <u32>String.UTF8.byteLength(s);
    if (n <= 31) this.byte(0xa0 | <u8>n);
    else if (n <= 0xff) { this.byte(0xd9); this.byte(<u8>n); }
    else this.header(n, 0xa0, 0, 0xda, 0xdb);
    const at = this.reserve(<i32>n);
    String.UTF8.encodeUnsafe(changetype<usize>(s), s.length, at);
  }

  mapLen(n: u32): void { this.header(n, 0x80, 15, 0xde, 0xdf); }

  arrayLen(n: u32): void { this.header(n, 0x90, 15, 0xdc, 0xdd); }
}

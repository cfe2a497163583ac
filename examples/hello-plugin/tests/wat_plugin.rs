//! `examples/wat-plugin/plugin.wat` hand-encodes its MessagePack reply; this reads
//! the bytes of its data segment straight from the .wat text, decodes them with
//! the SDK, and checks them against the Reply they are meant to be, and that the
//! packed pointer/length `oplet_handle` returns points exactly at them.

use oplet_sdk::{codec, Effect, LogLevel, Reply};

const WAT: &str = include_str!("../../wat-plugin/plugin.wat");

/// Offset and bytes of the module's one `(data (i32.const N) "..." ...)` segment.
fn data_segment(wat: &str) -> (u32, Vec<u8>) {
    let start = wat.find("(data (i32.const ").expect("a data segment");
    let rest = &wat[start + "(data (i32.const ".len()..];
    let offset = rest[..rest.find(')').unwrap()].trim().parse().expect("a decimal offset");
    let mut bytes = Vec::new();
    let mut chars = rest[rest.find(')').unwrap() + 1..].chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ';' if chars.peek() == Some(&';') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '"' => loop {
                match chars.next().expect("a closed string") {
                    '"' => break,
                    '\\' => {
                        let hex: String = [chars.next().unwrap(), chars.next().unwrap()].iter().collect();
                        bytes.push(u8::from_str_radix(&hex, 16).expect("a \\hh escape"));
                    }
                    c => {
                        let mut buf = [0; 4];
                        bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
            },
            ')' => break,
            _ => {}
        }
    }
    (offset, bytes)
}

/// The `i64.const` that `oplet_handle` returns.
fn packed_reply() -> u64 {
    let handle = &WAT[WAT.find("\"oplet_handle\"").expect("oplet_handle")..];
    let konst = &handle[handle.find("(i64.const 0x").unwrap() + "(i64.const 0x".len()..];
    u64::from_str_radix(&konst[..konst.find(')').unwrap()], 16).unwrap()
}

#[test]
fn the_hand_encoded_reply_is_the_reply_it_claims_to_be() {
    let (offset, bytes) = data_segment(WAT);
    let reply: Reply = codec::decode(&bytes).expect("valid MessagePack of a Reply");
    let expected = Reply::Ok { effects: vec![Effect::Log { level: LogLevel::Info, message: "hello from WAT".into() }] };
    assert_eq!(reply, expected);
    // Byte for byte what the SDK itself would send.
    assert_eq!(bytes, codec::encode(&expected).unwrap());
    assert_eq!(oplet_sdk::unpack_ptr_len(packed_reply()), (offset, bytes.len() as u32));
}

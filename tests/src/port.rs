//! Free loopback ports for test servers. Ports are drawn at random from *below* the
//! kernel's ephemeral range, so an outgoing connection (which takes an ephemeral port)
//! can never grab a port between the moment we pick it and the moment the server binds
//! it; each is checked free by binding it, and never handed out twice by one process.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::sync::Mutex;

/// Ports that well-known servers use by default; never handed out.
const AVOID: &[u16] = &[27017, 27018, 27019, 28017, 5432, 6379, 8080, 8000, 3000];

/// A TCP port on 127.0.0.1 that was free a moment ago, outside the ephemeral range,
/// and that this process has not handed out before.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let (low, high) = candidate_range();
    let random = std::collections::hash_map::RandomState::new();
    for attempt in 0u64..1000 {
        let mut hasher = random.build_hasher();
        hasher.write_u64(attempt);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        hasher.write_u128(now.map_or(0, |d| d.as_nanos()));
        let port = low + (hasher.finish() % u64::from(high - low)) as u16;
        if AVOID.contains(&port) {
            continue;
        }
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        let given = given.get_or_insert_with(HashSet::new);
        if given.contains(&port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        given.insert(port);
        return port;
    }
    panic!("could not find a free loopback port in [{low}, {high}) in 1000 tries");
}

/// [15000, start of the ephemeral range), or [15000, 32768) if it cannot be read.
fn candidate_range() -> (u16, u16) {
    const LOW: u16 = 15000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_start > LOW + 1000 {
        (LOW, ephemeral_start)
    } else {
        // An unusual kernel setting: fall back to the top of the port space.
        (61000, 65535)
    }
}

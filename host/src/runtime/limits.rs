//! Per-call limits of a plugin: time budget, linear-memory ceiling, reply size.
//!
//! A manifest asks for limits; the host clamps them to its ceilings. The store's
//! `ResourceLimiter` (in `plugin`) enforces memory and remembers that it refused
//! growth, so a memory bomb is reported as out of memory, not as a bare trap.

use crate::config::Ceilings;
use crate::manifest::LimitsRequest;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub time_ms: u64,
    pub memory_bytes: usize,
    pub reply_bytes: usize,
}

pub const DEFAULT_TIME_MS: u64 = 200;
pub const DEFAULT_MEMORY_MB: u64 = 64;
pub const DEFAULT_REPLY_KB: u64 = 1024;

impl Limits {
    pub fn resolve(req: &LimitsRequest, ceil: &Ceilings) -> Limits {
        let time_ms = req.time_ms.unwrap_or(DEFAULT_TIME_MS).min(ceil.time_ms).max(1);
        let memory_mb = req.memory_mb.unwrap_or(DEFAULT_MEMORY_MB).min(ceil.memory_mb).max(1);
        let reply_kb = req.reply_kb.unwrap_or(DEFAULT_REPLY_KB).min(ceil.reply_kb).max(1);
        Limits {
            time_ms,
            memory_bytes: (memory_mb as usize) << 20,
            reply_bytes: (reply_kb as usize) << 10,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::resolve(&LimitsRequest::default(), &Ceilings::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_cannot_exceed_the_host_ceilings() {
        let req = LimitsRequest { time_ms: Some(60_000), memory_mb: Some(4096), reply_kb: None };
        let l = Limits::resolve(&req, &Ceilings { time_ms: 1000, memory_mb: 128, reply_kb: 64 });
        assert_eq!(l.time_ms, 1000);
        assert_eq!(l.memory_bytes, 128 << 20);
        assert_eq!(l.reply_bytes, 64 << 10);
    }
}

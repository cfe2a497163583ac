//! Per-call limits of a plugin: time budget, one memory budget (linear memory and
//! tables together), reply size, effects per call, and log rate.
//!
//! A manifest asks for limits; the host clamps them to its ceilings. Every value is
//! range-checked (never wrapped or silently raised): a value of 0 or past what the
//! runtime can enforce refuses the plugin at load with the key and its range.

use crate::config::Ceilings;
use crate::manifest::LimitsRequest;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub time_ms: u64,
    /// The whole instance: linear memory plus tables (8 bytes per element).
    pub memory_bytes: usize,
    pub reply_bytes: usize,
    /// Effects one call may return.
    pub effects: usize,
    /// Bytes per second through `oplet.log` (burst: one second's worth).
    pub log_bytes_per_s: u64,
}

pub const DEFAULT_TIME_MS: u64 = 200;
pub const DEFAULT_MEMORY_MB: u64 = 64;
pub const DEFAULT_REPLY_KB: u64 = 1024;
pub const DEFAULT_EFFECTS: u64 = 1000;
pub const DEFAULT_LOG_KB_PER_S: u64 = 64;

/// The range of every limit key (manifest `[limits]` and host `[limits]`): what the
/// runtime can enforce. Memory: a 32-bit linear memory holds at most 4 GiB; a reply
/// length is a u32; time budgets past an hour are a mistake, not a budget.
pub const RANGES: &[(&str, u64, u64, &str)] = &[
    ("time_ms", 1, 3_600_000, "ms"),
    ("memory_mb", 1, 4096, "MiB"),
    ("reply_kb", 1, 4 * 1024 * 1024, "KiB"),
    ("effects", 1, 1_000_000, "effects"),
    ("log_kb_per_s", 1, 1024 * 1024, "KiB/s"),
    ("module_mb", 1, 1024, "MiB"),
    ("compile_ms", 1, 3_600_000, "ms"),
];

/// `Ok` when `value` lies in the range of `key`; else a message naming both.
pub fn check_range(key: &str, value: u64) -> Result<u64, String> {
    let (_, lo, hi, unit) = RANGES.iter().find(|r| r.0 == key).copied().unwrap_or((key, 1, u64::MAX, ""));
    if value < lo || value > hi {
        return Err(format!("{key} = {value} is out of range: it must be {lo} to {hi} ({unit})"));
    }
    Ok(value)
}

impl Limits {
    /// The manifest's request (or the default), range-checked, clamped to the host's
    /// ceilings. The error names the manifest key and its range.
    pub fn resolve(req: &LimitsRequest, ceil: &Ceilings) -> Result<Limits, String> {
        let pick = |key: &str, asked: Option<u64>, default: u64, ceiling: u64| -> Result<u64, String> {
            let v = match asked {
                Some(v) => check_range(key, v).map_err(|e| format!("[limits] {e}"))?,
                None => default,
            };
            Ok(v.min(ceiling))
        };
        let time_ms = pick("time_ms", req.time_ms, DEFAULT_TIME_MS, ceil.time_ms)?;
        let memory_mb = pick("memory_mb", req.memory_mb, DEFAULT_MEMORY_MB, ceil.memory_mb)?;
        let reply_kb = pick("reply_kb", req.reply_kb, DEFAULT_REPLY_KB, ceil.reply_kb)?;
        let effects = pick("effects", req.effects, DEFAULT_EFFECTS, ceil.effects)?;
        let log_kb = pick("log_kb_per_s", req.log_kb_per_s, DEFAULT_LOG_KB_PER_S, ceil.log_kb_per_s)?;
        let bytes = |v: u64, shift: u32, key: &str| -> Result<usize, String> {
            v.checked_shl(shift)
                .filter(|b| b >> shift == v)
                .and_then(|b| usize::try_from(b).ok())
                .ok_or_else(|| format!("[limits] {key} = {v} does not fit this machine's address space"))
        };
        Ok(Limits {
            time_ms,
            memory_bytes: bytes(memory_mb, 20, "memory_mb")?,
            reply_bytes: bytes(reply_kb, 10, "reply_kb")?,
            effects: usize::try_from(effects).map_err(|_| format!("[limits] effects = {effects} is too large"))?,
            log_bytes_per_s: log_kb.saturating_mul(1024),
        })
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::resolve(&LimitsRequest::default(), &Ceilings::default()).expect("the defaults are in range")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ceilings() -> Ceilings {
        Ceilings { time_ms: 1000, memory_mb: 128, reply_kb: 64, effects: 10, log_kb_per_s: 8, ..Ceilings::default() }
    }

    #[test]
    fn a_manifest_cannot_exceed_the_host_ceilings() {
        let req = LimitsRequest { time_ms: Some(60_000), memory_mb: Some(4096), effects: Some(50), ..Default::default() };
        let l = Limits::resolve(&req, &ceilings()).unwrap();
        assert_eq!(l.time_ms, 1000);
        assert_eq!(l.memory_bytes, 128 << 20);
        assert_eq!(l.reply_bytes, 64 << 10);
        assert_eq!(l.effects, 10);
        assert_eq!(l.log_bytes_per_s, 8 * 1024);
    }

    #[test]
    fn a_value_that_would_wrap_is_refused_not_wrapped() {
        // 2^44 MiB << 20 is 2^64: it used to wrap to a limit of 0 bytes.
        let req = LimitsRequest { memory_mb: Some(17_592_186_044_416), ..Default::default() };
        let err = Limits::resolve(&req, &Ceilings::default()).unwrap_err();
        assert_eq!(err, "[limits] memory_mb = 17592186044416 is out of range: it must be 1 to 4096 (MiB)");
    }

    #[test]
    fn zero_is_refused_not_raised_to_one() {
        for key in ["time_ms", "memory_mb", "reply_kb", "effects", "log_kb_per_s"] {
            let mut req = LimitsRequest::default();
            match key {
                "time_ms" => req.time_ms = Some(0),
                "memory_mb" => req.memory_mb = Some(0),
                "reply_kb" => req.reply_kb = Some(0),
                "effects" => req.effects = Some(0),
                _ => req.log_kb_per_s = Some(0),
            }
            let err = Limits::resolve(&req, &Ceilings::default()).unwrap_err();
            assert!(err.starts_with(&format!("[limits] {key} = 0 is out of range")), "{err}");
        }
    }

    #[test]
    fn host_ceilings_out_of_range_are_config_errors() {
        let c = Ceilings { memory_mb: u64::MAX, ..Ceilings::default() };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("[limits] memory_mb = 18446744073709551615 is out of range"), "{err}");
        let c = Ceilings { compile_ms: 0, ..Ceilings::default() };
        assert!(c.validate().unwrap_err().to_string().contains("compile_ms = 0"));
        Ceilings::default().validate().unwrap();
    }
}

//! CPU time of processes and threads from /proc, for the benches that compare the
//! host's cost with other programs doing the same job (user + system, in seconds).

use std::collections::BTreeMap;

/// Clock ticks per second of the `stat` files.
fn hz() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// utime + stime of a `stat` line (fields 14 and 15, after the `(name)`).
fn ticks(stat: &str) -> u64 {
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// CPU seconds a process has used so far (0 once it is gone).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    ticks(&stat) as f64 / hz()
}

/// CPU seconds per thread name of a process (threads of one name, such as tokio
/// workers, summed).
pub fn cpu_by_thread(pid: u32) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let hz = hz();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let Some((head, _)) = stat.rsplit_once(')') else { continue };
        let name = head.split_once('(').map(|(_, n)| n.to_string()).unwrap_or_default();
        *out.entry(name).or_insert(0.0) += ticks(&stat) as f64 / hz;
    }
    out
}

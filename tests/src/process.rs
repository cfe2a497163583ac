//! Small process helpers shared by the fixtures: spawning a child that dies with the
//! test thread, signalling by pid, waiting for a condition with a deadline, and reading
//! the tail of a log file for error messages.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Spawns `cmd` so that the child receives SIGKILL when the test process dies (an
/// interrupted or killed test binary), so no server outlives its tests. Linux sends
/// PDEATHSIG when the *thread* that forked exits, so every child is forked from one
/// spawner thread that lives as long as the process.
pub(crate) fn spawn(cmd: Command) -> std::io::Result<Child> {
    spawn_with_death_signal(cmd, libc::SIGKILL)
}

/// Like [`spawn`], with the signal the child gets when the test process dies.
pub(crate) fn spawn_with_death_signal(
    mut cmd: Command,
    death_signal: libc::c_int,
) -> std::io::Result<Child> {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("oplet-tests-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the spawner thread");
        Mutex::new(tx)
    });
    // SAFETY: prctl is async-signal-safe and touches only the child's own state.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .expect("spawner thread is alive");
    reply_rx.recv().expect("spawner thread replies")
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub(crate) fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// SIGTERM, then SIGKILL if it has not exited within `grace`; always reaps the child.
pub(crate) fn stop_child(child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    signal(child.id(), libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGKILL and reap.
pub(crate) fn kill_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Polls `ready` every 25 ms until it returns true or `timeout` passes.
pub(crate) fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The last `n` lines of a text file, or a note that it could not be read.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// A shell that runs `cleanup` if the test process dies without dropping its fixture
/// (killed by a timeout or Ctrl-C), for servers that daemonize and so escape
/// PDEATHSIG. Dropping the guard kills the shell without running `cleanup`.
pub(crate) struct CleanupGuard {
    child: Child,
}

impl CleanupGuard {
    pub(crate) fn new(cleanup: &str) -> std::io::Result<CleanupGuard> {
        let script = format!(
            "trap '{cleanup}; exit 0' TERM; while :; do sleep 1; done",
            cleanup = cleanup.replace('\'', "'\\''")
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let child = spawn_with_death_signal(cmd, libc::SIGTERM)?;
        Ok(CleanupGuard { child })
    }
}

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

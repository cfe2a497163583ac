//! Checks that a tool the tests need is on this machine, before a fixture tries to use
//! it. A missing tool always panics with what is missing and the command that installs
//! it (`scripts/setup.sh`): an end-to-end test that skips silently is a test that lies.

use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Something on the machine that a fixture needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// `redis-server` on PATH.
    Redis,
    /// PostgreSQL server binaries `initdb` and `pg_ctl` on PATH (and, as root, the
    /// `postgres` user and `runuser`).
    Postgres,
    /// `python3` (or `$OPLET_TEST_PYTHON`) that can import `nx_27017` and `pymongo`.
    Nx27017,
    /// `cargo` (or `$CARGO`) to build the host binary and the plugins.
    Cargo,
}

const SETUP: &str = "run `bash scripts/setup.sh` from the repository root (as root)";

/// Panics, naming what is missing and how to install it, unless `service` is usable.
/// The result is checked once per process and per service.
pub fn require(service: Service) {
    static CHECKED: [OnceLock<Result<(), String>>; 4] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let slot = &CHECKED[service as usize];
    if let Err(missing) = slot.get_or_init(|| check(service)) {
        let ci = std::env::var("CI").map(|v| v == "true").unwrap_or(false);
        let hint = if ci {
            "CI=true: the CI script must install it before running the tests"
        } else {
            "end-to-end tests never skip"
        };
        panic!("missing {missing} needed by the tests ({hint}); {SETUP}");
    }
}

pub(crate) fn python() -> String {
    std::env::var("OPLET_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

pub(crate) fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn check(service: Service) -> Result<(), String> {
    match service {
        Service::Redis => runs("redis-server", &["--version"]),
        Service::Postgres => {
            runs("initdb", &["--version"])?;
            runs("pg_ctl", &["--version"])?;
            if is_root() {
                runs("runuser", &["--help"])?;
                runs("id", &["postgres"])
                    .map_err(|_| "the `postgres` system user (initdb refuses root)".to_string())?;
            }
            Ok(())
        }
        Service::Nx27017 => {
            let py = python();
            runs(&py, &["-c", "import nx_27017.nx_27017, nx_27017.changestream, pymongo"])
                .map_err(|_| format!("`{py}` with the PyPI packages nx-27017 and pymongo"))
        }
        Service::Cargo => runs(&cargo(), &["--version"]),
    }
}

fn runs(program: &str, args: &[&str]) -> Result<(), String> {
    let ok = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(format!("`{program}`"))
    }
}

//! The compile pool: every module compiles on its own thread, under a time budget.
//!
//! A 50 MB module can keep Cranelift busy for minutes; compiling on the thread that
//! loads plugins made every other load wait behind it. Here each compile runs on a
//! thread of its own (at most `MAX_THREADS` at once; more wait for a slot) and the
//! caller waits at most the compile budget. wasmtime cannot cancel a compile: one
//! past its budget is refused at once and *abandoned* — its thread runs to the end
//! and its result is dropped (or cached, so the same bytes load fast next time) —
//! and it keeps its slot until then, which is what bounds abandoned threads.

use super::cache::Lease;
use super::engine::Compiler;
use super::plugin::LoadError;
use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use wasmtime::Module;

/// Compile threads alive at once, abandoned ones included.
pub const MAX_THREADS: usize = 8;

/// How big and how slow a module may be.
#[derive(Debug, Clone, Copy)]
pub struct CompileBudget {
    pub module_bytes: usize,
    pub time: Duration,
}

impl CompileBudget {
    pub fn from_ceilings(c: &crate::config::Ceilings) -> CompileBudget {
        CompileBudget {
            module_bytes: usize::try_from(c.module_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX),
            time: Duration::from_millis(c.compile_ms),
        }
    }
}

impl Default for CompileBudget {
    fn default() -> Self {
        CompileBudget::from_ceilings(&crate::config::Ceilings::default())
    }
}

#[derive(Default)]
pub struct CompilePool {
    state: Mutex<PoolState>,
    freed: Condvar,
}

#[derive(Default)]
struct PoolState {
    next_id: u64,
    /// Compile threads alive.
    running: HashSet<u64>,
    /// Those among them whose caller gave up (past the budget).
    abandoned: HashSet<u64>,
}

pub(crate) type Compiled = (Module, bool, Option<Arc<Lease>>);

impl CompilePool {
    /// Compile threads past their budget that are still running.
    pub fn abandoned(&self) -> usize {
        self.lock().abandoned.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Compiles `wasm` on a pool thread; waits for a free slot, then at most
    /// `budget.time` for the result.
    pub(crate) fn compile(self: &Arc<Self>, compiler: Compiler, wasm: Arc<[u8]>, budget: &CompileBudget) -> Result<Compiled, LoadError> {
        let id = {
            let mut st = self.lock();
            while st.running.len() >= MAX_THREADS {
                st = self.freed.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.next_id += 1;
            let id = st.next_id;
            st.running.insert(id);
            id
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let pool = self.clone();
        let spawned = std::thread::Builder::new().name("oplet-compile".into()).spawn(move || {
            let result = compiler.compile(&wasm);
            let _ = tx.send(result);
            let mut st = pool.lock();
            st.running.remove(&id);
            if st.abandoned.remove(&id) {
                tracing::info!("a compile abandoned past its budget has finished; its thread is free");
            }
            pool.freed.notify_all();
        });
        if let Err(e) = spawned {
            self.lock().running.remove(&id);
            self.freed.notify_all();
            return Err(LoadError::Compile(format!("cannot start a compile thread: {e}")));
        }
        match rx.recv_timeout(budget.time) {
            Ok(Ok(compiled)) => Ok(compiled),
            Ok(Err(e)) => Err(LoadError::Compile(one_line(&format!("{e:#}")))),
            Err(_) => {
                let mut st = self.lock();
                if st.running.contains(&id) {
                    st.abandoned.insert(id);
                }
                Err(LoadError::CompileBudget { budget_ms: budget.time.as_millis() as u64, abandoned: st.abandoned.len() })
            }
        }
    }
}

/// wasmtime's parse errors span lines (pretty-printed byte arrays); a log line must not.
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

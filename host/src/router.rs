//! The router: hands each event to every plugin whose subscription matches.
//!
//! Each loaded plugin has one worker thread with one wasm instance and a bounded
//! queue. The dispatcher takes a snapshot of the plugin set per event and waits
//! when a queue is full, so a slow plugin slows the sources (backpressure) instead
//! of growing memory. Every plugin sees events in source order (so per document
//! key too); plugins run in parallel with each other. A replaced plugin's new
//! worker starts only after the old one drained its queue: an event is handled by
//! exactly one version, in order.

use crate::config::{DeliveryConfig, OnPluginError};
use crate::deadletter::DeadLetters;
use crate::effect::Effects;
use crate::envelope::Envelope;
use crate::manifest::{Capabilities, Manifest};
use crate::runtime::{CallError, Instance, PluginCode};
use std::sync::mpsc as stdmpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;

/// What workers share: where effects go, where failures go, what to do on them.
pub struct WorkerContext {
    pub effects: Arc<Effects>,
    pub dead: Arc<DeadLetters>,
    pub delivery: DeliveryConfig,
    /// Notified when `on_plugin_error = "halt"` stops the host.
    pub halt: Arc<tokio::sync::Notify>,
}

/// A loaded plugin as the router sees it.
pub struct PluginWorker {
    pub name: String,
    pub version: String,
    pub digest: String,
    pub manifest: Arc<Manifest>,
    pub caps: Capabilities,
    tx: mpsc::Sender<Envelope>,
    /// Closed (sender dropped) when the worker thread has drained and exited.
    done: Mutex<Option<stdmpsc::Receiver<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The current set of plugins, swapped atomically on reload.
pub struct Registry {
    current: RwLock<Arc<Vec<Arc<PluginWorker>>>>,
    ctx: Arc<WorkerContext>,
    retired: Mutex<Vec<Arc<PluginWorker>>>,
}

impl Registry {
    pub fn new(ctx: Arc<WorkerContext>) -> Arc<Registry> {
        Arc::new(Registry { current: RwLock::new(Arc::new(Vec::new())), ctx, retired: Mutex::new(Vec::new()) })
    }

    pub fn snapshot(&self) -> Arc<Vec<Arc<PluginWorker>>> {
        self.current.read().expect("registry lock").clone()
    }

    /// Adds a plugin, or replaces the one with the same name. Events already
    /// dispatched to the old version finish there; the next ones go to the new.
    pub fn install(&self, code: PluginCode, manifest: Manifest, caps: Capabilities, digest: String) {
        let mut cur = self.current.write().expect("registry lock");
        let previous = cur.iter().find(|w| w.name == manifest.name).cloned();
        let wait_for = previous.as_ref().and_then(|p| p.done.lock().expect("done lock").take());
        let worker = spawn_worker(code, manifest, caps, digest, self.ctx.clone(), wait_for);
        let mut next: Vec<Arc<PluginWorker>> = cur.iter().filter(|w| w.name != worker.name).cloned().collect();
        next.push(Arc::new(worker));
        next.sort_by(|a, b| a.name.cmp(&b.name));
        *cur = Arc::new(next);
        if let Some(p) = previous {
            self.retire(p);
        }
    }

    /// Unloads a plugin; events already queued for it still finish.
    pub fn remove(&self, name: &str) -> bool {
        let mut cur = self.current.write().expect("registry lock");
        let Some(previous) = cur.iter().find(|w| w.name == name).cloned() else {
            return false;
        };
        *cur = Arc::new(cur.iter().filter(|w| w.name != name).cloned().collect());
        drop(cur);
        self.retire(previous);
        true
    }

    fn retire(&self, worker: Arc<PluginWorker>) {
        // Keep the join handle so shutdown can wait; the queue's sender lives in
        // `worker.tx` and in dispatcher snapshots; the worker exits when all drop.
        let mut retired = self.retired.lock().expect("retired lock");
        retired.retain(|w| w.thread.lock().expect("thread lock").as_ref().is_some_and(|t| !t.is_finished()));
        let thread = worker.thread.lock().expect("thread lock").take();
        let name = worker.name.clone();
        drop(worker);
        retired.push(Arc::new(PluginWorker::retired(name, thread)));
    }

    pub fn get(&self, name: &str) -> Option<Arc<PluginWorker>> {
        self.snapshot().iter().find(|w| w.name == name).cloned()
    }

    /// Closes every queue and waits for the workers to drain. Call after the
    /// dispatcher has stopped.
    pub fn shutdown(&self) {
        let workers = std::mem::take(&mut *self.current.write().expect("registry lock"));
        let mut threads = Vec::new();
        for w in workers.iter() {
            threads.extend(w.thread.lock().expect("thread lock").take());
        }
        drop(workers);
        for r in self.retired.lock().expect("retired lock").drain(..) {
            threads.extend(r.thread.lock().expect("thread lock").take());
        }
        for t in threads {
            let _ = t.join();
        }
    }
}

impl PluginWorker {
    fn retired(name: String, thread: Option<std::thread::JoinHandle<()>>) -> PluginWorker {
        let (tx, _) = mpsc::channel(1);
        PluginWorker {
            name,
            version: String::new(),
            digest: String::new(),
            manifest: Arc::new(Manifest { name: String::new(), version: String::new(), description: String::new(), subscribe: vec![], capabilities: Default::default(), limits: Default::default(), config: Default::default() }),
            caps: Capabilities::default(),
            tx,
            done: Mutex::new(None),
            thread: Mutex::new(thread),
        }
    }
}

fn spawn_worker(
    code: PluginCode,
    manifest: Manifest,
    caps: Capabilities,
    digest: String,
    ctx: Arc<WorkerContext>,
    wait_for: Option<stdmpsc::Receiver<()>>,
) -> PluginWorker {
    let (tx, rx) = mpsc::channel(ctx.delivery.queue);
    let (done_tx, done_rx) = stdmpsc::channel::<()>();
    let name = manifest.name.clone();
    let manifest = Arc::new(manifest);
    let w_caps = caps.clone();
    let thread = std::thread::Builder::new()
        .name(format!("plugin-{name}"))
        .spawn(move || {
            if let Some(prev) = wait_for {
                // Returns when the previous version's worker has exited.
                let _ = prev.recv();
            }
            Worker { code, caps: w_caps, ctx, instance: None, failures: 0 }.run(rx);
            drop(done_tx);
        })
        .expect("spawn plugin worker thread");
    PluginWorker {
        name,
        version: manifest.version.clone(),
        digest,
        manifest,
        caps,
        tx,
        done: Mutex::new(Some(done_rx)),
        thread: Mutex::new(Some(thread)),
    }
}

struct Worker {
    code: PluginCode,
    caps: Capabilities,
    ctx: Arc<WorkerContext>,
    instance: Option<Instance>,
    /// Consecutive calls that poisoned the instance, for backoff.
    failures: u32,
}

impl Worker {
    fn run(mut self, mut rx: mpsc::Receiver<Envelope>) {
        while let Some(env) = rx.blocking_recv() {
            self.handle(env);
        }
    }

    fn handle(&mut self, env: Envelope) {
        let name = self.code.name().to_string();
        let mut attempt = 0;
        loop {
            match self.call(&env) {
                Ok(effects) => {
                    self.failures = 0;
                    self.ctx.effects.submit(&name, &self.caps, &env.event, effects, &env.ticket);
                    return;
                }
                Err(err) => {
                    let retry = err.poisons_instance() && attempt < self.ctx.delivery.plugin_retries;
                    tracing::error!(
                        plugin = %name,
                        seq = env.event.seq,
                        event_id = %env.event.id,
                        attempt = attempt + 1,
                        "plugin failed on event: {err}{}",
                        if retry { "; retrying on a fresh instance" } else { "" }
                    );
                    if retry {
                        attempt += 1;
                        continue;
                    }
                    self.ctx.dead.record_held(&name, &env.event, &err.to_string(), &env.ticket);
                    if self.ctx.delivery.on_plugin_error == OnPluginError::Halt {
                        tracing::error!(plugin = %name, seq = env.event.seq, "on_plugin_error = \"halt\": stopping without checkpointing past this event");
                        // The event must never count as done: leak its ticket.
                        std::mem::forget(env.ticket);
                        self.ctx.halt.notify_one();
                    }
                    return;
                }
            }
        }
    }

    fn call(&mut self, env: &Envelope) -> Result<Vec<oplet_sdk::Effect>, CallError> {
        if self.instance.is_none() {
            self.backoff();
            match self.code.new_instance() {
                Ok(i) => self.instance = Some(i),
                Err(e) => {
                    self.failures += 1;
                    return Err(e);
                }
            }
        }
        let inst = self.instance.as_mut().expect("instance just made");
        let res = inst.handle(&env.event);
        if let Err(e) = &res {
            if e.poisons_instance() {
                // Its memory may be half-updated: never call it again.
                self.instance = None;
                self.failures += 1;
            }
        }
        res
    }

    /// After repeated failures, wait before making another instance, so a plugin
    /// that traps on everything does not spin a core.
    fn backoff(&self) {
        if self.failures >= 3 {
            let exp = (self.failures - 3).min(8);
            let delay = Duration::from_millis(10u64 << exp).min(Duration::from_secs(2));
            std::thread::sleep(delay);
        }
    }
}

/// Moves events from the sources to the plugin workers until every source is done.
pub async fn dispatch(mut rx: mpsc::Receiver<Envelope>, registry: Arc<Registry>) {
    while let Some(env) = rx.recv().await {
        let set = registry.snapshot();
        for w in set.iter() {
            if !w.manifest.matches(&env.event) {
                continue;
            }
            let job = Envelope { event: env.event.clone(), ticket: env.ticket.clone() };
            if w.tx.send(job).await.is_err() {
                tracing::error!(plugin = %w.name, seq = env.event.seq, "plugin worker is gone; event not delivered to it");
            }
        }
    }
}

//! The router: hands each event to every plugin whose subscription matches, and
//! keeps one plugin's failures from slowing the others.
//!
//! Each source has its own dispatcher thread that reads the source's bounded queue
//! in batches. Each plugin name has one `Slot`: a bounded queue and one worker
//! thread that runs whichever version is current, so at most one version of a
//! plugin runs at any moment, and every plugin sees a source's events in order.
//! Handoffs are batched: a worker takes everything queued under one lock and is
//! woken only when it was idle. A replaced plugin's new version takes over at the
//! next event not yet started; a removed plugin's queued events are dead-lettered;
//! a plugin that keeps failing is quarantined (README, "Failing plugins").

use crate::config::{DeliveryConfig, OnPluginError, OnQuarantine};
use crate::deadletter::{now_ms, DeadLetters};
use crate::effect::Effects;
use crate::envelope::Envelope;
use crate::manifest::{Capabilities, Manifest};
use crate::runtime::{CallError, Instance, PluginCode};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Most events a dispatcher takes from its source queue in one turn.
const DISPATCH_BATCH: usize = 512;

/// What workers share: where effects go, where failures go, what to do on them.
pub struct WorkerContext {
    pub effects: Arc<Effects>,
    pub dead: Arc<DeadLetters>,
    pub delivery: DeliveryConfig,
    /// Notified when `on_plugin_error = "halt"` stops the host.
    pub halt: Arc<tokio::sync::Notify>,
}

/// A plugin's health as the host reports it (`state_dir/plugins.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Its last event succeeded (or it has not run yet).
    Healthy = 0,
    /// Its last event failed; not yet quarantined.
    Failing = 1,
    /// Failed `quarantine_after` events in a row (or its queue filled while
    /// failing): its events are dead-lettered or held until the probe time.
    Quarantined = 2,
}

impl Health {
    fn from_u8(v: u8) -> Health {
        match v {
            1 => Health::Failing,
            2 => Health::Quarantined,
            _ => Health::Healthy,
        }
    }
}

/// One deployed version of a plugin: a module with the manifest it came with.
pub struct Version {
    pub code: PluginCode,
    pub manifest: Arc<Manifest>,
    pub caps: Capabilities,
    pub digest: String,
    /// Its per-call metric series, looked up once here rather than per call.
    pub metrics: crate::metrics::CallMetrics,
}

/// What the registry says about a loaded plugin.
#[derive(Debug, Clone)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub digest: String,
    pub health: Health,
}

/// A dispatcher's view of one plugin: where to put events, and which to put.
#[derive(Clone)]
struct Route {
    slot: Arc<Slot>,
    manifest: Arc<Manifest>,
}

/// The plugins by name, with their queues and workers.
pub struct Registry {
    slots: Mutex<BTreeMap<String, Arc<Slot>>>,
    /// What dispatchers read per batch; rebuilt on install and remove.
    routes: RwLock<Arc<Vec<Route>>>,
    ctx: Arc<WorkerContext>,
    /// Where plugin states are written on every change, if anywhere.
    status_file: Mutex<Option<PathBuf>>,
    started: Instant,
}

impl Registry {
    pub fn new(ctx: Arc<WorkerContext>) -> Arc<Registry> {
        Arc::new(Registry {
            slots: Mutex::new(BTreeMap::new()),
            routes: RwLock::new(Arc::new(Vec::new())),
            ctx,
            status_file: Mutex::new(None),
            started: Instant::now(),
        })
    }

    /// Writes each plugin's state to `path` (JSON, replaced atomically) whenever
    /// one changes (loaded, replaced, removed, failing, quarantined, recovered),
    /// and every second for the counters, while the registry lives.
    pub fn set_status_file(self: &Arc<Self>, path: PathBuf) {
        *self.status_file.lock().expect("status lock") = Some(path);
        self.write_status();
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("plugin-status".into()).spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            match weak.upgrade() {
                Some(r) => r.write_status(),
                None => return,
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the plugin status thread ({e}); plugins.json is written on changes only");
        }
    }

    /// The loaded plugins, by name.
    pub fn snapshot(&self) -> Vec<PluginInfo> {
        let slots = self.slots.lock().expect("slots lock");
        slots.values().filter_map(|s| s.info()).collect()
    }

    pub fn get(&self, name: &str) -> Option<PluginInfo> {
        let slot = self.slots.lock().expect("slots lock").get(name).cloned();
        slot.and_then(|s| s.info())
    }

    /// Adds a plugin, or replaces the one with the same name. The event in flight
    /// finishes on the old version; the next event not yet started (queued ones
    /// included) goes to the new one. A new version starts healthy.
    pub fn install(self: &Arc<Self>, code: PluginCode, manifest: Manifest, caps: Capabilities, digest: String) {
        let name = manifest.name.clone();
        let metrics = crate::metrics::CallMetrics::new(&name, &manifest.version);
        let version = Arc::new(Version { code, manifest: Arc::new(manifest), caps, digest, metrics });
        let mut slots = self.slots.lock().expect("slots lock");
        let slot = slots.entry(name.clone()).or_insert_with(|| Slot::new(&name, self.clone())).clone();
        {
            let mut st = slot.lock();
            st.version = Some(version);
            st.epoch += 1;
            slot.epoch.store(st.epoch, Ordering::Release);
            slot.set_health(Health::Healthy);
            st.failures = 0;
            st.reason.clear();
            if !st.worker_alive {
                if let Some(old) = st.worker.take() {
                    // It said it was done under this lock: it has exited or is about to.
                    let _ = old.join();
                }
                let s = slot.clone();
                let handle = std::thread::Builder::new()
                    .name(format!("plugin-{name}"))
                    .spawn(move || Worker::new(s).run())
                    .expect("spawn plugin worker thread");
                st.worker = Some(handle);
                st.worker_alive = true;
            }
            // A worker holding a quarantined event must try the new version now.
            slot.work.notify_all();
        }
        self.publish(&slots);
        drop(slots);
        self.write_status();
    }

    /// Unloads a plugin. Its queued events are dead-lettered ("plugin removed"); the
    /// event in flight finishes. Returns whether it was loaded.
    pub fn remove(&self, name: &str) -> bool {
        let slots = self.slots.lock().expect("slots lock");
        let Some(slot) = slots.get(name).cloned() else { return false };
        let orphans = {
            let mut st = slot.lock();
            if st.version.is_none() {
                return false;
            }
            st.version = None;
            slot.flush(&mut st, format!("plugin {name} was removed (its .wasm file was deleted) before this event ran"))
        };
        self.publish(&slots);
        drop(slots);
        slot.dead_letter(orphans.0, &orphans.1);
        self.write_status();
        true
    }

    fn publish(&self, slots: &BTreeMap<String, Arc<Slot>>) {
        let routes: Vec<Route> = slots
            .values()
            .filter_map(|s| s.lock().version.as_ref().map(|v| Route { slot: s.clone(), manifest: v.manifest.clone() }))
            .collect();
        *self.routes.write().expect("routes lock") = Arc::new(routes);
    }

    fn routes(&self) -> Arc<Vec<Route>> {
        self.routes.read().expect("routes lock").clone()
    }

    /// Starts the dispatcher of one source: it moves events from `rx` to the
    /// plugins' queues until every sender of `rx` is gone.
    pub fn spawn_dispatcher(self: &Arc<Self>, source: &str, rx: mpsc::Receiver<Envelope>) -> std::io::Result<JoinHandle<()>> {
        let registry = self.clone();
        std::thread::Builder::new().name(format!("dispatch-{source}")).spawn(move || registry.dispatch(rx))
    }

    fn dispatch(&self, mut rx: mpsc::Receiver<Envelope>) {
        let mut batch: Vec<Option<Envelope>> = Vec::with_capacity(DISPATCH_BATCH);
        // Per event, the last route it goes to: it is moved there, and copied (two
        // reference counts) only to the routes before it.
        let mut last: Vec<Option<usize>> = Vec::with_capacity(DISPATCH_BATCH);
        let mut mine: Vec<Envelope> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            batch.push(Some(first));
            while batch.len() < DISPATCH_BATCH {
                match rx.try_recv() {
                    Ok(env) => batch.push(Some(env)),
                    Err(_) => break,
                }
            }
            if let Some(Some(first)) = batch.first() {
                crate::metrics::events_in(&first.event.source, batch.len() as u64);
            }
            let routes = self.routes();
            last.extend(batch.iter().flatten().map(|e| routes.iter().rposition(|r| r.manifest.matches(&e.event))));
            for (r, route) in routes.iter().enumerate() {
                for (slot, last) in batch.iter_mut().zip(&last) {
                    match *last {
                        Some(l) if l == r => mine.extend(slot.take()),
                        Some(l) if r < l => {
                            if let Some(e) = slot.as_ref().filter(|e| route.manifest.matches(&e.event)) {
                                mine.push(Envelope { event: e.event.clone(), ticket: e.ticket.clone() });
                            }
                        }
                        _ => {}
                    }
                }
                if !mine.is_empty() {
                    route.slot.push(&mut mine);
                }
            }
            // Events no route took are done here (their tickets drop).
            batch.clear();
            last.clear();
        }
    }

    /// No more events will be dispatched: each worker finishes its queue and exits.
    /// Returns the worker threads to wait for.
    pub fn close(&self) -> Vec<JoinHandle<()>> {
        let slots = self.slots.lock().expect("slots lock");
        let mut threads = Vec::new();
        for slot in slots.values() {
            let mut st = slot.lock();
            st.closing = true;
            threads.extend(st.worker.take());
            slot.work.notify_all();
        }
        threads
    }

    /// Closes every queue and waits for the workers to drain. Call after the
    /// dispatchers have stopped.
    pub fn shutdown(&self) {
        for t in self.close() {
            let _ = t.join();
        }
        self.write_status();
        // Unload every version now that no worker runs it: what a plugin owns is
        // released before the process ends (its last log-rate report among it),
        // not left to threads that outlive the shutdown.
        let slots: Vec<Arc<Slot>> = self.slots.lock().expect("slots lock").values().cloned().collect();
        for slot in slots {
            let version = slot.lock().version.take();
            drop(version);
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn write_status(&self) {
        let path = self.status_file.lock().expect("status lock");
        let Some(path) = path.as_ref() else { return };
        let slots: Vec<Arc<Slot>> = self.slots.lock().expect("slots lock").values().cloned().collect();
        let mut all = serde_json::Map::new();
        for slot in slots {
            let st = slot.lock();
            let health = slot.health();
            let probe_in = slot.probe_at.load(Ordering::Relaxed).saturating_sub(self.now_ms());
            all.insert(
                slot.name.clone(),
                serde_json::json!({
                    "loaded": st.version.is_some(),
                    "version": st.version.as_ref().map(|v| v.manifest.version.clone()),
                    "digest": st.version.as_ref().map(|v| v.digest.clone()),
                    "state": health,
                    "consecutive_failures": st.failures,
                    "reason": st.reason,
                    "probe_in_ms": (health == Health::Quarantined).then_some(probe_in),
                    "queued": st.queue.len(),
                    "handled": slot.handled.load(Ordering::Relaxed),
                    "failed": slot.failed.load(Ordering::Relaxed),
                    "dead_lettered": slot.dead_lettered.load(Ordering::Relaxed),
                }),
            );
        }
        let text = serde_json::to_vec_pretty(&serde_json::json!({ "time_ms": now_ms(), "plugins": all })).expect("json serializes");
        let tmp = path.with_extension("json.tmp");
        let res = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, path));
        if let Err(e) = res {
            tracing::warn!(path = %path.display(), "cannot write the plugin status file: {e}");
        }
    }
}

/// One plugin name: its queue, its current version, its worker.
struct Slot {
    name: String,
    state: Mutex<SlotState>,
    /// The worker waits here for events, a new version, or the end.
    work: Condvar,
    /// Dispatchers wait here for room in the queue.
    space: Condvar,
    /// Mirrors `SlotState::epoch`, so the worker can notice a swap between two
    /// events without taking the lock.
    epoch: AtomicU64,
    health: AtomicU8,
    /// While quarantined: when (ms since the registry started) the next event may
    /// run as a probe.
    probe_at: AtomicU64,
    handled: AtomicU64,
    failed: AtomicU64,
    dead_lettered: AtomicU64,
    registry: std::sync::Weak<Registry>,
    ctx: Arc<WorkerContext>,
}

struct SlotState {
    version: Option<Arc<Version>>,
    /// Bumped by every install, removal and flush.
    epoch: u64,
    /// The last epoch whose queued events were dead-lettered, and why: events a
    /// worker took before it are dead-lettered too, never run on a later version.
    flushed_epoch: u64,
    flush_cause: String,
    queue: VecDeque<Envelope>,
    worker: Option<JoinHandle<()>>,
    worker_alive: bool,
    worker_idle: bool,
    senders_waiting: usize,
    closing: bool,
    /// Consecutive failed events, and the last cause (for the status file).
    failures: u32,
    reason: String,
}

impl Slot {
    fn new(name: &str, registry: Arc<Registry>) -> Arc<Slot> {
        Arc::new(Slot {
            name: name.to_string(),
            state: Mutex::new(SlotState {
                version: None,
                epoch: 0,
                flushed_epoch: 0,
                flush_cause: String::new(),
                queue: VecDeque::new(),
                worker: None,
                worker_alive: false,
                worker_idle: false,
                senders_waiting: 0,
                closing: false,
                failures: 0,
                reason: String::new(),
            }),
            work: Condvar::new(),
            space: Condvar::new(),
            epoch: AtomicU64::new(0),
            health: AtomicU8::new(Health::Healthy as u8),
            probe_at: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            ctx: registry.ctx.clone(),
            registry: Arc::downgrade(&registry),
        })
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().expect("slot lock")
    }

    fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Acquire))
    }

    fn set_health(&self, h: Health) {
        self.health.store(h as u8, Ordering::Release);
    }

    fn info(&self) -> Option<PluginInfo> {
        let st = self.lock();
        let v = st.version.as_ref()?;
        Some(PluginInfo { name: self.name.clone(), version: v.manifest.version.clone(), digest: v.digest.clone(), health: self.health() })
    }

    fn now_ms(&self) -> u64 {
        self.registry.upgrade().map(|r| r.now_ms()).unwrap_or(u64::MAX)
    }

    fn write_status(&self) {
        if let Some(r) = self.registry.upgrade() {
            r.write_status();
        }
    }

    /// Takes every queued event out to be dead-lettered with `cause`, and marks the
    /// events the worker already took as flushed too.
    fn flush(&self, st: &mut SlotState, cause: String) -> (Vec<Envelope>, String) {
        st.epoch += 1;
        st.flushed_epoch = st.epoch;
        st.flush_cause = cause.clone();
        self.epoch.store(st.epoch, Ordering::Release);
        let taken: Vec<Envelope> = st.queue.drain(..).collect();
        self.space.notify_all();
        self.work.notify_all();
        (taken, cause)
    }

    /// Records `envs` as dead letters for this plugin (one write and fsync), then
    /// releases their tickets.
    fn dead_letter(&self, envs: Vec<Envelope>, cause: &str) {
        if envs.is_empty() {
            return;
        }
        let events: Vec<&crate::envelope::Event> = envs.iter().map(|e| &*e.event).collect();
        if let Err(e) = self.ctx.dead.record(&self.name, &events, cause) {
            // Only when the host is stopping: the events are held, never passed.
            tracing::error!(plugin = %self.name, "{e}; stopping with {} event(s) held (replayed on the next start)", envs.len());
            for env in envs {
                env.ticket.hold();
            }
            return;
        }
        self.dead_lettered.fetch_add(envs.len() as u64, Ordering::Relaxed);
        drop(envs);
    }

    /// Quarantines the plugin now (called with the lock held).
    fn quarantine(&self, st: &mut SlotState, why: String) {
        let period = self.ctx.delivery.quarantine_ms;
        self.probe_at.store(self.now_ms().saturating_add(period), Ordering::Release);
        self.set_health(Health::Quarantined);
        tracing::error!(
            plugin = %self.name,
            consecutive_failures = st.failures,
            probe_in_ms = period,
            policy = ?self.ctx.delivery.on_quarantine,
            "plugin quarantined: {why}; its events are {} until a probe event succeeds (state in plugins.json)",
            match self.ctx.delivery.on_quarantine {
                OnQuarantine::DeadLetter => "dead-lettered",
                OnQuarantine::Hold => "held (the checkpoint waits)",
            }
        );
        st.reason = why;
        self.space.notify_all();
    }

    /// Whether new events go straight to the dead letters: quarantined, policy
    /// `dead_letter`, probe time not reached.
    fn shedding(&self) -> bool {
        self.health() == Health::Quarantined
            && self.ctx.delivery.on_quarantine == OnQuarantine::DeadLetter
            && self.now_ms() < self.probe_at.load(Ordering::Acquire)
    }

    /// Queues `envs` (leaving it empty). Waits for room while the plugin is
    /// healthy (backpressure). A failing plugin never makes the dispatcher wait
    /// under policy `dead_letter`: a full queue quarantines it, and a quarantined
    /// plugin's events are dead-lettered at once, its older queued events first.
    fn push(&self, envs: &mut Vec<Envelope>) {
        let cap = self.ctx.delivery.queue.max(1);
        let mut shed: Option<(Vec<Envelope>, String)> = None;
        let mut tripped = false;
        let mut st = self.lock();
        loop {
            if st.version.is_none() {
                // Removed after this dispatcher read its routes: not delivered,
                // as for any plugin that is not loaded.
                break;
            }
            if self.shedding() {
                let why = format!("plugin {} is quarantined: {}", self.name, st.reason);
                let (mut taken, cause) = self.flush(&mut st, why);
                taken.append(envs);
                shed = Some((taken, cause));
                break;
            }
            let room = cap.saturating_sub(st.queue.len());
            let n = room.min(envs.len());
            if n > 0 {
                st.queue.extend(envs.drain(..n));
                if st.worker_idle {
                    self.work.notify_one();
                }
            }
            if envs.is_empty() {
                break;
            }
            let delivery = &self.ctx.delivery;
            if self.health() != Health::Healthy && delivery.quarantine_after > 0 && delivery.on_quarantine == OnQuarantine::DeadLetter {
                let why = format!(
                    "its queue of {cap} events filled while it was failing ({} failed event(s) in a row; last: {})",
                    st.failures, st.reason
                );
                self.quarantine(&mut st, why);
                tripped = true;
                continue;
            }
            st.senders_waiting += 1;
            st = self.space.wait(st).expect("slot lock");
            st.senders_waiting -= 1;
        }
        drop(st);
        envs.clear();
        if let Some((taken, cause)) = shed {
            self.dead_letter(taken, &cause);
        }
        if tripped {
            self.write_status();
        }
    }
}

/// The thread that runs one plugin's events, one version at a time.
struct Worker {
    slot: Arc<Slot>,
    version: Option<Arc<Version>>,
    instance: Option<Instance>,
    /// Taken from the queue, not yet done; swapped with the queue each turn so
    /// neither reallocates.
    batch: VecDeque<Envelope>,
    /// Events to dead-letter together at the end of the turn.
    dead: Vec<(Envelope, String)>,
}

enum Step {
    Done,
    /// Run this event again: the version changed while it was held.
    Again(Envelope),
}

impl Worker {
    fn new(slot: Arc<Slot>) -> Worker {
        Worker { slot, version: None, instance: None, batch: VecDeque::new(), dead: Vec::new() }
    }

    fn run(mut self) {
        let slot = self.slot.clone();
        loop {
            let epoch = {
                let mut st = slot.lock();
                loop {
                    if !st.queue.is_empty() {
                        break;
                    }
                    if st.version.is_none() || st.closing {
                        st.worker_alive = false;
                        slot.space.notify_all();
                        return;
                    }
                    st.worker_idle = true;
                    st = slot.work.wait(st).expect("slot lock");
                    st.worker_idle = false;
                }
                std::mem::swap(&mut st.queue, &mut self.batch);
                if st.senders_waiting > 0 {
                    slot.space.notify_all();
                }
                self.adopt(st.version.clone());
                st.epoch
            };
            self.run_batch(epoch);
            self.flush_dead();
        }
    }

    /// Switches to `version` if it is not the one running (a fresh instance).
    fn adopt(&mut self, version: Option<Arc<Version>>) {
        let same = match (&self.version, &version) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.version = version;
            self.instance = None;
        }
    }

    /// Runs the taken batch.
    fn run_batch(&mut self, mut epoch: u64) {
        while let Some(mut env) = self.batch.pop_front() {
            loop {
                if self.slot.epoch.load(Ordering::Acquire) != epoch {
                    let st = self.slot.lock();
                    if st.flushed_epoch > epoch {
                        // Removed or quarantined after this batch was taken: what
                        // was queued then is dead-lettered, never run on a later version.
                        let cause = st.flush_cause.clone();
                        drop(st);
                        self.dead.push((env, cause.clone()));
                        let rest: Vec<Envelope> = self.batch.drain(..).collect();
                        self.dead.extend(rest.into_iter().map(|e| (e, cause.clone())));
                        return;
                    }
                    epoch = st.epoch;
                    let v = st.version.clone();
                    drop(st);
                    self.adopt(v);
                }
                match self.handle(env, epoch) {
                    Step::Done => break,
                    Step::Again(e) => env = e,
                }
            }
        }
    }

    fn flush_dead(&mut self) {
        if self.dead.is_empty() {
            return;
        }
        let dead = std::mem::take(&mut self.dead);
        // Group consecutive entries by cause: one write and fsync per group.
        let mut group: Vec<Envelope> = Vec::new();
        let mut cause = String::new();
        for (env, c) in dead {
            if c != cause && !group.is_empty() {
                self.slot.dead_letter(std::mem::take(&mut group), &cause);
            }
            cause = c;
            group.push(env);
        }
        self.slot.dead_letter(group, &cause);
    }

    fn handle(&mut self, env: Envelope, epoch: u64) -> Step {
        let Some(version) = self.version.clone() else {
            // Flushed above when removed; nothing to run it on.
            return Step::Done;
        };
        if !version.manifest.matches(&env.event) {
            // Routed by the previous version's subscription; this one does not take it.
            return Step::Done;
        }
        let slot = self.slot.clone();
        let delivery = &slot.ctx.delivery;
        if slot.health() == Health::Quarantined && slot.now_ms() < slot.probe_at.load(Ordering::Acquire) {
            match delivery.on_quarantine {
                OnQuarantine::DeadLetter => {
                    let cause = format!("plugin {} is quarantined: {}", slot.name, slot.lock().reason);
                    self.dead.push((env, cause));
                    return Step::Done;
                }
                OnQuarantine::Hold => {
                    // Dead letters already decided must not wait behind the hold.
                    self.flush_dead();
                    let mut st = slot.lock();
                    loop {
                        if st.epoch != epoch {
                            return Step::Again(env);
                        }
                        let now = slot.now_ms();
                        let at = slot.probe_at.load(Ordering::Acquire);
                        if now >= at || slot.health() != Health::Quarantined {
                            break;
                        }
                        st = slot.work.wait_timeout(st, Duration::from_millis((at - now).min(60_000))).expect("slot lock").0;
                    }
                    drop(st);
                    tracing::info!(plugin = %slot.name, seq = env.event.seq, "probing the quarantined plugin with the held event");
                }
            }
        }
        let name = slot.name.as_str();
        let mut attempt = 0;
        let err = loop {
            match self.call(&version, &env) {
                Ok(effects) => {
                    slot.handled.fetch_add(1, Ordering::Relaxed);
                    slot.ctx.effects.submit(name, &version.caps, &env.event, effects, &env.ticket);
                    if slot.health() != Health::Healthy {
                        let mut st = slot.lock();
                        tracing::info!(plugin = %name, seq = env.event.seq, after_failures = st.failures, "plugin recovered: an event succeeded");
                        st.failures = 0;
                        st.reason.clear();
                        slot.set_health(Health::Healthy);
                        drop(st);
                        slot.write_status();
                    }
                    return Step::Done;
                }
                Err(err) => {
                    let retry = err.poisons_instance() && attempt < delivery.plugin_retries;
                    tracing::error!(
                        plugin = %name,
                        source = %env.event.source,
                        seq = env.event.seq,
                        event_id = %env.event.id,
                        attempt = attempt + 1,
                        "plugin failed on event: {err}{}",
                        if retry { "; retrying on a fresh instance" } else { "" }
                    );
                    if retry && slot.epoch.load(Ordering::Acquire) == epoch {
                        attempt += 1;
                        continue;
                    }
                    break err;
                }
            }
        };
        slot.failed.fetch_add(1, Ordering::Relaxed);
        let cause = err.to_string();
        let mut st = slot.lock();
        st.failures = st.failures.saturating_add(1);
        st.reason = format!("{name} failed on seq {}: {cause}", env.event.seq);
        let was = slot.health();
        let limit = delivery.quarantine_after;
        let quarantine = limit > 0 && st.failures >= limit;
        if quarantine {
            let why = format!("{} failed event(s) in a row (last: {cause})", st.failures);
            slot.quarantine(&mut st, why);
        } else if was == Health::Healthy {
            slot.set_health(Health::Failing);
            // A dispatcher waiting for room must learn it need not wait.
            slot.space.notify_all();
        }
        let hold = quarantine && delivery.on_quarantine == OnQuarantine::Hold;
        drop(st);
        if was != slot.health() {
            slot.write_status();
        }
        if hold {
            // Held, not dead-lettered: it runs again as the probe.
            return Step::Again(env);
        }
        self.flush_dead();
        slot.ctx.dead.record_held(name, &env.event, &cause, &env.ticket);
        slot.dead_lettered.fetch_add(1, Ordering::Relaxed);
        if delivery.on_plugin_error == OnPluginError::Halt {
            tracing::error!(plugin = %name, seq = env.event.seq, "on_plugin_error = \"halt\": stopping without checkpointing past this event");
            // The event must never count as done: leak its ticket.
            std::mem::forget(env.ticket);
            slot.ctx.halt.notify_one();
        }
        Step::Done
    }

    fn call(&mut self, version: &Version, env: &Envelope) -> Result<Vec<oplet_sdk::Effect>, CallError> {
        if self.instance.is_none() {
            self.instance = Some(version.code.new_instance()?);
        }
        let inst = self.instance.as_mut().expect("instance just made");
        #[cfg(test)]
        tests::HANDED.lock().expect("test log").push((self.slot.name.clone(), env.event.seq, env.event.bytes().as_ptr() as usize));
        let res = version.metrics.time(|| inst.handle(env.event.bytes()));
        if let Err(e) = &res {
            if e.poisons_instance() {
                // Its memory may be half-updated: never call it again.
                self.instance = None;
            }
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Tracker;
    use crate::deadletter::DeadLetters;
    use crate::effect::Executors;
    use crate::envelope::Event;
    use crate::runtime::{Limits, Runtime};
    use oplet_sdk::{Change, EventBody, OperationType};
    use std::path::Path;

    /// (plugin, seq, address of the bytes) of every call a worker made.
    pub(super) static HANDED: Mutex<Vec<(String, u64, usize)>> = Mutex::new(Vec::new());

    #[test]
    fn every_subscribed_plugin_is_handed_the_same_bytes_of_an_event() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = rt.enter();
        let dir = std::env::temp_dir().join(format!("oplet-router-shared-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dead = Arc::new(DeadLetters::open(&dir.join("dead.jsonl")).unwrap());
        let effects = Arc::new(Effects::new(Executors::default(), dead.clone()));
        let ctx = Arc::new(WorkerContext { effects, dead, delivery: DeliveryConfig::default(), halt: Arc::new(tokio::sync::Notify::new()) });
        let registry = Registry::new(ctx);
        let runtime = Runtime::new(None).unwrap();
        let wasm = wat::parse_file(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/wat-plugin/plugin.wat")).unwrap();
        // Four plugins take every change; a fifth takes socket events only.
        let names = ["shared-a", "shared-b", "shared-c", "shared-d", "shared-socket"];
        for name in names {
            let kind = if name == "shared-socket" { "kind = \"socket\"\n" } else { "" };
            let manifest = Manifest::from_toml(&format!("name = \"{name}\"\n[[subscribe]]\n{kind}"), Path::new("t.toml")).unwrap();
            let code = PluginCode::load(&runtime, name, &wasm, Limits::default(), &oplet_sdk::Value::Null).unwrap();
            registry.install(code, manifest, Capabilities::default(), "digest".into());
        }
        let tracker = Tracker::new("t", 1, None);
        let events: Vec<Arc<Event>> = (1..=3)
            .map(|seq| {
                let change = Change { op: OperationType::Insert, db: "app".into(), coll: "items".into(), ..Default::default() };
                let e = oplet_sdk::Event { seq, id: format!("e{seq}"), source: "t".into(), time_ms: 0, body: EventBody::Change(change) };
                Arc::new(Event::encode(&e).unwrap())
            })
            .collect();
        let (tx, rx) = mpsc::channel(8);
        let dispatcher = registry.spawn_dispatcher("t", rx).unwrap();
        rt.block_on(async {
            for e in &events {
                tx.send(Envelope { event: e.clone(), ticket: tracker.ticket(e.seq, None) }).await.unwrap();
            }
        });
        drop(tx);
        dispatcher.join().unwrap();
        registry.shutdown();
        assert_eq!(tracker.completed(), 3, "every event done once every worker has drained");
        let handed: Vec<_> = HANDED.lock().unwrap().iter().filter(|(p, ..)| p.starts_with("shared-")).cloned().collect();
        assert!(!handed.iter().any(|(p, ..)| p == "shared-socket"), "the header filter kept changes from the socket plugin");
        for e in &events {
            let calls: Vec<_> = handed.iter().filter(|(_, seq, _)| *seq == e.seq).collect();
            assert_eq!(calls.len(), 4, "four plugins ran seq {}: {calls:?}", e.seq);
            let at = e.bytes().as_ptr() as usize;
            assert!(calls.iter().all(|(.., addr)| *addr == at), "seq {}: every plugin read the one encoding at {at:#x}: {calls:?}", e.seq);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! The host's Prometheus metrics: one process-wide registry with typed handles.
//!
//! Call sites elsewhere make one-line calls (`metrics::events_in(&source)`) so the
//! code around them stays as it is; values that already live somewhere (queue
//! depths, plugin counters, tracker positions, process CPU and RSS) are read when
//! `/metrics` is scraped (`admin`), not copied on every event.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabel {
    pub plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginVersionLabel {
    pub plugin: String,
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabel {
    pub plugin: String,
    pub cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EffectLabel {
    pub kind: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    pub sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabel {
    pub stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeaseChangeLabel {
    pub source: String,
    pub change: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginStateLabel {
    pub plugin: String,
    pub state: String,
}

/// Every instrument, registered once in `registry`.
pub struct Metrics {
    registry: Registry,
    pub events_in: Family<SourceLabel, Counter>,
    pub plugin_handled: Family<PluginVersionLabel, Counter>,
    pub plugin_call_seconds: Family<PluginLabel, Histogram>,
    pub plugin_failures: Family<FailureLabel, Counter>,
    pub effects: Family<EffectLabel, Counter>,
    pub sink_batch_size: Family<SinkLabel, Histogram>,
    pub sink_commit_seconds: Family<SinkLabel, Histogram>,
    pub checkpoint_lag_events: Family<StreamLabel, Gauge>,
    pub checkpoint_lag_seconds: Family<StreamLabel, Gauge<f64, AtomicU64>>,
    pub source_queue_depth: Family<SourceLabel, Gauge>,
    pub plugin_queue_depth: Family<PluginLabel, Gauge>,
    pub plugin_state: Family<PluginStateLabel, Gauge>,
    pub plugin_dead_lettered: Family<PluginLabel, Gauge>,
    pub lease_held: Family<StreamLabel, Gauge>,
    pub lease_changes: Family<LeaseChangeLabel, Counter>,
    pub reloads: Counter,
    pub reloads_refused: Counter,
    pub dead_letters: Gauge,
    pub socket_clients: Gauge,
    pub cpu_seconds: Gauge<f64, AtomicU64>,
    pub rss_bytes: Gauge,
    pub snapshot_done: Family<StreamLabel, Gauge>,
    pub snapshot_total: Family<StreamLabel, Gauge>,
    pub snapshot_rate: Family<StreamLabel, Gauge<f64, AtomicU64>>,
    /// What scrapes read live: each source's queue, each stream's tracker.
    watched: Mutex<Watched>,
}

#[derive(Default)]
struct Watched {
    queues: Vec<(String, tokio::sync::mpsc::WeakSender<crate::envelope::Envelope>, usize)>,
    trackers: Vec<Weak<crate::checkpoint::Tracker>>,
    /// Every snapshot or backfill of this run, for the status page.
    snapshots: Vec<(String, SnapshotGauges)>,
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    // 10 µs to ~20 s: a plugin call is microseconds, a sink commit milliseconds.
    exponential_buckets(0.00001, 4.0, 11)
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("oplet");
        let m = Metrics {
            events_in: Family::default(),
            plugin_handled: Family::default(),
            plugin_call_seconds: Family::new_with_constructor(|| Histogram::new(seconds_buckets())),
            plugin_failures: Family::default(),
            effects: Family::default(),
            sink_batch_size: Family::new_with_constructor(|| Histogram::new(exponential_buckets(1.0, 2.0, 12))),
            sink_commit_seconds: Family::new_with_constructor(|| Histogram::new(seconds_buckets())),
            checkpoint_lag_events: Family::default(),
            checkpoint_lag_seconds: Family::default(),
            source_queue_depth: Family::default(),
            plugin_queue_depth: Family::default(),
            plugin_state: Family::default(),
            plugin_dead_lettered: Family::default(),
            lease_held: Family::default(),
            lease_changes: Family::default(),
            reloads: Counter::default(),
            reloads_refused: Counter::default(),
            dead_letters: Gauge::default(),
            socket_clients: Gauge::default(),
            cpu_seconds: Gauge::default(),
            rss_bytes: Gauge::default(),
            snapshot_done: Family::default(),
            snapshot_total: Family::default(),
            snapshot_rate: Family::default(),
            watched: Mutex::new(Watched::default()),
            registry: Registry::default(),
        };
        registry.register("events_in", "Events a source handed to the router", m.events_in.clone());
        registry.register("plugin_events_handled", "Events a plugin version handled without error", m.plugin_handled.clone());
        registry.register("plugin_call_seconds", "Time of one plugin call (encode, run, decode)", m.plugin_call_seconds.clone());
        registry.register("plugin_failures", "Failed plugin calls, by cause (timeout, out_of_memory, trap, plugin_error...)", m.plugin_failures.clone());
        registry.register("effects", "Effects by kind and outcome (applied, refused, failed, dead_lettered)", m.effects.clone());
        registry.register("sink_batch_size", "Effects per sink batch", m.sink_batch_size.clone());
        registry.register("sink_commit_seconds", "Time to apply one sink batch (write and fsync, commit, pipeline)", m.sink_commit_seconds.clone());
        registry.register("checkpoint_lag_events", "Events taken in but not yet done, per stream (the checkpoint is behind them)", m.checkpoint_lag_events.clone());
        registry.register("checkpoint_lag_seconds", "Seconds the checkpoint is behind, per stream: now minus the source time of the oldest event not yet done (a MongoDB change's wallTime/clusterTime), 0 when none waits", m.checkpoint_lag_seconds.clone());
        registry.register("source_queue_depth", "Events waiting in a source's queue for its dispatcher", m.source_queue_depth.clone());
        registry.register("plugin_queue_depth", "Events waiting in a plugin's queue", m.plugin_queue_depth.clone());
        registry.register("plugin_state", "1 for the state each plugin is in (healthy, failing, quarantined)", m.plugin_state.clone());
        registry.register("plugin_dead_lettered", "Events a plugin dead-lettered in this run", m.plugin_dead_lettered.clone());
        registry.register("cluster_lease_held", "Cluster mode: 1 for each stream whose lease this host holds, 0 once it gave it up or lost it", m.lease_held.clone());
        registry.register("cluster_lease_changes", "Cluster mode: leases taken, handed over, lost (not renewed in time, refused checkpoint write, taken by another host)", m.lease_changes.clone());
        registry.register("reloads", "Plugin versions installed (first load and reloads)", m.reloads.clone());
        registry.register("reloads_refused", "Plugin modules or manifests refused at load (the old version kept running)", m.reloads_refused.clone());
        registry.register("dead_letters", "Dead letters written in this run", m.dead_letters.clone());
        registry.register("socket_clients", "Connected Socket.IO clients", m.socket_clients.clone());
        registry.register("process_cpu_seconds", "User and system CPU time of the host process", m.cpu_seconds.clone());
        registry.register("process_resident_memory_bytes", "Resident set size of the host process", m.rss_bytes.clone());
        registry.register("snapshot_documents_done", "Documents an initial snapshot or backfill has read and handed to the router, runs before a restart included, per stream", m.snapshot_done.clone());
        registry.register("snapshot_documents_estimated", "Documents the snapshot or backfill expects to read (the collection's estimated count, or the filter's count), per stream; 0 if unknown", m.snapshot_total.clone());
        registry.register("snapshot_documents_per_second", "Documents per second the snapshot or backfill reads in this run (over the run so far; at the end, over the whole run)", m.snapshot_rate.clone());
        Metrics { registry, ..m }
    }

    /// The exposition text (OpenMetrics, which Prometheus reads).
    pub fn encode(&self) -> String {
        self.refresh_watched();
        if let Some((cpu, rss)) = process_usage() {
            self.cpu_seconds.set(cpu);
            self.rss_bytes.set(rss as i64);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    fn refresh_watched(&self) {
        let mut w = self.watched.lock().expect("metrics lock");
        w.queues.retain(|(source, tx, bound)| match tx.upgrade() {
            Some(tx) => {
                let depth = bound.saturating_sub(tx.capacity());
                self.source_queue_depth.get_or_create(&SourceLabel { source: source.clone() }).set(depth as i64);
                true
            }
            None => false,
        });
        w.trackers.retain(|t| match t.upgrade() {
            Some(t) => {
                let label = StreamLabel { stream: t.source().to_string() };
                let (behind, secs) = t.lag();
                self.checkpoint_lag_events.get_or_create(&label).set(behind as i64);
                self.checkpoint_lag_seconds.get_or_create(&label).set(secs);
                true
            }
            None => false,
        });
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

/// A source handed one event to the router.
pub fn events_in(source: &str, n: u64) {
    METRICS.events_in.get_or_create(&SourceLabel { source: source.to_string() }).inc_by(n);
}

/// The per-call series of one plugin version, looked up once when the version is
/// installed: a lookup per call allocated three label strings and hashed them
/// under the families' locks. The handles share their values with the registry.
#[derive(Clone)]
pub struct CallMetrics {
    plugin: String,
    seconds: Histogram,
    handled: Counter,
}

impl CallMetrics {
    pub fn new(plugin: &str, version: &str) -> CallMetrics {
        let seconds = METRICS.plugin_call_seconds.get_or_create(&PluginLabel { plugin: plugin.to_string() }).clone();
        let label = PluginVersionLabel { plugin: plugin.to_string(), version: version.to_string() };
        let handled = METRICS.plugin_handled.get_or_create(&label).clone();
        CallMetrics { plugin: plugin.to_string(), seconds, handled }
    }

    /// Times one call; counts it as handled when it succeeded, or its failure's
    /// cause (failures are rare: their series is looked up when one happens).
    pub fn time<T>(&self, call: impl FnOnce() -> Result<T, crate::runtime::CallError>) -> Result<T, crate::runtime::CallError> {
        let started = Instant::now();
        let res = call();
        self.seconds.observe(started.elapsed().as_secs_f64());
        match &res {
            Ok(_) => {
                self.handled.inc();
            }
            Err(e) => {
                let label = FailureLabel { plugin: self.plugin.clone(), cause: failure_cause(e).to_string() };
                METRICS.plugin_failures.get_or_create(&label).inc();
            }
        }
        res
    }
}

/// A short, stable label for a failed call.
pub fn failure_cause(e: &crate::runtime::CallError) -> &'static str {
    use crate::runtime::CallError as E;
    match e {
        E::Timeout { .. } => "timeout",
        E::OutOfMemory { .. } => "out_of_memory",
        E::Trap(_) => "trap",
        E::ReplyTooLarge { .. } => "reply_too_large",
        E::BadReply(_) => "bad_reply",
        E::TooManyEffects { .. } => "too_many_effects",
        E::Plugin(_) => "plugin_error",
        E::Instantiate(_) => "instantiate",
    }
}

/// `n` effects of `kind` (`row_upsert`, `cache_delete`...) ended as `outcome`
/// (`applied`, `refused`, `failed`, `dead_lettered`).
pub fn effects(kind: &str, outcome: &str, n: u64) {
    METRICS.effects.get_or_create(&EffectLabel { kind: kind.to_string(), outcome: outcome.to_string() }).inc_by(n);
}

/// A sink (`postgres`, `redis`, `audit`) applied a batch of `size` effects in `took`.
pub fn sink_batch(sink: &str, size: usize, took: Duration) {
    let label = SinkLabel { sink: sink.to_string() };
    METRICS.sink_batch_size.get_or_create(&label).observe(size as f64);
    METRICS.sink_commit_seconds.get_or_create(&label).observe(took.as_secs_f64());
}

/// A plugin version was installed (`true`) or a module or manifest refused (`false`).
pub fn reload(installed: bool) {
    if installed {
        METRICS.reloads.inc();
    } else {
        METRICS.reloads_refused.inc();
    }
}

/// Reads `source`'s queue depth at each scrape; `bound` is the queue's capacity.
/// Holds only a weak sender, so the queue still closes when its source ends.
pub fn watch_queue(source: &str, tx: &tokio::sync::mpsc::Sender<crate::envelope::Envelope>) {
    let mut w = METRICS.watched.lock().expect("metrics lock");
    w.queues.push((source.to_string(), tx.downgrade(), tx.max_capacity()));
}

/// Reads a stream's checkpoint lag at each scrape.
pub fn watch_tracker(tracker: &Arc<crate::checkpoint::Tracker>) {
    METRICS.watched.lock().expect("metrics lock").trackers.push(Arc::downgrade(tracker));
}

/// The progress gauges of one snapshot or backfill: shared handles, so setting
/// them per document is an atomic store, not a family lookup.
#[derive(Clone, Default)]
pub struct SnapshotGauges {
    done: Gauge,
    total: Gauge,
    rate: Gauge<f64, AtomicU64>,
}

impl SnapshotGauges {
    pub fn done(&self, done: u64) {
        self.done.set(done as i64);
    }

    pub fn total(&self, total: u64) {
        self.total.set(total as i64);
    }

    pub fn rate(&self, per_second: f64) {
        self.rate.set(per_second);
    }
}

/// The gauges of the snapshot of `stream` (`source.db.coll`, or
/// `backfill.PLUGIN.source.db.coll`), listed on the status page too.
pub fn snapshot(stream: &str) -> SnapshotGauges {
    let label = StreamLabel { stream: stream.to_string() };
    let g = SnapshotGauges {
        done: METRICS.snapshot_done.get_or_create(&label).clone(),
        total: METRICS.snapshot_total.get_or_create(&label).clone(),
        rate: METRICS.snapshot_rate.get_or_create(&label).clone(),
    };
    let mut w = METRICS.watched.lock().expect("metrics lock");
    if !w.snapshots.iter().any(|(s, _)| s == stream) {
        w.snapshots.push((stream.to_string(), g.clone()));
    }
    g
}

/// Every snapshot of this run: (stream, documents done, estimated total, docs/s).
pub fn snapshots() -> Vec<(String, u64, u64, f64)> {
    let w = METRICS.watched.lock().expect("metrics lock");
    w.snapshots.iter().map(|(s, g)| (s.clone(), g.done.get().max(0) as u64, g.total.get().max(0) as u64, g.rate.get())).collect()
}

/// Each watched stream's checkpoint lag: (stream, events behind, seconds).
pub fn stream_lags() -> Vec<(String, u64, f64)> {
    let w = METRICS.watched.lock().expect("metrics lock");
    w.trackers
        .iter()
        .filter_map(|t| t.upgrade())
        .map(|t| {
            let (behind, secs) = t.lag();
            (t.source().to_string(), behind, secs)
        })
        .collect()
}

/// CPU seconds (user + system) and resident bytes of this process, from /proc.
pub fn process_usage() -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux ABI the host builds for.
    let cpu = ticks as f64 / 100.0;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let rss_kb: u64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some((cpu, rss_kb * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_in_the_exposition_with_their_labels() {
        events_in("unit-src", 1);
        effects("row_upsert", "applied", 3);
        let text = get().encode();
        assert!(text.contains("oplet_events_in_total{source=\"unit-src\"} 1"), "{text}");
        assert!(text.contains("oplet_effects_total{kind=\"row_upsert\",outcome=\"applied\"} 3"), "{text}");
        assert!(text.contains("oplet_process_resident_memory_bytes "), "{text}");
    }

    #[test]
    fn snapshot_progress_shows_per_stream_and_on_the_status_list() {
        let g = snapshot("unit.db.coll");
        g.total(10);
        g.done(4);
        g.rate(2.5);
        snapshot("unit.db.coll").done(10);
        let text = get().encode();
        assert!(text.contains("oplet_snapshot_documents_done{stream=\"unit.db.coll\"} 10"), "{text}");
        assert!(text.contains("oplet_snapshot_documents_estimated{stream=\"unit.db.coll\"} 10"), "{text}");
        assert!(text.contains("oplet_snapshot_documents_per_second{stream=\"unit.db.coll\"} 2.5"), "{text}");
        let listed: Vec<_> = snapshots().into_iter().filter(|s| s.0 == "unit.db.coll").collect();
        assert_eq!(listed, vec![("unit.db.coll".to_string(), 10, 10, 2.5)], "listed once, with the shared values");
    }

    #[test]
    fn a_cached_call_handle_counts_into_the_registry_series() {
        let m = CallMetrics::new("unit-cached", "1.2.3");
        for _ in 0..3 {
            m.time(|| Ok::<_, crate::runtime::CallError>(())).unwrap();
        }
        let err = m.time(|| Err::<(), _>(crate::runtime::CallError::Plugin("no".into())));
        assert!(err.is_err());
        // A second handle for the same version shares the series.
        CallMetrics::new("unit-cached", "1.2.3").time(|| Ok::<_, crate::runtime::CallError>(())).unwrap();
        let text = get().encode();
        assert!(text.contains("oplet_plugin_events_handled_total{plugin=\"unit-cached\",version=\"1.2.3\"} 4"), "{text}");
        assert!(text.contains("oplet_plugin_failures_total{plugin=\"unit-cached\",cause=\"plugin_error\"} 1"), "{text}");
        assert!(text.contains("oplet_plugin_call_seconds_count{plugin=\"unit-cached\"} 5"), "{text}");
    }

    #[test]
    fn process_usage_reads_this_process() {
        let (cpu, rss) = process_usage().expect("/proc is readable on Linux");
        assert!(cpu >= 0.0);
        assert!(rss > 1024 * 1024, "rss {rss}");
    }
}

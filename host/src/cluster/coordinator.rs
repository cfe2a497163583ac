//! One MongoDB source's targets under leases: which this host runs, for how long.
//!
//! Every `renew_ms` the coordinator beats its heartbeat, renews the leases it holds
//! (each renewal pushes the target's local deadline to `sent + lease - lease/5` on
//! the monotonic clock: a target whose deadline passes is stopped, renewed or not),
//! gives back what is over its fair share at a safe point (every event taken in
//! done and checkpointed), and takes free or expired leases up to its share.

use super::lease::{fair_share, now_ms, Leases};
use super::{Fence, Membership};
use futures_util::future::BoxFuture;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Runs one target until `stop`, its checkpoint writes fenced by `fence` (the
/// MongoDB source implements it; it calls `fence.started` once it has a tracker).
pub trait Runner: Send + Sync + 'static {
    fn run(&self, index: usize, fence: Arc<Fence>, stop: watch::Receiver<bool>) -> BoxFuture<'static, anyhow::Result<()>>;
}

/// Why a held target stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// Over this host's share: handed over at a safe point.
    Release,
    /// The host stops: the lease is given back after the final checkpoint.
    Shutdown,
    /// The lease may be someone else's: stop at once, give nothing back.
    Lost(&'static str),
}

enum Report {
    /// The target's stream stopped (with its error, if it failed).
    RunEnded(usize, Option<anyhow::Error>),
    /// Its saver ended and its lease was given back if it was to be.
    Finished(usize),
}

struct Held {
    epoch: i64,
    deadline: watch::Sender<Instant>,
    ask: watch::Sender<Option<Why>>,
}

pub struct Coordinator<R: Runner> {
    pub source: String,
    /// The targets' checkpoint keys, by index.
    pub keys: Vec<String>,
    pub leases: Leases,
    pub membership: Arc<Membership>,
    pub runner: Arc<R>,
    /// Turns true once the host drained and flushed everything: last saves.
    pub host_saver_stop: watch::Receiver<bool>,
    /// The host awaits these after its final flush (each target's last save and release).
    pub savers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl<R: Runner> Coordinator<R> {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let cfg = &self.membership.cfg;
        let lease = Duration::from_millis(cfg.lease_ms);
        let renew = Duration::from_millis(cfg.renew_ms);
        let margin = lease / 5;
        let me = self.membership.name.clone();
        let (tx, mut rx) = mpsc::unbounded_channel::<Report>();
        let mut held: BTreeMap<usize, Held> = BTreeMap::new();
        let mut releasing: BTreeSet<usize> = BTreeSet::new();
        let mut finishing: BTreeSet<usize> = BTreeSet::new();
        let mut warned = false;
        tracing::info!(source = %self.source, host = %me, "cluster: sharing {} stream(s) through leases in {} (lease {} ms, renewed every {} ms)", self.keys.len(), self.leases.coll.namespace(), cfg.lease_ms, cfg.renew_ms);
        super::NAME.get_or_init(|| me.clone()); // one name per process, whatever the source
        self.wait_out_namesake(&mut shutdown).await?;
        let mut beaten = false;
        // A duplicate name found while running: the streams stop without giving
        // their leases back (the other host of that name renews them).
        let mut namesake = false;
        let failure = 'rounds: loop {
            let round = Instant::now();
            let now = now_ms();
            // Each step is bounded: a MongoDB that does not answer must not hold up
            // the renewals (the local deadlines stop the targets meanwhile). The
            // heartbeats are read before this host's own is written: a heartbeat of
            // this name written by another process since is a second host of this name.
            let hosts = tokio::time::timeout(renew, self.leases.hosts()).await;
            if let Ok(Ok(hosts)) = &hosts {
                if let Some(other) = hosts.iter().find(|h| h.name == me && beaten && !self.leases.is_mine(h)) {
                    namesake = true;
                    break 'rounds Some(namesake_error(&me, other, now));
                }
            }
            let beat = tokio::time::timeout(renew, self.leases.heartbeat()).await;
            beaten |= matches!(beat, Ok(Ok(())));
            let docs = tokio::time::timeout(renew, self.leases.leases(&self.keys)).await;
            let mut problem = None;
            match (&beat, &hosts, &docs) {
                (Ok(Ok(())), Ok(Ok(_)), Ok(Ok(_))) => {}
                (Ok(Err(e)), _, _) | (_, Ok(Err(e)), _) | (_, _, Ok(Err(e))) => problem = Some(e.to_string()),
                _ => problem = Some(format!("no answer within renew_ms = {} ms", cfg.renew_ms)),
            }
            for (&i, h) in &held {
                if releasing.contains(&i) {
                    continue;
                }
                let sent = Instant::now();
                match tokio::time::timeout(renew, self.leases.renew(&self.keys[i], h.epoch)).await {
                    Ok(Ok(true)) => {
                        h.deadline.send_replace(sent + lease - margin);
                    }
                    Ok(Ok(false)) => {
                        h.ask.send_replace(Some(Why::Lost("its lease expired or another host took it")));
                    }
                    Ok(Err(e)) => problem = Some(e.to_string()),
                    Err(_) => problem = Some(format!("no answer within renew_ms = {} ms", cfg.renew_ms)),
                }
            }
            match problem {
                Some(p) if !warned => {
                    warned = true;
                    tracing::warn!(source = %self.source, "cluster: cannot reach the lease collection {} ({p}); streams whose lease cannot be renewed stop {} ms after their last renewal", self.leases.coll.namespace(), (lease - margin).as_millis());
                }
                None if warned => {
                    warned = false;
                    tracing::info!(source = %self.source, "cluster: the lease collection answers again");
                }
                _ => {}
            }
            let mut next = round + renew;
            if let (Ok(Ok(hosts)), Ok(Ok(docs))) = (hosts, docs) {
                let mut live: BTreeSet<String> = hosts.iter().filter(|h| h.expires_ms >= now).map(|h| h.name.clone()).collect();
                live.insert(me.clone());
                let (ceil, floor) = fair_share(self.keys.len(), live.len());
                let mut counts: HashMap<&str, usize> = live.iter().map(|n| (n.as_str(), 0)).collect();
                for l in docs.iter().filter(|l| l.live(now)) {
                    if let Some(c) = l.owner.as_deref().and_then(|o| counts.get_mut(o)) {
                        *c += 1;
                    }
                }
                let keeping = held.len() - releasing.len();
                counts.insert(&me, keeping);
                let needy = counts.iter().any(|(n, c)| *n != me && *c < floor);
                let richest = counts.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))).map(|(n, _)| *n == me).unwrap_or(false);
                // Hand over what is past the share, or one target to a host below
                // the floor (the richest host only, so that one moves at a time).
                let give = if keeping > ceil {
                    keeping - ceil
                } else if needy && richest && keeping > floor && releasing.is_empty() {
                    1
                } else {
                    0
                };
                let to_give: Vec<usize> = held.keys().rev().filter(|i| !releasing.contains(i)).take(give).copied().collect();
                for i in to_give {
                    tracing::info!(source = %self.source, stream = %self.keys[i], "cluster: handing the stream over ({} live host(s), share {ceil}): stopping at a safe point", live.len());
                    held[&i].ask.send_replace(Some(Why::Release));
                    releasing.insert(i);
                }
                let mine = keeping + finishing.len();
                // Nothing new is taken once the host stops.
                if mine < ceil && (!needy || keeping < floor) && give == 0 && !*shutdown.borrow() {
                    let mut want = ceil - mine;
                    // Start from a different target on each host, so that hosts
                    // starting together do not all race for the same leases.
                    let offset = me.bytes().fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(b as usize));
                    let n = self.keys.len();
                    for k in 0..n {
                        // Taking is bounded per round: the renewals of what is held
                        // come first, and a slow server must not starve them.
                        if want == 0 || round.elapsed() > renew / 2 {
                            break;
                        }
                        let i = (offset + k) % n;
                        if held.contains_key(&i) || finishing.contains(&i) {
                            continue;
                        }
                        let doc = docs.iter().find(|l| l.key == self.keys[i]);
                        if let Some(l) = doc.filter(|l| l.live(now)) {
                            // Try again the moment it expires (a dead owner's stream).
                            let at = Instant::now() + Duration::from_millis((l.expires_ms - now).max(0) as u64 + 1);
                            next = next.min(at);
                            continue;
                        }
                        let sent = Instant::now();
                        match tokio::time::timeout(renew, self.leases.acquire(&self.keys[i])).await {
                            Ok(Ok(Some(epoch))) => {
                                want -= 1;
                                let was = doc.and_then(|l| l.owner.clone()).map(|o| format!(" from {o}")).unwrap_or_default();
                                tracing::info!(source = %self.source, stream = %self.keys[i], epoch, "cluster: took the lease{was}");
                                super::note_lease(&self.source, &self.keys[i], Some(epoch), "taken");
                                held.insert(i, self.spawn_hold(i, epoch, sent + lease - margin, tx.clone()));
                            }
                            Ok(Ok(None)) => {}
                            Ok(Err(e)) => tracing::debug!(stream = %self.keys[i], "cluster: cannot take the lease: {e}"),
                            Err(_) => {}
                        }
                    }
                }
            }
            let next = next.max(Instant::now() + Duration::from_millis(5));
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => break,
                    _ = shutdown.wait_for(|s| *s) => break 'rounds None,
                    Some(report) = rx.recv() => match report {
                        Report::RunEnded(i, error) => {
                            let how = match (&error, releasing.contains(&i)) {
                                (Some(_), _) => "failed",
                                (None, true) => "handed_over",
                                (None, false) => "lost",
                            };
                            super::note_lease(&self.source, &self.keys[i], None, how);
                            held.remove(&i);
                            releasing.remove(&i);
                            finishing.insert(i);
                            if let Some(e) = error {
                                break 'rounds Some(e.context(self.keys[i].clone()));
                            }
                        }
                        Report::Finished(i) => {
                            finishing.remove(&i);
                        }
                    },
                }
            }
        };
        // Stop every stream; the savers and releases finish after the host's drain.
        let why = if namesake { Why::Lost("another host runs under this host's name") } else { Why::Shutdown };
        for h in held.values() {
            h.ask.send_replace(Some(why));
        }
        while !held.is_empty() {
            match rx.recv().await {
                Some(Report::RunEnded(i, _)) => {
                    super::note_lease(&self.source, &self.keys[i], None, if namesake { "lost" } else { "released_at_stop" });
                    held.remove(&i);
                }
                Some(Report::Finished(_)) => {}
                None => break,
            }
        }
        if namesake {
            // Its heartbeat is the other host's now: not marked gone.
        } else if let Err(e) = tokio::time::timeout(renew, self.leases.leave()).await.unwrap_or(Ok(())) {
            tracing::warn!(source = %self.source, "cluster: cannot mark this host gone ({e}); the others see it when its heartbeat expires");
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// At start, a live heartbeat under this host's name may be a crashed earlier
    /// run of this host (it stops renewing) or another running host given the same
    /// name (it renews): watch it until it expires or is renewed. Renewed means two
    /// hosts would renew each other's leases: this one refuses to start.
    async fn wait_out_namesake(&self, shutdown: &mut watch::Receiver<bool>) -> anyhow::Result<()> {
        let me = &self.membership.name;
        let renew = Duration::from_millis(self.membership.cfg.renew_ms);
        let mut seen: Option<i64> = None;
        loop {
            let now = now_ms();
            let hosts = match tokio::time::timeout(renew, self.leases.hosts()).await {
                Ok(Ok(hosts)) => hosts,
                // Unreachable: the rounds report it and keep trying.
                _ => return Ok(()),
            };
            let Some(other) = hosts.into_iter().find(|h| &h.name == me && h.expires_ms >= now && !self.leases.is_mine(h)) else {
                return Ok(());
            };
            match seen {
                None => tracing::info!(source = %self.source, host = %me, "cluster: a heartbeat of this host's name is still live (pid {}, last beat {} ms ago): waiting up to {} ms to see whether it is an earlier run of this host or another host with the same name", other.pid, now - other.beat_ms, other.expires_ms - now),
                Some(beat) if other.beat_ms != beat => return Err(namesake_error(me, &other, now)),
                Some(_) => {}
            }
            seen = Some(other.beat_ms);
            tokio::select! {
                _ = tokio::time::sleep(renew) => {}
                _ = shutdown.wait_for(|s| *s) => return Ok(()),
            }
        }
    }

    fn spawn_hold(&self, index: usize, epoch: i64, deadline: Instant, tx: mpsc::UnboundedSender<Report>) -> Held {
        let (deadline_tx, deadline_rx) = watch::channel(deadline);
        let (ask_tx, ask_rx) = watch::channel(None);
        let key = self.keys[index].clone();
        let fence = Fence::new(&key, &self.membership.name, epoch);
        let hold = hold(
            index,
            fence,
            self.runner.clone(),
            deadline_rx,
            ask_rx,
            self.leases.clone(),
            Duration::from_millis(self.membership.cfg.lease_ms),
            self.host_saver_stop.clone(),
            tx,
        );
        self.savers.lock().expect("savers lock").push(tokio::spawn(hold));
        Held { epoch, deadline: deadline_tx, ask: ask_tx }
    }
}

/// One target from the moment its lease is taken to the moment it is given back.
#[allow(clippy::too_many_arguments)]
async fn hold<R: Runner>(
    index: usize,
    fence: Arc<Fence>,
    runner: Arc<R>,
    mut deadline: watch::Receiver<Instant>,
    mut ask: watch::Receiver<Option<Why>>,
    leases: Leases,
    lease: Duration,
    mut host_saver_stop: watch::Receiver<bool>,
    tx: mpsc::UnboundedSender<Report>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut run = runner.run(index, fence.clone(), stop_rx);
    let mut cancelled = false;
    let mut refused = fence.refused();
    let mut why: Option<Why> = None;
    // Once asked to stop, the stream has until the lease's local deadline (at least
    // 100 ms) to reach its next await: past it the lease may be someone else's. A
    // stream stuck longer (a server that does not answer, a full router) is
    // cancelled, so that a lost or handed-over target is never counted as held for
    // ever and never runs on an expired lease.
    let stop_deadline = |local: Instant| local.max(Instant::now() + Duration::from_millis(100));
    let mut stop_by: Option<Instant> = None;
    let result = loop {
        let at = *deadline.borrow();
        tokio::select! {
            r = &mut run => break r,
            _ = tokio::time::sleep_until(stop_by.unwrap_or_else(Instant::now)), if stop_by.is_some() => {
                tracing::warn!(stream = %fence.key, epoch = fence.epoch, "cluster: the stream did not stop within its lease after being asked; cancelled, its lease left to expire (the next owner resumes from the last checkpoint)");
                cancelled = true;
                break Ok(());
            }
            _ = tokio::time::sleep_until(at), if why.is_none() => {
                tracing::warn!(stream = %fence.key, epoch = fence.epoch, "cluster: the lease was not renewed in time: stopping the stream before it expires");
                why = Some(Why::Lost("not renewed in time"));
                stop_tx.send_replace(true);
                stop_by = Some(stop_deadline(*deadline.borrow()));
            }
            Ok(()) = deadline.changed() => {}
            Ok(()) = ask.changed(), if why.is_none() => {
                why = *ask.borrow();
                if let Some(Why::Lost(reason)) = why {
                    tracing::warn!(stream = %fence.key, epoch = fence.epoch, "cluster: lost the lease ({reason}): stopping the stream");
                }
                stop_tx.send_replace(true);
                stop_by = Some(stop_deadline(*deadline.borrow()));
            }
            Ok(()) = refused.changed(), if why.is_none() => {
                if *refused.borrow() {
                    why = Some(Why::Lost("a checkpoint write was refused"));
                    stop_tx.send_replace(true);
                    stop_by = Some(stop_deadline(*deadline.borrow()));
                }
            }
        }
    };
    if cancelled {
        // Cancelling drops the event being handed on, whose ticket then counts as
        // done: no checkpoint may be written after that, so the saver goes first.
        fence.abort_saver().await;
    }
    drop(run);
    let _ = tx.send(Report::RunEnded(index, result.err()));
    // Given back unless it may be someone else's: asked to hand over or stop, or
    // ended by itself (the host stopping, a stream that failed) under a lease no
    // one has fenced. A lease kept after its stream ended would sit unowned until
    // it expires.
    let voluntary = !matches!(why, Some(Why::Lost(_))) && !fence.is_refused() && !cancelled;
    if voluntary {
        // A safe point: everything taken in is done and checkpointed (or, when the
        // host stops, its final save comes), so the next owner starts from here.
        let settled = async {
            while !fence.tracker().is_none_or(|t| t.settled()) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::select! {
            _ = settled => {}
            _ = host_saver_stop.wait_for(|s| *s) => {}
            _ = tokio::time::sleep(lease) => tracing::warn!(stream = %fence.key, "cluster: events still unfinished after {} ms; handing the stream over anyway (the next owner delivers them again)", lease.as_millis()),
        }
    }
    // The saver writes a last time; a store that does not answer must not keep the
    // target counted as finishing (and so never taken again by this host).
    if tokio::time::timeout(lease, fence.stop_saver()).await.is_err() {
        tracing::warn!(stream = %fence.key, epoch = fence.epoch, "cluster: the last checkpoint write took longer than {} ms; abandoned (the next owner resumes from the previous one)", lease.as_millis());
    }
    if voluntary && !fence.is_refused() {
        match tokio::time::timeout(lease, leases.release(&fence.key, fence.epoch)).await {
            Ok(Ok(true)) => tracing::info!(stream = %fence.key, epoch = fence.epoch, "cluster: gave the lease back after the last checkpoint"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(stream = %fence.key, "cluster: cannot give the lease back ({e}); it expires by itself"),
            Err(_) => tracing::warn!(stream = %fence.key, "cluster: giving the lease back took too long; it expires by itself"),
        }
    }
    let _ = tx.send(Report::Finished(index));
}

/// Two live hosts share `name`.
fn namesake_error(name: &str, other: &super::lease::Heartbeat, now: i64) -> anyhow::Error {
    crate::exit::fatal(
        crate::exit::Cause::Config,
        format!(
            "config key cluster.name: another running host uses the name {name:?} (pid {} on its machine, heartbeat renewed {} ms ago); two hosts with one name would renew each other's leases and run the same streams. Give each host its own cluster.name (or leave it unset for HOSTNAME-PID)",
            other.pid,
            now - other.beat_ms
        ),
    )
}

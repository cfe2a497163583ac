//! Sources turn the outside world into numbered `Event`s with tickets.
//!
//! Every source gets a `Tracker` (which events are done) and the position saved
//! at its last checkpoint; it resumes after that position and sends `Envelope`s
//! into the router's bounded queue, so it slows down when plugins fall behind.

pub mod jsonl;
pub mod mongo;
pub mod socket;

use crate::checkpoint::{Position, Tracker};
use crate::envelope::Envelope;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// What every source task is given.
pub struct SourceContext {
    pub tracker: Arc<Tracker>,
    /// Where the last run's checkpoint left off, if anywhere.
    pub resume: Option<Position>,
    pub tx: mpsc::Sender<Envelope>,
    /// Becomes `true` when the host is shutting down.
    pub shutdown: watch::Receiver<bool>,
}

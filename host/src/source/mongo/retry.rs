//! What a driver error means for a stream, and how long to wait before trying again.
//!
//! `classify` sorts errors into the four outcomes the stream and poll loops act
//! on: history lost (follow the policy, never retry), change streams unsupported
//! (fall back to polling), transient (reconnect with backoff) and fatal (stop and
//! say why). The reconnection schedule is the host's one `Backoff`, jittered, so
//! many hosts do not reconnect in step after an outage.

use super::ReconnectConfig;
use crate::backoff::Backoff;
use mongodb::error::{Error, ErrorKind};
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The resume token is older than the server's history (286, or 280 on old servers).
    HistoryLost,
    /// The server or collection does not offer change streams (a standalone server).
    Unsupported,
    /// The server went away, stepped down, or is starting: try again later.
    Transient,
    /// Anything else the server refused (bad pipeline, not authorized...).
    Fatal,
}

/// ChangeStreamHistoryLost, and ChangeStreamFatalError as servers before 4.4 sent
/// for a token no longer in the oplog.
const HISTORY_LOST: &[i32] = &[286, 280];

/// `$changeStream` refused: 40573 "only supported on replica sets" (a standalone
/// mongod), 40324 "unrecognized pipeline stage" (a server that predates it), 115
/// CommandNotSupported and 238 NotImplemented (compatible servers without them).
const UNSUPPORTED: &[i32] = &[40573, 40324, 115, 238];

/// Errors the change-streams specification calls resumable, plus the usual
/// not-primary and shutdown codes: the server is there but not ready.
const TRANSIENT: &[i32] = &[
    6, 7, 43, 63, 89, 91, 133, 134, 150, 189, 234, 262, 9001, 10107, 11600, 11602, 13388, 13435, 13436,
];

pub fn classify(e: &Error) -> Failure {
    match e.kind.as_ref() {
        ErrorKind::Command(c) if HISTORY_LOST.contains(&c.code) => Failure::HistoryLost,
        ErrorKind::Command(c) if UNSUPPORTED.contains(&c.code) => Failure::Unsupported,
        ErrorKind::Command(c) if TRANSIENT.contains(&c.code) || c.code == 0 => Failure::Transient,
        ErrorKind::Command(_) if e.contains_label("ResumableChangeStreamError") || e.contains_label("RetryableWriteError") => {
            Failure::Transient
        }
        ErrorKind::Command(_)
        | ErrorKind::Authentication { .. }
        | ErrorKind::InvalidArgument { .. }
        | ErrorKind::InvalidTlsConfig { .. } => Failure::Fatal,
        // I/O, server selection, pool cleared, odd replies: the server went away or
        // is not itself yet; a retry costs little and the log says so each time.
        _ => Failure::Transient,
    }
}

/// The exit cause of an error `classify` calls fatal: refused credentials or a
/// missing privilege (18 AuthenticationFailed, 13 Unauthorized, 8000 an Atlas
/// authentication error), or any other refusal.
pub fn fatal_cause(e: &Error) -> crate::exit::Cause {
    use crate::exit::Cause;
    match e.kind.as_ref() {
        ErrorKind::Authentication { .. } => Cause::MongoAuth,
        ErrorKind::Command(c) if [18, 13, 8000].contains(&c.code) => Cause::MongoAuth,
        _ => Cause::MongoRefused,
    }
}

/// A short description that names the server's code when there is one.
pub fn describe(e: &Error) -> String {
    match e.kind.as_ref() {
        ErrorKind::Command(c) if c.code_name.is_empty() => format!("error {}: {}", c.code, c.message),
        ErrorKind::Command(c) => format!("error {} {}: {}", c.code, c.code_name, c.message),
        // The kind alone: the labels and "source: None" help no one reading a log.
        _ => e.kind.to_string(),
    }
}

impl ReconnectConfig {
    /// The reconnection schedule: the host's one `Backoff`, unlimited and
    /// jittered so many hosts do not reconnect in step after an outage.
    pub fn backoff(&self) -> Backoff {
        Backoff::from_ms(self.initial_ms.max(1), self.max_ms).jittered()
    }
}

/// Sleeps `delay`; false if `stop` turned true first.
pub async fn sleep_unless_stopped(delay: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = stop.wait_for(|s| *s) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    /// A server error as the driver builds it from a reply.
    fn command_error(code: i32) -> Error {
        let reply = doc! { "code": code, "codeName": "X", "errmsg": "m" };
        let cmd: mongodb::error::CommandError = mongodb::bson::from_document(reply).unwrap();
        Error::from(ErrorKind::Command(cmd))
    }

    #[test]
    fn history_lost_is_never_transient() {
        assert_eq!(classify(&command_error(286)), Failure::HistoryLost);
        assert_eq!(classify(&command_error(280)), Failure::HistoryLost);
    }

    #[test]
    fn a_standalone_server_means_no_change_streams() {
        assert_eq!(classify(&command_error(40573)), Failure::Unsupported);
        assert_eq!(classify(&command_error(40324)), Failure::Unsupported);
    }

    #[test]
    fn stepping_down_and_shutting_down_are_transient_but_bad_pipelines_are_not() {
        for code in [91, 189, 10107, 11600, 13436, 43] {
            assert_eq!(classify(&command_error(code)), Failure::Transient, "code {code}");
        }
        assert_eq!(classify(&command_error(40323)), Failure::Fatal, "a bad pipeline stage");
        assert_eq!(classify(&command_error(13)), Failure::Fatal, "unauthorized");
        assert_eq!(fatal_cause(&command_error(13)), crate::exit::Cause::MongoAuth);
        assert_eq!(fatal_cause(&command_error(18)), crate::exit::Cause::MongoAuth);
        assert_eq!(fatal_cause(&command_error(40323)), crate::exit::Cause::MongoRefused);
    }

    #[test]
    fn network_errors_are_transient() {
        let io = Error::from(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"));
        assert_eq!(classify(&io), Failure::Transient);
    }

    #[test]
    fn the_description_names_the_code() {
        assert_eq!(describe(&command_error(40573)), "error 40573 X: m");
    }

    #[test]
    fn reconnection_backoff_is_jittered_and_never_limited() {
        let mut b = ReconnectConfig { initial_ms: 100, max_ms: 1000 }.backoff();
        assert_eq!(b.retries(), None);
        for _ in 0..30 {
            let d = b.next_delay();
            assert!(d >= Duration::from_millis(500) / 10 && d <= Duration::from_millis(1000), "{d:?}");
        }
        assert_eq!(b.attempts(), 30);
    }
}

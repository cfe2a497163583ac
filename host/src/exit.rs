//! Why `oplet run` stops, as an exit code: one code per cause, so a supervisor
//! (systemd, Kubernetes, a shell script) can tell "fix the config" from "the
//! database lost its history" without reading logs. The README's exit-code table
//! lists the same codes; `Cause::code` is the one place they are decided.

use std::fmt;

/// A cause that ends `oplet run` with a code other than 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A bug in the host (a task that died); never expected.
    Internal,
    /// The config file, a value, an `OPLET__...` variable or the command line is
    /// wrong, or the host could not start (plugin folder, state folder, checkpoint).
    Config,
    /// A plugin failed with `on_plugin_error = "halt"`.
    Halted,
    /// A JSON-lines source cannot open or read its file.
    SourceInput,
    /// MongoDB refused the credentials, or the user lacks a privilege the source needs.
    MongoAuth,
    /// The address does not serve MongoDB as configured: the TLS handshake failed,
    /// or the peer is not a MongoDB server at all (an HTTP server on the port).
    MongoConnection,
    /// A saved resume token is older than the server's history and
    /// `on_history_lost = "fail"`.
    MongoHistoryLost,
    /// The server has no change streams and polling is off or impossible.
    MongoNoChangeStreams,
    /// MongoDB refused a command for another reason (a bad pipeline stage, a
    /// polling query, the checkpoint collection).
    MongoRefused,
    /// The Socket.IO server could not start (its address is taken or invalid).
    SocketStart,
}

impl Cause {
    pub fn code(self) -> u8 {
        match self {
            Cause::Internal => 1,
            Cause::Config => 2,
            Cause::Halted => 3,
            Cause::SourceInput => 4,
            Cause::MongoAuth => 5,
            Cause::MongoConnection => 6,
            Cause::MongoHistoryLost => 7,
            Cause::MongoNoChangeStreams => 8,
            Cause::MongoRefused => 9,
            Cause::SocketStart => 10,
        }
    }

    /// A few words for the last log line.
    pub fn what(self) -> &'static str {
        match self {
            Cause::Internal => "internal error",
            Cause::Config => "configuration or startup error",
            Cause::Halted => "halted on a plugin error",
            Cause::SourceInput => "input file unreadable",
            Cause::MongoAuth => "MongoDB refused the credentials",
            Cause::MongoConnection => "not a usable MongoDB server at that address",
            Cause::MongoHistoryLost => "MongoDB change history lost",
            Cause::MongoNoChangeStreams => "MongoDB has no change streams and polling is off",
            Cause::MongoRefused => "MongoDB refused a command",
            Cause::SocketStart => "Socket.IO server cannot start",
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what())
    }
}

/// The root error of a source that stopped for good: its cause, then the message
/// that says what happened and what to do. Context added above it is kept.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Fatal {
    pub cause: Cause,
    pub message: String,
}

/// An error with `cause` as its exit code.
pub fn fatal(cause: Cause, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Fatal { cause, message: message.into() })
}

/// The cause recorded anywhere in `e`'s chain, if any.
pub fn cause_of(e: &anyhow::Error) -> Option<Cause> {
    e.chain().find_map(|c| c.downcast_ref::<Fatal>()).map(|f| f.cause)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_cause_survives_the_context_added_above_it() {
        let e = Err::<(), _>(fatal(Cause::MongoHistoryLost, "gone")).context("app.items").context("source \"m\"").unwrap_err();
        assert_eq!(cause_of(&e), Some(Cause::MongoHistoryLost));
        assert_eq!(format!("{e:#}"), "source \"m\": app.items: gone");
        assert_eq!(cause_of(&anyhow::anyhow!("plain")), None);
    }

    #[test]
    fn every_cause_has_its_own_code() {
        let all = [
            Cause::Internal,
            Cause::Config,
            Cause::Halted,
            Cause::SourceInput,
            Cause::MongoAuth,
            Cause::MongoConnection,
            Cause::MongoHistoryLost,
            Cause::MongoNoChangeStreams,
            Cause::MongoRefused,
            Cause::SocketStart,
        ];
        let codes: std::collections::BTreeSet<u8> = all.iter().map(|c| c.code()).collect();
        assert_eq!(codes.len(), all.len());
        assert!(!codes.contains(&0));
    }
}

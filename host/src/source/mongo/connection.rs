//! What the driver's server monitor sees, said at once: the first failed
//! connection attempt is logged when it happens (not after the ~10 s server
//! selection timeout), with its cause named when it is TLS or a peer that is not
//! MongoDB. Those two stop the source if the server never answered in this run:
//! a wrong port or TLS setting does not heal by retrying; once connected, any
//! failure is an outage to ride out with backoff.

use crate::exit::Cause;
use mongodb::error::{Error, ErrorKind};
use mongodb::event::sdam::SdamEvent;
use mongodb::event::EventHandler;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Why a connection attempt failed, as far as the operator should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Diagnosis {
    /// The TLS handshake failed (a certificate, or TLS on one side only).
    Tls(String),
    /// Something answered that does not speak MongoDB's protocol.
    NotMongo(String),
    /// Refused, unreachable, timed out, reset: the server may come (back).
    Unreachable(String),
}

impl Diagnosis {
    pub fn of(e: &Error) -> Diagnosis {
        let text = e.kind.to_string();
        let lower = text.to_ascii_lowercase();
        let tls_words = ["tls", "ssl", "certificate", "handshake", "corrupt message", "alert", "peer sent"];
        match e.kind.as_ref() {
            ErrorKind::InvalidTlsConfig { .. } => Diagnosis::Tls(text),
            ErrorKind::InvalidResponse { .. } => Diagnosis::NotMongo(text),
            ErrorKind::Io(io) if io.kind() == std::io::ErrorKind::InvalidData && tls_words.iter().any(|w| lower.contains(w)) => {
                Diagnosis::Tls(text)
            }
            _ if tls_words.iter().any(|w| lower.contains(w)) => Diagnosis::Tls(text),
            _ if ["invalid response", "message length", "invalid message", "opcode"].iter().any(|w| lower.contains(w)) => {
                Diagnosis::NotMongo(text)
            }
            // An early end of file is also what a mongod shutting down sends: not a verdict.
            _ => Diagnosis::Unreachable(text),
        }
    }

    fn fatal(&self) -> Option<String> {
        match self {
            Diagnosis::Tls(t) => {
                let lower = t.to_ascii_lowercase();
                let hint = if lower.contains("unknownissuer") || lower.contains("invalid peer certificate") {
                    "the server's certificate does not chain to tlsCAFile (or to the built-in roots without it): point tlsCAFile at the CA that signed it"
                } else if lower.contains("close_notify") || lower.contains("certificaterequired") || lower.contains("handshake failure") {
                    "the server ended the handshake: if it requires a client certificate, set tlsCertificateKeyFile (certificate and key in one PEM file) in the uri; else check tls=true/false and tlsCAFile"
                } else {
                    "check tls=true/false in the uri against the server, and tlsCAFile for its certificate"
                };
                Some(format!("the TLS handshake failed ({t}): {hint}"))
            }
            Diagnosis::NotMongo(t) => Some(format!(
                "the server at that address does not speak the MongoDB protocol ({t}): is the port right? (an HTTP or other server answers there)"
            )),
            Diagnosis::Unreachable(_) => None,
        }
    }
}

/// Watches one client's server monitor; `failed` turns `Some` when the source
/// must stop.
pub struct Probe {
    state: Mutex<State>,
    failed: watch::Sender<Option<String>>,
}

#[derive(Default)]
struct State {
    answered: bool,
    down: bool,
    /// Seed addresses; the source stops only once every one is found unusable.
    hosts: usize,
    unusable: std::collections::BTreeMap<String, String>,
}

impl State {
    /// The reason to stop, once every address has one.
    fn condemn(&mut self, what: &str, addr: &str, reason: String) -> Option<String> {
        self.unusable.insert(addr.to_string(), reason);
        (!self.answered && self.unusable.len() >= self.hosts.max(1)).then(|| {
            let each: Vec<String> = self.unusable.iter().map(|(a, r)| format!("{what} at {a}: {r}")).collect();
            each.join("; ")
        })
    }
}

impl Probe {
    /// The probe, and the handler to set as the client's `sdam_event_handler`.
    pub fn new(source: &str, what: &'static str) -> (Arc<Probe>, EventHandler<SdamEvent>) {
        let probe = Arc::new(Probe { state: Mutex::new(State::default()), failed: watch::channel(None).0 });
        let (p, source) = (probe.clone(), source.to_string());
        let handler = EventHandler::callback(move |event: SdamEvent| p.on(&source, what, event));
        (probe, handler)
    }

    /// Receives the reason the source must stop, once there is one.
    pub fn failed(&self) -> watch::Receiver<Option<String>> {
        self.failed.subscribe()
    }

    /// Records a verdict reached outside the driver (the raw hello probe).
    fn verdict(&self, source: &str, what: &str, addr: &str, diagnosis: Diagnosis) {
        let mut st = self.state.lock().expect("probe lock");
        if st.answered {
            return;
        }
        let reason = diagnosis.fatal();
        if !st.down || reason.is_some() {
            st.down = true;
            tracing::warn!(source = %source, server = %addr, "cannot use {what}: {}", match &diagnosis { Diagnosis::Tls(t) => format!("TLS: {t}"), Diagnosis::NotMongo(t) => format!("not MongoDB: {t}"), Diagnosis::Unreachable(t) => t.clone() });
        }
        if let Some(message) = reason.and_then(|r| st.condemn(what, addr, r)) {
            self.failed.send_if_modified(|f| f.is_none() && f.replace(message).is_none());
        }
    }

    fn on(&self, source: &str, what: &str, event: SdamEvent) {
        let mut st = self.state.lock().expect("probe lock");
        match event {
            SdamEvent::ServerHeartbeatFailed(ev) => {
                let diagnosis = Diagnosis::of(&ev.failure);
                if !st.down {
                    st.down = true;
                    tracing::warn!(
                        source = %source, server = %ev.server_address,
                        "cannot connect to {what} ({}); the driver keeps trying",
                        match &diagnosis { Diagnosis::Tls(t) => format!("TLS: {t}"), Diagnosis::NotMongo(t) => format!("not MongoDB: {t}"), Diagnosis::Unreachable(t) => t.clone() }
                    );
                }
                let addr = ev.server_address.to_string();
                if let Some(message) = diagnosis.fatal().and_then(|r| st.condemn(what, &addr, r)) {
                    self.failed.send_if_modified(|f| f.is_none() && f.replace(message).is_none());
                }
            }
            SdamEvent::ServerHeartbeatSucceeded(ev) => {
                if st.down {
                    tracing::info!(source = %source, server = %ev.server_address, "{what} answers again");
                }
                st.down = false;
                st.answered = true;
            }
            _ => {}
        }
    }
}

/// The exit cause of a probe's failure.
pub const CAUSE: Cause = Cause::MongoConnection;

/// Without TLS, asks each address a MongoDB `hello` by hand, at once, so that a
/// peer that is not MongoDB is named in seconds: the driver would only time out
/// after `connectTimeoutMS` (10 s) or call an early close "unexpected end of file".
/// A reply that is a TLS record or HTTP, or not a MongoDB reply at all, stops the
/// source (if the driver has not connected meanwhile); silence is only logged.
pub fn spawn_hello_probes(probe: &Arc<Probe>, source: &str, what: &'static str, options: &mongodb::options::ClientOptions) {
    probe.state.lock().expect("probe lock").hosts = options.hosts.len();
    let tls = matches!(options.tls, Some(mongodb::options::Tls::Enabled(_)));
    if tls {
        return;
    }
    for addr in &options.hosts {
        let mongodb::options::ServerAddress::Tcp { host, port } = addr else { continue };
        let target = format!("{host}:{}", port.unwrap_or(27017));
        let (probe, source) = (probe.clone(), source.to_string());
        tokio::spawn(async move {
            if let Some(diagnosis) = hello(&target).await {
                probe.verdict(&source, what, &target, diagnosis);
            }
        });
    }
}

/// `None` when the peer answers like MongoDB (or cannot be reached at all: the
/// driver's monitor reports that itself).
async fn hello(target: &str) -> Option<Diagnosis> {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connect = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(target)).await;
    let mut conn = connect.ok()?.ok()?;
    let body = mongodb::bson::to_vec(&mongodb::bson::doc! { "hello": 1, "$db": "admin" }).ok()?;
    let mut msg = Vec::with_capacity(21 + body.len());
    msg.extend_from_slice(&((21 + body.len()) as i32).to_le_bytes());
    msg.extend_from_slice(&0x0b1e_7000i32.to_le_bytes()); // requestID
    msg.extend_from_slice(&0i32.to_le_bytes()); // responseTo
    msg.extend_from_slice(&2013i32.to_le_bytes()); // OP_MSG
    msg.extend_from_slice(&0u32.to_le_bytes()); // flagBits
    msg.push(0); // section kind 0: the body
    msg.extend_from_slice(&body);
    conn.write_all(&msg).await.ok()?;
    let mut head = [0u8; 16];
    let mut got = 0;
    let mut prodded = false;
    while got < head.len() {
        match tokio::time::timeout(Duration::from_secs(1), conn.read(&mut head[got..])).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got += n,
            Err(_) if !prodded => {
                // An HTTP server waits for the end of a request line: end it, so it
                // says who it is. A MongoDB server has a whole message already.
                prodded = true;
                conn.write_all(b"\r\n\r\n").await.ok()?;
            }
            Err(_) => {
                return Some(Diagnosis::Unreachable(format!(
                    "{target} accepted the connection but has not answered a MongoDB hello in 2 s (not MongoDB, or overloaded)"
                )))
            }
        }
    }
    Some(read_reply(&head[..got])).flatten()
}

/// What the first bytes of a peer's reply to `hello` say about it.
fn read_reply(head: &[u8]) -> Option<Diagnosis> {
    if head.is_empty() {
        return None; // closed at once: a mongod that is shutting down does that too
    }
    if head[0] == 0x15 || head[0] == 0x16 {
        return Some(Diagnosis::Tls("the server answered with a TLS record: it expects TLS; add tls=true to the uri".into()));
    }
    if head.starts_with(b"HTTP/") {
        let line = String::from_utf8_lossy(head).lines().next().unwrap_or_default().to_string();
        return Some(Diagnosis::NotMongo(format!("an HTTP server answered ({line}...)")));
    }
    let word = |i: usize| head.get(i..i + 4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let (len, op) = (word(0), word(12));
    let mongo_like = matches!(len, Some(l) if (16..=48 * 1024 * 1024).contains(&l)) && matches!(op, Some(2013) | Some(1) | None);
    if mongo_like {
        None
    } else if head.iter().all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace()) {
        let text = String::from_utf8_lossy(head);
        Some(Diagnosis::NotMongo(format!("it answered in text, not MongoDB's binary protocol ({:?}...): an HTTP or other text server", text.trim())))
    } else {
        Some(Diagnosis::NotMongo(format!("its reply does not start like a MongoDB message (first bytes {})", hex::encode(head))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_told_apart_by_their_first_bytes() {
        let mut mongo = Vec::new();
        mongo.extend_from_slice(&200i32.to_le_bytes());
        mongo.extend_from_slice(&[0; 8]);
        mongo.extend_from_slice(&2013i32.to_le_bytes());
        assert_eq!(read_reply(&mongo), None);
        assert!(matches!(read_reply(b"HTTP/1.0 400 Bad request\r\n"), Some(Diagnosis::NotMongo(t)) if t.contains("HTTP/1.0 400")));
        assert!(matches!(read_reply(&[0x15, 0x03, 0x03, 0, 2, 2, 10]), Some(Diagnosis::Tls(_))));
        assert!(matches!(read_reply(b"SSH-2.0-OpenSSH_9.2p1\r\n"), Some(Diagnosis::NotMongo(t)) if t.contains("SSH-2.0")));
        assert!(matches!(read_reply(&[0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0, 0, 0, 0, 0, 9, 9, 9, 9]), Some(Diagnosis::NotMongo(t)) if t.contains("does not start like")));
        assert_eq!(read_reply(b""), None);
    }
}

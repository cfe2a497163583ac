//! A TCP proxy in front of the MongoDB-compatible test server, for scenarios and
//! benches that must see the wire: it counts the commands clients send, by name
//! (the first key of each OP_MSG body), and can play a server that went away and
//! came back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy in front of the MongoDB server: counts the commands that pass, by
/// name, and can play a server that went away (every connection cut, new ones
/// closed at once) and came back.
pub struct MongoProxy {
    port: u16,
    counts: Arc<Mutex<HashMap<String, u64>>>,
    down: watch::Sender<bool>,
    upstream_uri: String,
}

impl MongoProxy {
    /// Listens on a free loopback port and forwards to the first host of
    /// `upstream_uri`. Needs a tokio runtime.
    pub async fn start(upstream_uri: &str) -> MongoProxy {
        let upstream_uri = upstream_uri.to_string();
        let upstream = first_host(&upstream_uri);
        let port = crate::free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let (down, down_rx) = watch::channel(false);
        let counts2 = counts.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                if *down_rx.borrow() {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream).await else { continue };
                tokio::spawn(pipe(client, server, counts2.clone(), down_rx.clone()));
            }
        });
        MongoProxy { port, counts, down, upstream_uri }
    }

    /// The server's URI with this proxy in its place (a direct connection).
    pub fn uri(&self) -> String {
        let (scheme, rest) = self.upstream_uri.split_once("://").unwrap();
        let (creds, rest) = match rest.rsplit_once('@') {
            Some((c, r)) => (format!("{c}@"), r),
            None => (String::new(), rest),
        };
        let query = rest.split_once('?').map(|(_, q)| q).unwrap_or("");
        let query: Vec<&str> = query.split('&').filter(|p| !p.is_empty() && !p.starts_with("replicaSet=") && !p.starts_with("directConnection=")).collect();
        let mut uri = format!("{scheme}://{creds}127.0.0.1:{}/?directConnection=true", self.port);
        for p in query {
            uri.push('&');
            uri.push_str(p);
        }
        uri
    }

    /// Plays a server that went away (`true`: every connection cut, new ones closed
    /// at once) or came back (`false`).
    pub fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }

    /// Commands named `command` seen so far.
    pub fn count(&self, command: &str) -> u64 {
        self.counts.lock().unwrap().get(command).copied().unwrap_or(0)
    }

    /// Every command seen so far, by name.
    pub fn counts(&self) -> HashMap<String, u64> {
        self.counts.lock().unwrap().clone()
    }
}

/// `host:port` of the first host in a `mongodb://` URI.
fn first_host(uri: &str) -> String {
    let rest = uri.split_once("://").unwrap().1;
    let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
    let hosts = rest.split(['/', '?']).next().unwrap();
    let host = hosts.split(',').next().unwrap();
    if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:27017")
    }
}

/// Copies both ways until either side closes or the proxy goes down; counts each
/// OP_MSG command the client sends by its first key.
async fn pipe(mut client: TcpStream, mut server: TcpStream, counts: Arc<Mutex<HashMap<String, u64>>>, mut down: watch::Receiver<bool>) {
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            while let Some(name) = next_command(&mut pending) {
                *counts.lock().unwrap().entry(name).or_default() += 1;
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Either way the connection ends: down, or the proxy dropped.
    let down_fut = async {
        down.wait_for(|d| *d).await.ok();
    };
    tokio::select! {
        _ = up => {}
        _ = tokio::io::copy(&mut sr, &mut cw) => {}
        _ = down_fut => {}
    }
}

/// Takes one whole wire message off the front of `pending`, returning its command
/// name (the first key of an OP_MSG body); `None` when no whole message is there.
fn next_command(pending: &mut Vec<u8>) -> Option<String> {
    if pending.len() < 16 {
        return None;
    }
    let len = i32::from_le_bytes(pending[0..4].try_into().unwrap()) as usize;
    if pending.len() < len || len < 16 {
        return None;
    }
    let msg: Vec<u8> = pending.drain(..len).collect();
    let op = i32::from_le_bytes(msg[12..16].try_into().unwrap());
    // OP_MSG: flags (4), section kind 0 (1), BSON document: length (4), type (1), key.
    let name = if op == 2013 && msg.len() > 26 && msg[20] == 0 {
        let key = &msg[26..];
        let end = key.iter().position(|b| *b == 0).unwrap_or(0);
        String::from_utf8_lossy(&key[..end]).into_owned()
    } else {
        format!("op{op}")
    };
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    #[test]
    fn the_proxy_reads_command_names_off_the_wire() {
        let body = mongodb::bson::to_vec(&doc! { "find": "items", "filter": {} }).unwrap();
        let mut msg = Vec::new();
        let len = 16 + 4 + 1 + body.len();
        msg.extend_from_slice(&(len as i32).to_le_bytes());
        msg.extend_from_slice(&[0; 8]);
        msg.extend_from_slice(&2013i32.to_le_bytes());
        msg.extend_from_slice(&[0; 4]);
        msg.push(0);
        msg.extend_from_slice(&body);
        let mut pending = msg.clone();
        pending.extend_from_slice(&msg[..10]);
        assert_eq!(next_command(&mut pending).as_deref(), Some("find"));
        assert_eq!(next_command(&mut pending), None, "a partial message waits for the rest");
        assert_eq!(pending.len(), 10);
        assert_eq!(first_host("mongodb://u:p@h1,h2:5/db?replicaSet=rs"), "h1:27017");
    }
}

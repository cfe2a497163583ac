//! Who a connecting Socket.IO client is: checks the `auth` payload of its connect.
//!
//! Called by the server's connect middleware before the socket joins anything. A
//! client proves its `uuid` with a token: the one listed for it in
//! `[socket.tokens]`, or the hex HMAC-SHA256 of the uuid under `[socket] secret`.
//! Every refusal is a typed `AuthError` whose message is sent to the client as-is.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::collections::BTreeMap;

/// Longest uuid accepted (room names are built from it).
pub const MAX_UUID_LEN: usize = 128;

/// Why a connection was refused. The text goes to the client in `connect_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("auth required: connect with auth={{\"uuid\": \"<your id>\", \"token\": \"<your token>\"}}")]
    Missing,
    #[error("auth is malformed: {0}; expected {{\"uuid\": string, \"token\": string}}")]
    Malformed(String),
    #[error("uuid {0:?} is not valid: use 1 to 128 letters, digits, '-', '_', '.' or ':'")]
    BadUuid(String),
    #[error("invalid token for uuid {0:?}")]
    BadToken(String),
}

/// How tokens are checked; built once from `SocketConfig`.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    secret: Option<Vec<u8>>,
    tokens: BTreeMap<String, String>,
}

impl Authenticator {
    pub fn new(secret: Option<&str>, tokens: &BTreeMap<String, String>) -> Authenticator {
        Authenticator { secret: secret.map(|s| s.as_bytes().to_vec()), tokens: tokens.clone() }
    }

    /// Whether any way of proving an identity is configured.
    pub fn is_configured(&self) -> bool {
        self.secret.is_some() || !self.tokens.is_empty()
    }

    /// The client's uuid if `auth` (the connect payload, JSON) proves it.
    pub fn check(&self, auth: &serde_json::Value) -> Result<String, AuthError> {
        let obj = match auth {
            serde_json::Value::Null => return Err(AuthError::Missing),
            serde_json::Value::Object(o) if o.is_empty() => return Err(AuthError::Missing),
            serde_json::Value::Object(o) => o,
            other => return Err(AuthError::Malformed(format!("got {}", kind(other)))),
        };
        let field = |name: &str| match obj.get(name) {
            Some(serde_json::Value::String(s)) => Ok(s.as_str()),
            Some(other) => Err(AuthError::Malformed(format!("`{name}` is {}, not a string", kind(other)))),
            None => Err(AuthError::Malformed(format!("`{name}` is missing"))),
        };
        let uuid = field("uuid")?;
        let token = field("token")?;
        if !valid_uuid(uuid) {
            return Err(AuthError::BadUuid(uuid.chars().take(MAX_UUID_LEN).collect()));
        }
        let listed = self.tokens.get(uuid).is_some_and(|t| ct_eq(t.as_bytes(), token.as_bytes()));
        let signed = self.secret.as_deref().is_some_and(|s| ct_eq(hmac_hex(s, uuid).as_bytes(), token.as_bytes()));
        if listed || signed {
            Ok(uuid.to_string())
        } else {
            Err(AuthError::BadToken(uuid.to_string()))
        }
    }
}

/// The token for `uuid` under `secret`: lowercase hex of HMAC-SHA256(secret, uuid).
pub fn hmac_hex(secret: &[u8], uuid: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(uuid.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn valid_uuid(uuid: &str) -> bool {
    !uuid.is_empty()
        && uuid.len() <= MAX_UUID_LEN
        && uuid.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

/// Equality whose time does not depend on where the inputs differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        // RFC 4231 §4.3: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            hmac_hex(b"Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    fn auth() -> Authenticator {
        let tokens = [("listed".to_string(), "t0k".to_string())].into_iter().collect();
        Authenticator::new(Some("s3cret"), &tokens)
    }

    #[test]
    fn a_listed_token_or_a_signed_uuid_proves_the_identity() {
        assert_eq!(auth().check(&json!({"uuid": "listed", "token": "t0k"})), Ok("listed".into()));
        let token = hmac_hex(b"s3cret", "c-1");
        assert_eq!(auth().check(&json!({"uuid": "c-1", "token": token})), Ok("c-1".into()));
    }

    #[test]
    fn each_refusal_says_why() {
        let a = auth();
        assert_eq!(a.check(&json!({})), Err(AuthError::Missing));
        assert_eq!(a.check(&json!(null)), Err(AuthError::Missing));
        assert_eq!(a.check(&json!("x")), Err(AuthError::Malformed("got a string".into())));
        assert_eq!(a.check(&json!({"uuid": "c-1"})), Err(AuthError::Malformed("`token` is missing".into())));
        assert_eq!(
            a.check(&json!({"uuid": 5, "token": "x"})),
            Err(AuthError::Malformed("`uuid` is a number, not a string".into()))
        );
        assert_eq!(a.check(&json!({"uuid": "a b", "token": "x"})), Err(AuthError::BadUuid("a b".into())));
        // Another client's token does not prove this uuid.
        let other = hmac_hex(b"s3cret", "c-2");
        assert_eq!(a.check(&json!({"uuid": "c-1", "token": other})), Err(AuthError::BadToken("c-1".into())));
        assert!(AuthError::BadToken("c-1".into()).to_string().contains("invalid token for uuid \"c-1\""));
    }
}

//! Passwords for the sinks, and keeping them out of logs and errors.
//!
//! A password comes from the config (`password`), from a file (`password_file`,
//! for systemd credentials and mounted secrets) or from the environment (the
//! `OPLET__REDIS__PASSWORD` style every key has). `Secret` never prints its value,
//! and `redact` takes the password out of any connection string shown to a person.

use serde::Deserialize;
use std::path::Path;

/// A value that Debug and Display print as `***`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself: only for handing it to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The password of `[section]`: `password`, or the first line of `password_file`
/// (a trailing newline is not part of it). Both set is an error, so it is never
/// a guess which one wins; an unreadable or empty file is an error naming it.
pub fn password(section: &str, inline: Option<&Secret>, file: Option<&Path>) -> anyhow::Result<Option<Secret>> {
    match (inline, file) {
        (Some(_), Some(_)) => anyhow::bail!(
            "[{section}] sets both password and password_file; keep one (password_file for a secret mounted as a file)"
        ),
        (Some(p), None) => Ok(Some(p.clone())),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("[{section}] password_file {}: cannot read it: {e}; point it at a readable file holding the password", path.display())
            })?;
            let value = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
            if value.is_empty() {
                anyhow::bail!("[{section}] password_file {} is empty; write the password into it", path.display());
            }
            Ok(Some(Secret::new(value)))
        }
        (None, None) => Ok(None),
    }
}

/// `uri` with every password replaced by `***`: the `user:PASSWORD@` of a URL,
/// a `password=` query parameter, and the `password=` of a PostgreSQL key-value
/// string (`host=h password='a b'`). Anything else is left as it is.
pub fn redact(uri: &str) -> String {
    if let Some(scheme) = uri.find("://") {
        let rest = &uri[scheme + 3..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let mut out = uri[..scheme + 3].to_string();
        match rest[..authority_end].rfind('@') {
            Some(at) => {
                let creds = &rest[..at];
                match creds.split_once(':') {
                    Some((user, _)) => out.push_str(&format!("{user}:***")),
                    None => out.push_str(creds),
                }
                out.push_str(&redact_query(&rest[at..]));
            }
            None => out.push_str(&redact_query(rest)),
        }
        return out;
    }
    redact_key_values(uri)
}

/// `password=...` parameters of a URL's query string.
fn redact_query(s: &str) -> String {
    let Some(q) = s.find('?') else { return s.to_string() };
    let (head, query) = s.split_at(q + 1);
    let (query, fragment) = match query.find('#') {
        Some(h) => query.split_at(h),
        None => (query, ""),
    };
    let parts: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("pass") => format!("{k}=***"),
            _ => kv.to_string(),
        })
        .collect();
    format!("{head}{}{fragment}", parts.join("&"))
}

/// The `password=` value of a libpq key-value string, quoted or not.
fn redact_key_values(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = find_password_key(rest) {
        let after_key = &rest[i..];
        let eq = after_key.find('=').expect("found with '='") + 1;
        out.push_str(&rest[..i]);
        out.push_str(&after_key[..eq]);
        let value = after_key[eq..].trim_start();
        let skipped = after_key[eq..].len() - value.len();
        out.push_str(&after_key[eq..eq + skipped]);
        let len = if let Some(quoted) = value.strip_prefix('\'') {
            // Up to the closing quote that is not escaped with a backslash.
            let mut end = quoted.len();
            let mut escaped = false;
            for (j, c) in quoted.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '\'' if !escaped => {
                        end = j + 1;
                        break;
                    }
                    _ => escaped = false,
                }
            }
            1 + end.min(quoted.len())
        } else {
            value.find(char::is_whitespace).unwrap_or(value.len())
        };
        out.push_str("***");
        rest = &value[len..];
    }
    out.push_str(rest);
    out
}

/// Where a `password` key (at the start or after whitespace, before `=`) begins.
fn find_password_key(s: &str) -> Option<usize> {
    let lower = s.to_ascii_lowercase();
    let mut from = 0;
    while let Some(pos) = lower[from..].find("password") {
        let i = from + pos;
        let at_start = i == 0 || lower.as_bytes()[i - 1].is_ascii_whitespace();
        let tail = lower[i + "password".len()..].trim_start();
        if at_start && tail.starts_with('=') {
            return Some(i);
        }
        from = i + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_taken_out_of_every_connection_string_form() {
        let cases = [
            ("redis://:hunter2@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
            ("rediss://app:hunter2@h:6380", "rediss://app:***@h:6380"),
            ("postgres://app:hun@ter2@h/db?sslmode=require", "postgres://app:***@h/db?sslmode=require"),
            ("postgres://app@h/db?password=hunter2&sslmode=require", "postgres://app@h/db?password=***&sslmode=require"),
            ("mongodb://u:hunter2@h1,h2/?replicaSet=rs", "mongodb://u:***@h1,h2/?replicaSet=rs"),
            ("host=h user=app password=hunter2 dbname=d", "host=h user=app password=*** dbname=d"),
            ("host=h password = 'hunter 2\\' x' dbname=d", "host=h password = *** dbname=d"),
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            ("host=h user=password_owner", "host=h user=password_owner"),
        ];
        for (uri, want) in cases {
            assert_eq!(redact(uri), want, "{uri}");
            assert!(!redact(uri).contains("hunter"), "{uri}");
        }
    }

    #[test]
    fn a_secret_never_prints_its_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** \"***\"");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn a_password_file_is_read_without_its_newline_and_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("oplet-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pw");
        std::fs::write(&f, "hunter2\n").unwrap();
        assert_eq!(password("redis", None, Some(&f)).unwrap().unwrap().expose(), "hunter2");
        std::fs::write(&f, "").unwrap();
        let err = password("redis", None, Some(&f)).unwrap_err().to_string();
        assert!(err.contains("[redis] password_file") && err.contains("empty"), "{err}");
        let err = password("postgres", None, Some(&dir.join("missing"))).unwrap_err().to_string();
        assert!(err.contains("[postgres] password_file") && err.contains("missing"), "{err}");
        let err = password("redis", Some(&Secret::new("x")), Some(&f)).unwrap_err().to_string();
        assert!(err.contains("both password and password_file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Which browser pages may talk to the Socket.IO server (`[socket] cors_origins`).
//!
//! CORS lets a listed page read the polling transport's answers and pass its
//! preflights, but CORS does not cover WebSocket upgrades, and a simple POST is
//! processed before a browser hides the answer: so every request that carries an
//! `Origin` not listed is refused with 403 here, before Socket.IO sees it.
//! Requests without `Origin` (servers, native apps) are not browsers' and pass.

use super::{bump, SocketStats};
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The allowed origins, checked once at start.
#[derive(Clone, Debug)]
pub struct Origins {
    any: bool,
    list: Vec<HeaderValue>,
}

impl Origins {
    /// Each entry must be `*` or an origin as browsers send it:
    /// `scheme://host[:port]`, no path, no trailing slash.
    pub fn new(entries: &[String]) -> anyhow::Result<Origins> {
        let mut list = Vec::new();
        let mut any = false;
        for (i, o) in entries.iter().enumerate() {
            if o == "*" {
                any = true;
                continue;
            }
            let valid = o.split_once("://").is_some_and(|(scheme, rest)| {
                matches!(scheme, "http" | "https") && !rest.is_empty() && !rest.contains(['/', '?', '#', ' '])
            });
            if !valid {
                anyhow::bail!(
                    "config key socket.cors_origins[{i}]: {o:?} is not an origin; write it as the browser sends it, \
                     scheme://host[:port] with no path or trailing slash (e.g. \"https://app.example.com\"), or \"*\""
                );
            }
            list.push(HeaderValue::from_str(o).map_err(|e| anyhow::anyhow!("config key socket.cors_origins[{i}]: {e}"))?);
        }
        Ok(Origins { any, list })
    }

    pub fn allows(&self, origin: &HeaderValue) -> bool {
        self.any || self.list.iter().any(|o| o.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
    }

    /// CORS for the listed origins: answers preflights (OPTIONS) itself and adds
    /// `Access-Control-Allow-Origin` to the answers of the others.
    pub fn cors_layer(&self) -> CorsLayer {
        let allow = if self.any { AllowOrigin::any() } else { AllowOrigin::list(self.list.clone()) };
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([header::CONTENT_TYPE])
            .max_age(std::time::Duration::from_secs(600))
    }
}

type BoxResponse = Pin<Box<dyn Future<Output = Response> + Send>>;

/// The middleware refusing requests from origins not listed.
pub fn check(
    origins: Origins,
    source: String,
    stats: Arc<SocketStats>,
) -> impl Fn(Request<axum::body::Body>, axum::middleware::Next) -> BoxResponse + Clone + Send + Sync + 'static {
    let origins = Arc::new(origins);
    let source: Arc<str> = source.into();
    move |req: Request<axum::body::Body>, next: axum::middleware::Next| {
        let refused = match req.headers().get(header::ORIGIN) {
            Some(origin) if !origins.allows(origin) => Some(String::from_utf8_lossy(origin.as_bytes()).into_owned()),
            _ => None,
        };
        let Some(origin) = refused else {
            return Box::pin(next.run(req)) as BoxResponse;
        };
        let n = bump(&stats.refused_origins);
        let upgrade = req.headers().get(header::UPGRADE).is_some();
        tracing::warn!(
            source = %source, refused_total = n,
            "socket: {} from origin {origin:?} refused: not in [socket] cors_origins; add it there if that page may connect",
            if upgrade { "WebSocket upgrade" } else { "request" }
        );
        let body = format!("origin {origin} is not allowed: not in [socket] cors_origins of this server\n");
        Box::pin(async move { (StatusCode::FORBIDDEN, body).into_response() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked_as_browsers_send_them_and_bad_entries_name_the_key() {
        let o = Origins::new(&["https://app.example.com".into(), "http://127.0.0.1:8080".into()]).unwrap();
        assert!(o.allows(&HeaderValue::from_static("https://app.example.com")));
        assert!(o.allows(&HeaderValue::from_static("HTTPS://APP.EXAMPLE.COM")));
        assert!(!o.allows(&HeaderValue::from_static("https://evil.example.com")));
        assert!(!o.allows(&HeaderValue::from_static("null")));
        assert!(Origins::new(&["*".into()]).unwrap().allows(&HeaderValue::from_static("https://x.io")));
        for bad in ["https://app.example.com/", "app.example.com", "ftp://x", "https://x/path"] {
            let err = Origins::new(&["*".into(), bad.into()]).unwrap_err().to_string();
            assert!(err.contains("socket.cors_origins[1]") && err.contains("not an origin"), "{bad}: {err}");
        }
    }
}

//! TLS for the sinks' connections (`[postgres.tls]`, `[redis.tls]`): the mode, the
//! CA and client certificate files, and the rustls client config PostgreSQL's
//! connector is built from (Redis takes the same files through its own rustls
//! integration). Files are read once at start, so a wrong path stops the start
//! with the key named instead of failing every later connection.

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use serde::Deserialize;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How much of the server's certificate is checked (libpq's names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plain TCP.
    #[default]
    Disable,
    /// Encrypted, but any certificate is accepted (protects against listeners,
    /// not against a server in the middle).
    Require,
    /// Encrypted; the certificate must chain to `ca_file` (or the system roots);
    /// its host name is not checked.
    VerifyCa,
    /// Encrypted; the certificate must chain to the CA and name the host connected to.
    VerifyFull,
}

/// `[postgres.tls]` / `[redis.tls]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default)]
    pub mode: TlsMode,
    /// PEM file of the CA certificate(s) the server's certificate must chain to;
    /// without it, the Mozilla roots (PostgreSQL) or the system store (Redis).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain), for servers that ask for one; with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file` (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

/// The files of a `TlsConfig`, read and parsed.
pub struct TlsFiles {
    pub ca_pem: Option<Vec<u8>>,
    pub cert_pem: Option<Vec<u8>>,
    pub key_pem: Option<Vec<u8>>,
    roots: Option<Vec<CertificateDer<'static>>>,
    chain: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

impl TlsConfig {
    /// Checks the keys and reads the files; `section` (`postgres`, `redis`) names
    /// the config section in errors.
    pub fn load(&self, section: &str) -> anyhow::Result<TlsFiles> {
        if self.mode == TlsMode::Disable && (self.ca_file.is_some() || self.cert_file.is_some()) {
            anyhow::bail!(
                "[{section}.tls] names certificate files but mode is \"disable\"; set mode = \"verify-full\" (or \"verify-ca\", \"require\")"
            );
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            anyhow::bail!("[{section}.tls] cert_file and key_file go together: set both (the client certificate and its key) or neither");
        }
        let read = |key: &str, path: &PathBuf| {
            std::fs::read(path).with_context(|| {
                format!("[{section}.tls] {key} {}: cannot read it; point it at a PEM file", path.display())
            })
        };
        let ca_pem = self.ca_file.as_ref().map(|p| read("ca_file", p)).transpose()?;
        let cert_pem = self.cert_file.as_ref().map(|p| read("cert_file", p)).transpose()?;
        let key_pem = self.key_file.as_ref().map(|p| read("key_file", p)).transpose()?;
        let roots = match (&ca_pem, &self.ca_file) {
            (Some(pem), Some(path)) => {
                let certs = CertificateDer::pem_slice_iter(pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| anyhow::anyhow!("[{section}.tls] ca_file {}: not a PEM certificate file: {e}", path.display()))?;
                if certs.is_empty() {
                    anyhow::bail!("[{section}.tls] ca_file {}: holds no certificate (expected -----BEGIN CERTIFICATE-----)", path.display());
                }
                Some(certs)
            }
            _ => None,
        };
        let chain = match (&cert_pem, &key_pem, &self.cert_file, &self.key_file) {
            (Some(cert), Some(key), Some(cp), Some(kp)) => {
                let certs = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| anyhow::anyhow!("[{section}.tls] cert_file {}: not a PEM certificate file: {e}", cp.display()))?;
                if certs.is_empty() {
                    anyhow::bail!("[{section}.tls] cert_file {}: holds no certificate", cp.display());
                }
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| anyhow::anyhow!("[{section}.tls] key_file {}: no private key in it: {e}", kp.display()))?;
                Some((certs, key))
            }
            _ => None,
        };
        Ok(TlsFiles { ca_pem, cert_pem, key_pem, roots, chain })
    }
}

impl TlsFiles {
    /// The rustls client config for `mode` (not `Disable`).
    pub fn client_config(&self, section: &str, mode: TlsMode) -> anyhow::Result<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        match &self.roots {
            Some(certs) => {
                for c in certs {
                    roots
                        .add(c.clone())
                        .map_err(|e| anyhow::anyhow!("[{section}.tls] ca_file: a certificate in it is not a usable CA: {e}"))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow::anyhow!("[{section}.tls]: {e}"))?;
        let builder = match mode {
            TlsMode::VerifyFull => builder.with_root_certificates(roots),
            TlsMode::VerifyCa | TlsMode::Require | TlsMode::Disable => {
                let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| anyhow::anyhow!("[{section}.tls]: {e}"))?;
                let verifier = Relaxed { inner: webpki, check_chain: mode == TlsMode::VerifyCa, provider };
                builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier))
            }
        };
        let config = match &self.chain {
            Some((certs, key)) => builder
                .with_client_auth_cert(certs.clone(), key.clone_key())
                .map_err(|e| anyhow::anyhow!("[{section}.tls] cert_file/key_file do not make a usable client certificate: {e}"))?,
            None => builder.with_no_client_auth(),
        };
        Ok(config)
    }
}

/// `verify-ca` (the chain is checked, the name is not) and `require` (nothing is
/// checked but the handshake's own signatures).
#[derive(Debug)]
struct Relaxed {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    check_chain: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Relaxed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !self.check_chain {
            return Ok(ServerCertVerified::assertion());
        }
        match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// tokio-postgres' TLS connector over rustls.
#[derive(Clone)]
pub struct PgRustls {
    config: Arc<rustls::ClientConfig>,
}

impl PgRustls {
    pub fn new(config: rustls::ClientConfig) -> PgRustls {
        PgRustls { config: Arc::new(config) }
    }
}

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for PgRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<PgTlsConnect, Self::Error> {
        let name = ServerName::try_from(domain.to_string())?;
        Ok(PgTlsConnect { connector: tokio_rustls::TlsConnector::from(self.config.clone()), name })
    }
}

pub struct PgTlsConnect {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl<S> tokio_postgres::tls::TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<PgTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move { Ok(PgTlsStream(self.connector.connect(self.name, stream).await?)) })
    }
}

pub struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for PgTlsStream<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        // tls-server-end-point would need the certificate's hash algorithm;
        // SCRAM without channel binding is what libpq does by default too.
        tokio_postgres::tls::ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A TLS failure said for an operator: which check failed and what to change.
pub fn explain(section: &str, error: &str) -> String {
    let hint = if error.contains("UnknownIssuer") || error.contains("unknown issuer") {
        format!("the server's certificate is not signed by the CA in [{section}.tls] ca_file; point ca_file at the CA that signed it")
    } else if error.contains("NotValidForName") || error.contains("not valid for name") {
        format!("the server's certificate does not name the host connected to; connect by a name it holds, or set [{section}.tls] mode = \"verify-ca\"")
    } else if error.contains("Expired") || error.contains("expired") {
        "the server's certificate has expired; renew it".to_string()
    } else if error.contains("CertificateRequired") || error.contains("certificate required") {
        format!("the server asks for a client certificate; set [{section}.tls] cert_file and key_file")
    } else if error.contains("server does not support TLS") || error.contains("does not support TLS") {
        format!("the server does not accept TLS; turn TLS on in the server or set [{section}.tls] mode = \"disable\"")
    } else {
        return String::new();
    };
    format!(" ({hint})")
}

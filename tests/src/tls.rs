//! A throwaway certificate authority for one test, made with the `openssl` CLI: a
//! CA, a server certificate for `localhost` and 127.0.0.1 signed by it, a client
//! certificate signed by it, and a second, unrelated CA (the "wrong CA" a host
//! must refuse). Everything lives in a temporary directory removed on Drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tempfile::TempDir;

/// The files of a test CA; every path is a PEM file.
pub struct TestCa {
    dir: TempDir,
}

impl TestCa {
    /// Makes the CA, the server and client certificates and the other CA; panics
    /// with openssl's output if a step fails.
    pub fn new() -> TestCa {
        let dir = crate::temp_dir();
        let ca = TestCa { dir };
        for name in ["ca", "other-ca"] {
            ca.openssl(&[
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                &format!("/CN=oplet test {name}"),
                "-keyout", &format!("{name}.key"), "-out", &format!("{name}.crt"),
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            ]);
        }
        std::fs::write(ca.path("server.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n").unwrap();
        std::fs::write(ca.path("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for (name, cn) in [("server", "localhost"), ("client", "app")] {
            ca.openssl(&["req", "-newkey", "rsa:2048", "-nodes", "-subj", &format!("/CN={cn}"), "-keyout", &format!("{name}.key"), "-out", &format!("{name}.csr")]);
            ca.openssl(&[
                "x509", "-req", "-in", &format!("{name}.csr"), "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-out", &format!("{name}.crt"), "-extfile", &format!("{name}.ext"),
            ]);
        }
        ca
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run openssl (apt-get install -y openssl)");
        assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A file in the CA's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The CA certificate the servers' certificates chain to.
    pub fn ca(&self) -> PathBuf {
        self.path("ca.crt")
    }
    /// A CA that signed nothing the servers present.
    pub fn other_ca(&self) -> PathBuf {
        self.path("other-ca.crt")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.path("server.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.path("server.key")
    }
    pub fn client_cert(&self) -> PathBuf {
        self.path("client.crt")
    }
    pub fn client_key(&self) -> PathBuf {
        self.path("client.key")
    }
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

/// A TLS-terminating proxy (tests/support/tls_proxy.py) in front of a plain TCP
/// server, presenting the test CA's server certificate: the MongoDB-compatible test
/// server has no TLS of its own. Killed on Drop.
pub struct TlsProxy {
    child: std::process::Child,
    port: u16,
}

impl TlsProxy {
    /// Listens on a free loopback port and forwards to `target` (`HOST:PORT`); with
    /// `require_client_cert`, only clients with a certificate from `ca` get through.
    pub fn start(ca: &TestCa, target: &str, require_client_cert: bool) -> TlsProxy {
        use std::io::BufRead;
        crate::require(crate::Service::Nx27017); // the same python3 runs the proxy
        let port = crate::free_port();
        let mut cmd = Command::new(crate::require::python());
        cmd.arg("-u")
            .arg(crate::repo_root().join("tests/support/tls_proxy.py"))
            .args(["--listen-port", &port.to_string(), "--target", target])
            .arg("--cert")
            .arg(ca.server_cert())
            .arg("--key")
            .arg(ca.server_key())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if require_client_cert {
            cmd.arg("--client-ca").arg(ca.ca());
        }
        let mut child = crate::process::spawn(cmd).expect("start tests/support/tls_proxy.py");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        std::io::BufReader::new(stdout).read_line(&mut line).expect("read the proxy's ready line");
        assert_eq!(line.trim(), format!("ready {port}"), "the TLS proxy did not start");
        TlsProxy { child, port }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            eprintln!("[oplet-tests] cannot kill the TLS proxy: {e}");
        }
        // Reaped so no zombie is left; its exit status (killed) says nothing.
        self.child.wait().ok();
    }
}

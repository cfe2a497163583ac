//! How `oplet run` ends, through the real binary: every fatal source error stops
//! the host (even beside a Socket.IO server) with the exit code the README's table
//! gives its cause, and the last log line names the source and the cause; bad
//! config input, attacked key by key, is one line naming the key and exit 2, never
//! a panic; a clean end is 0.

use oplet_tests::{free_port, install_plugin, oplet_bin, Mongo, Oplet, TempDir};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// A host folder with `oplet.toml` (`config` after the common lines), `plugins/`.
struct Host {
    dir: TempDir,
}

impl Host {
    fn new(config: &str) -> Host {
        let dir = oplet_tests::temp_dir();
        std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
        let text = format!("state_dir = \"state\"\n[plugins]\ndir = \"plugins\"\n[grants.\"*\"]\nall_requested = true\n{config}\n");
        std::fs::write(dir.path().join("oplet.toml"), text).unwrap();
        Host { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("oplet.toml")
    }

    fn start(&self) -> Oplet {
        Oplet::start(&self.config())
    }
}

/// Waits for the host to exit by itself; its exit code and last log line.
fn ended(oplet: &mut Oplet) -> (i32, String) {
    let status = oplet.wait_exit(WAIT).unwrap_or_else(|e| panic!("{e:#}"));
    let logs = oplet.logs();
    let last = logs.lines().last().unwrap_or_default().to_string();
    assert!(!logs.contains("panicked"), "a panic:\n{logs}");
    (status.code().unwrap_or_else(|| panic!("killed by a signal ({status}):\n{logs}")), last)
}

/// Asserts the exit code and that the last line names `source`, the code and `cause`.
fn assert_ended(oplet: &mut Oplet, code: i32, source: &str, cause: &str) {
    let (got, last) = ended(oplet);
    assert_eq!(got, code, "exit code; logs:\n{}", oplet.logs());
    assert!(
        last.contains(&format!("source {source:?}")) && last.contains(&format!("exit code {code}")) && last.contains(cause),
        "the last line names the source {source:?}, exit code {code} and {cause:?}: {last}"
    );
}

fn mongo_source(uri: &str, extra: &str) -> String {
    format!(
        "[[source]]\ntype = \"mongo\"\nname = \"m\"\nuri = \"{uri}\"\ncollections = [\"app.items\"]\nserver_selection_timeout_ms = 2000\n{extra}\n[source.reconnect]\ninitial_ms = 50\nmax_ms = 500\n"
    )
}

#[test]
fn a_json_lines_file_that_cannot_be_opened_exits_4() {
    for path in ["missing.jsonl", "."] {
        let host = Host::new(&format!("[[source]]\ntype = \"jsonl\"\nname = \"events\"\npath = \"{path}\"\n"));
        let mut oplet = host.start();
        assert_ended(&mut oplet, 4, "events", "input file unreadable");
    }
}

#[test]
fn a_failed_source_stops_the_host_even_with_a_socket_server_beside_it() {
    let port = free_port();
    let host = Host::new(&format!(
        "[socket]\nlisten = \"127.0.0.1:{port}\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n[[source]]\ntype = \"jsonl\"\nname = \"events\"\npath = \"gone.jsonl\"\n"
    ));
    let mut oplet = host.start();
    assert_ended(&mut oplet, 4, "events", "gone.jsonl");
}

#[test]
fn a_clean_end_of_every_source_exits_0_and_so_does_sigterm() {
    let host = Host::new("[[source]]\ntype = \"jsonl\"\nname = \"events\"\npath = \"e.jsonl\"\n");
    std::fs::write(host.dir.path().join("e.jsonl"), "{\"body\": {\"kind\": \"socket\", \"data\": {\"client\": \"c\", \"event\": \"x\"}}}\n").unwrap();
    let mut oplet = host.start();
    assert_eq!(ended(&mut oplet).0, 0, "{}", oplet.logs());

    let follow = Host::new("[[source]]\ntype = \"jsonl\"\nname = \"events\"\npath = \"e.jsonl\"\nfollow = true\n");
    std::fs::write(follow.dir.path().join("e.jsonl"), "").unwrap();
    let mut oplet = follow.start();
    tokio_block(oplet.wait_for_log("plugin(s) loaded", WAIT)).unwrap();
    let status = oplet.terminate().unwrap();
    assert_eq!(status.code(), Some(0), "{}", oplet.logs());
}

#[test]
fn a_socket_address_already_taken_exits_10() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let host = Host::new(&format!("[socket]\nname = \"clients\"\nlisten = \"{addr}\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n"));
    let mut oplet = host.start();
    let (code, last) = ended(&mut oplet);
    assert_eq!(code, 10, "{}", oplet.logs());
    assert!(last.contains("source \"clients\"") && last.contains(&addr.to_string()) && last.contains("exit code 10"), "{last}");
}

#[test]
fn a_uri_that_is_not_mongodb_is_a_config_error_naming_the_key() {
    let host = Host::new(&mongo_source("http://127.0.0.1:1/", ""));
    let mut oplet = host.start();
    let (code, last) = ended(&mut oplet);
    assert_eq!(code, 2, "{}", oplet.logs());
    assert!(last.contains("source[0].uri") && last.contains("not a MongoDB connection string"), "{last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_credentials_exit_5() {
    let mongo = tokio::task::block_in_place(Mongo::start_refusing_auth);
    let uri = if mongo.is_external() {
        // A real server: the same user with a password it cannot have.
        with_credentials(&mongo.uri(), "oplet-test-nobody", "wrong")
    } else {
        with_credentials(&mongo.uri(), "app", "wrong")
    };
    let host = Host::new(&mongo_source(&uri, ""));
    let mut oplet = tokio::task::block_in_place(|| host.start());
    tokio::task::block_in_place(|| assert_ended(&mut oplet, 5, "m", "refused the credentials"));
    assert!(!oplet.logs().contains("wrong"), "the password stays out of the logs:\n{}", oplet.logs());
}

fn with_credentials(uri: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = uri.split_once("://").unwrap();
    format!("{scheme}://{user}:{password}@{rest}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_history_with_fail_exits_7() {
    let mongo = tokio::task::block_in_place(Mongo::start_losing_history);
    assert!(!mongo.is_external(), "this scenario needs the local server that loses history on demand; unset OPLET_TEST_MONGODB_URI");
    let host = Host::new(&mongo_source(&mongo.uri(), ""));
    // A checkpoint from an earlier run: the server no longer has its token.
    let checkpoints = host.dir.path().join("state/checkpoints");
    std::fs::create_dir_all(&checkpoints).unwrap();
    std::fs::write(checkpoints.join("m.app.items.json"), r#"{"token": {"_data": "8264A1B2C3000000012B0229296E04"}, "seq": 3}"#).unwrap();
    let mut oplet = tokio::task::block_in_place(|| host.start());
    tokio::task::block_in_place(|| assert_ended(&mut oplet, 7, "m", "history lost"));
    let last = oplet.logs().lines().last().unwrap().to_string();
    assert!(last.contains("286") && last.contains("on_history_lost"), "{last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_change_streams_with_fallback_off_exits_8() {
    let mongo = tokio::task::block_in_place(Mongo::start_without_change_streams);
    assert!(!mongo.is_external(), "this scenario needs a server without change streams; unset OPLET_TEST_MONGODB_URI");
    let host = Host::new(&mongo_source(&mongo.uri(), "[source.fallback]\nmode = \"off\""));
    let mut oplet = tokio::task::block_in_place(|| host.start());
    tokio::task::block_in_place(|| assert_ended(&mut oplet, 8, "m", "40573"));
}

/// A TCP server that answers anything with an HTTP error, as a web server on the
/// wrong port would.
fn http_server() -> (u16, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        for conn in listener.incoming().take(8) {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 512];
            let _ = conn.read(&mut buf); // whatever the client sent
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (port, handle)
}

#[test]
fn a_port_where_an_http_server_answers_exits_6_and_says_so() {
    let (port, _server) = http_server();
    let host = Host::new(&mongo_source(&format!("mongodb://127.0.0.1:{port}/?directConnection=true"), ""));
    let mut oplet = host.start();
    assert_ended(&mut oplet, 6, "m", "HTTP");
    let first = oplet.logs().lines().find(|l| l.contains("WARN") && l.contains("not MongoDB")).map(str::to_string);
    assert!(first.is_some(), "the failed attempt is logged as it happens, naming the cause:\n{}", oplet.logs());
}

#[test]
fn tls_against_a_server_whose_certificate_is_not_trusted_exits_6_and_names_tls() {
    let dir = oplet_tests::temp_dir();
    let (key, cert) = (dir.path().join("k.pem"), dir.path().join("c.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl is on the machine (TESTING.md)");
    assert!(made.success());
    let port = free_port();
    let mut server = Command::new("openssl")
        .args(["s_server", "-quiet", "-accept", &port.to_string(), "-key"])
        .arg(&key)
        .arg("-cert")
        .arg(&cert)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start openssl s_server");
    let up = (0..400).any(|_| {
        std::thread::sleep(Duration::from_millis(25));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "openssl s_server listens on {port}");
    let host = Host::new(&mongo_source(&format!("mongodb://127.0.0.1:{port}/?directConnection=true&tls=true"), ""));
    let mut oplet = host.start();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| assert_ended(&mut oplet, 6, "m", "TLS handshake failed")));
    server.kill().unwrap();
    server.wait().unwrap();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

/// Runs `oplet run --config CONFIG` to its end with extra environment variables
/// (raw bytes allowed); its exit code and everything it printed.
fn run_raw(config: &std::path::Path, env: &[(std::ffi::OsString, std::ffi::OsString)]) -> (i32, String) {
    let out = Command::new(oplet_bin())
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .expect("run oplet");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn every_numeric_key_attacked_from_file_and_environment_is_one_line_naming_it_and_exit_2() {
    let host = Host::new("");
    let base = std::fs::read_to_string(host.config()).unwrap();
    let source = "[[source]]\ntype = \"mongo\"\nname = \"m\"\nuri = \"mongodb://127.0.0.1:1\"\ncollections = [\"a.b\"]\n";
    let sections = "[redis]\nurl = \"redis://127.0.0.1:1\"\n[postgres]\nurl = \"postgres://127.0.0.1:1/x\"\n[socket]\nlisten = \"127.0.0.1:0\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n";
    let attacks = ["0", "-1", "9223372036854775807", "9223372036854775808", "18446744073709551616", "1e30", "abc"];
    let mut tried = 0;
    for &(pattern, min, max) in oplet::config::NUMERIC_KEYS {
        let shown = pattern.replace(".*", "[0]");
        let var = format!("OPLET__{}", pattern.replace(".*.", ".0.").replace('.', "__").to_uppercase());
        for value in attacks {
            if value.parse::<i128>().is_ok_and(|n| n >= min as i128 && n <= max as i128) {
                continue; // 0 is allowed for some keys
            }
            // Through the environment, over a valid file.
            std::fs::write(host.config(), format!("{base}{sections}{source}")).unwrap();
            let env = [(var.clone().into(), value.into())];
            let (code, out) = run_raw(&host.config(), &env);
            assert_eq!(code, 2, "{var}={value}: {out}");
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(lines.len(), 1, "{var}={value}: one line: {out}");
            assert!(out.contains(&shown) && out.contains(&var) && !out.contains("panicked"), "{var}={value}: {out}");
            // And in the file (`abc` quoted: a bare word is not TOML).
            let literal = if value == "abc" { "\"abc\"".to_string() } else { value.to_string() };
            let (section, key) = pattern.rsplit_once('.').unwrap();
            let text = match section.strip_prefix("source.*") {
                Some("") => format!("{base}{sections}{source}{key} = {literal}\n"),
                Some(sub) => format!("{base}{sections}{source}[source{sub}]\n{key} = {literal}\n"),
                None => format!("{}{source}", with_key(&format!("{base}{sections}"), section, key, &literal)),
            };
            std::fs::write(host.config(), text).unwrap();
            let (code, out) = run_raw(&host.config(), &[]);
            assert_eq!(code, 2, "{pattern} = {value}: {out}");
            assert_eq!(out.lines().count(), 1, "{pattern} = {value}: one line: {out}");
            assert!(!out.contains("panicked"), "{out}");
            // Integers past i64 are not TOML: the parser names the line instead.
            assert!(out.contains(&shown) || value.len() >= 19, "{pattern} = {value}: {out}");
            tried += 2;
        }
    }
    assert!(tried > 300, "attacked {tried} times");
}

/// `sections` with `key = value` in `[section]` (added as a new table if absent).
fn with_key(sections: &str, section: &str, key: &str, value: &str) -> String {
    let header = format!("[{section}]\n");
    match sections.find(&header) {
        Some(at) => {
            let end = at + header.len();
            format!("{}{key} = {value}\n{}", &sections[..end], &sections[end..])
        }
        None => format!("{sections}{header}{key} = {value}\n"),
    }
}

#[test]
fn unrelated_non_utf8_variables_are_ignored_and_an_oplet_one_is_named() {
    use std::os::unix::ffi::OsStringExt;
    let host = Host::new("[[source]]\ntype = \"jsonl\"\nname = \"events\"\npath = \"e.jsonl\"\n");
    std::fs::write(host.dir.path().join("e.jsonl"), "").unwrap();
    let junk = std::ffi::OsString::from_vec(vec![b'a', 0xff, 0xfe]);
    let (code, out) = run_raw(&host.config(), &[("LS_COLORS".into(), junk.clone()), (junk.clone(), "x".into())]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = run_raw(&host.config(), &[("OPLET__PLUGINS__DIR".into(), junk)]);
    assert_eq!(code, 2, "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("OPLET__PLUGINS__DIR") && out.contains("not valid UTF-8") && !out.contains("panicked"), "{out}");
}

#[test]
fn a_wrong_type_from_the_environment_names_the_variable() {
    let host = Host::new("");
    let (code, out) = run_raw(&host.config(), &[("OPLET__PLUGINS__WATCH".into(), "sometimes".into())]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("plugins.watch") && out.contains("OPLET__PLUGINS__WATCH"), "{out}");
}

#[test]
fn an_echo_plugin_beside_a_failed_source_does_not_keep_the_host_up() {
    // The other source keeps nothing alive: a followed, healthy file beside a broken one.
    let host = Host::new(
        "[[source]]\ntype = \"jsonl\"\nname = \"ok\"\npath = \"ok.jsonl\"\nfollow = true\n[[source]]\ntype = \"jsonl\"\nname = \"broken\"\npath = \"nope/missing.jsonl\"\n",
    );
    std::fs::write(host.dir.path().join("ok.jsonl"), "").unwrap();
    install_plugin(&host.dir.path().join("plugins"), "echo", "name = \"echo\"\n[[subscribe]]\nnamespaces = [\"app.*\"]\n[capabilities]\naudit = true\n");
    let mut oplet = host.start();
    assert_ended(&mut oplet, 4, "broken", "missing.jsonl");
}

fn tokio_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

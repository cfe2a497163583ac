//! `oplet config check` through the real binary: a valid config passes, a typo'd
//! key is named with exit 2, every problem with the files it names is listed at
//! once (a broken plugin, a grant naming no plugin, a missing JSON-lines
//! file; an ungranted capability is a warning), and `--connect` names an unreachable service with exit 20.

use oplet_tests::{install_plugin_from, wasm_plugins, Postgres};
use std::path::Path;
use std::process::Command;

fn check(dir: &Path, connect: bool) -> (i32, String) {
    let mut cmd = Command::new(oplet_tests::oplet_bin());
    cmd.args(["config", "check", "--config"]).arg(dir.join("oplet.toml"));
    if connect {
        cmd.arg("--connect");
    }
    let out = cmd.output().unwrap();
    (out.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn host(config: &str) -> tempfile::TempDir {
    let dir = oplet_tests::temp_dir();
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    std::fs::write(dir.path().join("oplet.toml"), format!("state_dir = \"state\"\n[plugins]\ndir = \"plugins\"\n{config}")).unwrap();
    dir
}

const MANIFEST: &str = "name = \"p\"\nversion = \"1.0.0\"\n[[subscribe]]\nkind = \"change\"\n[capabilities]\naudit = true\n";

#[test]
fn a_valid_config_passes_and_a_typo_is_named() {
    let dir = host("[grants.\"p\"]\naudit = true\n");
    install_plugin_from(&dir.path().join("plugins"), "p", &wasm_plugins().path("echo"), MANIFEST);
    let (code, out) = check(dir.path(), false);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("oplet.toml: ok"), "{out}");

    let dir = host("[delivery]\nqueue_size = 5\n");
    let (code, out) = check(dir.path(), false);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("delivery") && out.contains("queue_size"), "the key is named: {out}");
}

#[test]
fn every_problem_with_the_files_is_listed_at_once() {
    let dir = host("[grants.\"nosuch\"]\naudit = true\n[[source]]\ntype = \"jsonl\"\nname = \"events\"\npath = \"missing.jsonl\"\n");
    let plugins = dir.path().join("plugins");
    install_plugin_from(&plugins, "p", &wasm_plugins().path("echo"), MANIFEST);
    std::fs::write(plugins.join("broken.wasm"), b"not wasm").unwrap();
    std::fs::write(plugins.join("broken.toml"), "name = \"broken\"\nversion = \"1\"\n").unwrap();
    let (code, out) = check(dir.path(), false);
    assert_eq!(code, 2, "{out}");
    let problems: Vec<&str> = out.lines().filter(|l| l.starts_with("problem: ")).collect();
    assert_eq!(problems.len(), 3, "{out}");
    assert!(out.contains("key source[0].path (source \"events\")") && out.contains("missing.jsonl does not exist"), "{out}");
    assert!(out.contains("plugin ") && out.contains("broken.wasm"), "{out}");
    assert!(out.contains("key grants.\"nosuch\": no plugin of that name"), "{out}");
    // Not a problem (the host runs; those effects are refused), but said.
    assert!(out.contains("warning: ") && out.contains("plugin \"p\" asks for more than [grants] allows"), "{out}");
    assert!(out.contains("3 problem(s)"), "{out}");
}

#[test]
fn connect_names_an_unreachable_service_with_exit_20() {
    let pg = Postgres::start();
    let dead_port = oplet_tests::free_port();
    let dir = host(&format!("[postgres]\nurl = \"{}\"\n[redis]\nurl = \"redis://127.0.0.1:{dead_port}/\"\n", pg.url()));
    let (code, out) = check(dir.path(), true);
    assert_eq!(code, 20, "{out}");
    assert!(out.contains("reachable: sink:postgres"), "{out}");
    assert!(out.contains(&format!("unreachable: sink:redis (127.0.0.1:{dead_port})")), "{out}");
}

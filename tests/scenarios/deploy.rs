//! What ships for deployment is checked, not just written: the systemd unit passes
//! `systemd-analyze verify` against the real binary and keeps its hardening, and
//! the compose stack's host config parses.

use oplet::config::Config;
use oplet_tests::{oplet_bin, repo_root};
use std::process::Command;

#[test]
fn the_systemd_unit_verifies_against_the_built_binary_and_stays_hardened() {
    let unit = std::fs::read_to_string(repo_root().join("deploy/oplet.service")).unwrap();
    for directive in ["DynamicUser=yes", "ProtectSystem=strict", "StateDirectory=oplet", "Restart=on-failure", "RestartPreventExitStatus=2", "NoNewPrivileges=yes"] {
        assert!(unit.lines().any(|l| l.trim() == directive), "deploy/oplet.service lacks {directive}");
    }
    // verify checks that ExecStart exists: point it at the binary the tests built.
    let dir = oplet_tests::temp_dir();
    let path = dir.path().join("oplet.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/oplet", &oplet_bin().display().to_string())).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().expect("run systemd-analyze (apt-get install systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed ({}): {stderr}", out.status);
    assert!(stderr.trim().is_empty(), "systemd-analyze verify warned: {stderr}");
    let out = Command::new("systemd-analyze").args(["security", "--offline=yes", "--threshold=20"]).arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exposure above 2.0 of 10:\n{text}{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_compose_stacks_host_config_parses() {
    let path = repo_root().join("deploy/compose-oplet.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let config = Config::parse(&text, &[], path.parent().unwrap()).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    assert_eq!(config.sources.len(), 1);
    let compose = std::fs::read_to_string(repo_root().join("deploy/compose.yaml")).unwrap();
    for service in ["mongo:", "redis:", "postgres:", "oplet:"] {
        assert!(compose.contains(&format!("  {service}\n")), "compose.yaml lacks the {service} service");
    }
}

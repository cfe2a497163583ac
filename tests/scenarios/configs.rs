//! Every configuration we ship parses: the example host configs, the bundled
//! plugins' manifests, and the reference block in the README, so none of them can
//! silently drift from the code (unknown keys are errors).

use oplet::config::Config;
use oplet::manifest::Manifest;
use oplet_tests::repo_root;
use std::path::Path;

fn files_with_ext(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    out.sort();
    out
}

#[test]
fn every_example_host_config_parses() {
    let configs = files_with_ext(&repo_root().join("examples/configs"), "toml");
    assert!(!configs.is_empty(), "no example configs found");
    for path in configs {
        let text = std::fs::read_to_string(&path).unwrap();
        Config::parse(&text, &[], path.parent().unwrap()).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    }
}

#[test]
fn every_bundled_plugin_manifest_parses_and_matches_its_crate() {
    let mut seen = 0;
    for entry in std::fs::read_dir(repo_root().join("plugins")).unwrap().flatten() {
        let dir = entry.path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let manifest = dir.join(format!("{name}.toml"));
        if !manifest.exists() {
            continue;
        }
        let m = Manifest::read(&manifest).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(m.name, name, "{}: name must equal the plugin's folder/file name", manifest.display());
        seen += 1;
    }
    assert!(seen >= 4, "expected the four bundled plugins' manifests, found {seen}");
    let hello = repo_root().join("examples/hello-plugin/hello.toml");
    Manifest::read(&hello).unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn the_readme_configuration_reference_parses() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = readme.split("## Configuration reference").nth(1).expect("README has a configuration reference");
    let block = section.split("```toml").nth(1).and_then(|b| b.split("```").next()).expect("a toml block");
    Config::parse(block, &[], Path::new("/srv/oplet")).unwrap_or_else(|e| panic!("README config block: {e:#}"));
    let manifest = readme.split("The manifest (`order-audit.toml`)").nth(1).expect("README's Write a plugin shows the manifest");
    let block = manifest.split("```toml").nth(1).and_then(|b| b.split("```").next()).unwrap();
    Manifest::from_toml(block, Path::new("README.md")).unwrap_or_else(|e| panic!("README manifest: {e:#}"));
}

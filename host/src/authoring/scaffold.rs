//! `oplet plugin new`: writes a standalone plugin project (Rust or AssemblyScript)
//! that builds with one command and passes its own tests as written. The files are
//! templates embedded in the binary (host/templates/); the SDK or PDK is named by
//! an absolute path found at run time, so the project works from any folder.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

/// The languages `plugin new` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    #[value(name = "assemblyscript", alias = "as")]
    AssemblyScript,
}

const EVENTS: &str = include_str!("../../templates/common/events.jsonl");
const EXPECTED: &str = include_str!("../../templates/common/expected.jsonl");
const MANIFEST: &str = include_str!("../../templates/common/manifest.toml");
/// Copies the built module under the name the host needs (`NAME.wasm`): cargo names
/// a Rust module after the crate, with '-' turned into '_'.
const DEPLOY: &str = include_str!("../../templates/common/deploy.sh");

/// (path in the project, template text); `NAME` in a path is the plugin's name.
const RUST: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../../templates/rust/Cargo.toml")),
    ("src/lib.rs", include_str!("../../templates/rust/src/lib.rs")),
    ("tests/handler.rs", include_str!("../../templates/rust/tests/handler.rs")),
    ("README.md", include_str!("../../templates/rust/README.md")),
    (".gitignore", include_str!("../../templates/rust/gitignore")),
    ("NAME.toml", MANIFEST),
    ("events.jsonl", EVENTS),
    ("expected.jsonl", EXPECTED),
    ("deploy.sh", DEPLOY),
];

const ASSEMBLYSCRIPT: &[(&str, &str)] = &[
    ("package.json", include_str!("../../templates/assemblyscript/package.json")),
    ("assembly/index.ts", include_str!("../../templates/assemblyscript/assembly/index.ts")),
    ("README.md", include_str!("../../templates/assemblyscript/README.md")),
    (".gitignore", include_str!("../../templates/assemblyscript/gitignore")),
    ("NAME.toml", MANIFEST),
    ("events.jsonl", EVENTS),
    ("expected.jsonl", EXPECTED),
    ("deploy.sh", DEPLOY),
];

/// Where the SDK or PDK of this build is: `$OPLET_SDK_DIR` / `$OPLET_PDK_DIR`,
/// else `share/oplet/{sdk,pdk}` beside an installed binary (`PREFIX/bin/oplet`),
/// else the source tree the binary was built from.
fn locate(env: &str, share: &str, source: &str, marker: &str) -> anyhow::Result<PathBuf> {
    let mut tried = Vec::new();
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os(env) {
        candidates.push(PathBuf::from(dir));
    }
    if let Some(prefix) = std::env::current_exe().ok().and_then(|e| e.parent()?.parent().map(Path::to_path_buf)) {
        candidates.push(prefix.join("share/oplet").join(share));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(source));
    for dir in candidates {
        if dir.join(marker).is_file() {
            return dir.canonicalize().with_context(|| format!("cannot resolve {}", dir.display()));
        }
        tried.push(dir.display().to_string());
    }
    bail!("cannot find the Oplet {share} (looked for {marker} in {}): set {env} to a checkout of the Oplet repository's {source}", tried.join(", "))
}

/// A plugin name is its file name (`NAME.wasm`) and a package name: lower-case
/// letters, digits and `-`/`_`, starting with a letter.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !ok {
        bail!("plugin name {name:?} is not usable: use 1 to 64 lower-case letters, digits, '-' or '_', starting with a letter (e.g. \"order-audit\")");
    }
    Ok(())
}

/// `order-audit` → `OrderAudit` (the plugin's type name in Rust).
fn type_name(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect()
}

/// How the project's scripts call this binary: `oplet` when that is what PATH finds,
/// else its absolute path (a host built but not installed).
fn oplet_command() -> String {
    let me = std::env::current_exe().ok().and_then(|p| p.canonicalize().ok());
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|d| d.join("oplet")).find(|p| p.is_file()).and_then(|p| p.canonicalize().ok())
    });
    match (me, on_path) {
        (Some(me), Some(found)) if me == found => "oplet".into(),
        (Some(me), _) => me.display().to_string(),
        (None, _) => "oplet".into(),
    }
}

/// Writes the project `dir/NAME` (or `dir` itself when it is given and empty or
/// absent) and returns its folder. Refuses to write into a non-empty folder.
pub fn new_plugin(name: &str, lang: Lang, dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let project = match dir {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from(name),
    };
    if project.exists() {
        let empty = std::fs::read_dir(&project).with_context(|| format!("{} exists and is not a readable folder", project.display()))?.next().is_none();
        if !empty {
            bail!("{} already exists and is not empty: choose another --dir or name (nothing was written)", project.display());
        }
    }
    let crate_name = name.replace('-', "_");
    let mut vars = vec![("{{name}}", name.to_string()), ("{{crate}}", crate_name), ("{{type}}", type_name(name)), ("{{oplet}}", oplet_command())];
    let files = match lang {
        Lang::Rust => {
            let sdk = locate("OPLET_SDK_DIR", "sdk", "sdk", "Cargo.toml")?;
            vars.push(("{{sdk_path}}", toml_path(&sdk)?));
            vars.push(("{{module}}", rust_module(name)));
            // A shell path: cargo writes under $CARGO_TARGET_DIR when it is set.
            vars.push(("{{module_sh}}", rust_module(name).replacen("target/", "${CARGO_TARGET_DIR:-target}/", 1)));
            vars.push(("{{build}}", "cargo build --release --target wasm32-unknown-unknown".into()));
            RUST
        }
        Lang::AssemblyScript => {
            let pdk = locate("OPLET_PDK_DIR", "pdk", "pdk/assemblyscript", "assembly/abi.ts")?;
            vars.push(("{{pdk_path}}", pdk.display().to_string()));
            vars.push(("{{module}}", format!("{name}.wasm")));
            vars.push(("{{module_sh}}", format!("{name}.wasm")));
            vars.push(("{{build}}", "npm install && npm run build".into()));
            ASSEMBLYSCRIPT
        }
    };
    for (path, template) in files {
        let path = project.join(path.replace("NAME", name));
        let mut text = template.to_string();
        for (key, value) in &vars {
            text = text.replace(key, value);
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        if path.extension().is_some_and(|e| e == "sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).with_context(|| format!("cannot make {} executable", path.display()))?;
        }
    }
    Ok(project)
}

/// Where cargo writes a Rust plugin's module: named after the crate, '-' → '_'.
fn rust_module(name: &str) -> String {
    format!("target/wasm32-unknown-unknown/release/{}.wasm", name.replace('-', "_"))
}

/// A path as it may sit inside a TOML basic string.
fn toml_path(p: &Path) -> anyhow::Result<String> {
    let s = p.to_str().with_context(|| format!("the SDK path {} is not UTF-8", p.display()))?;
    Ok(s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// What to do next, printed after the files are written.
pub fn next_steps(name: &str, lang: Lang, project: &Path) -> String {
    let cd = format!("cd {}", project.display());
    match lang {
        Lang::Rust => format!(
            "created {name} (Rust) in {}\nnext:\n  {cd}\n  cargo test\n  cargo build --release --target wasm32-unknown-unknown\n  {} plugin test {} --manifest {name}.toml --events events.jsonl --expect expected.jsonl --check-capabilities\n  ./deploy.sh PLUGIN_DIR    # copies {} as {name}.wasm, manifest first (README.md)",
            project.display(),
            oplet_command(),
            rust_module(name),
            rust_module(name),
        ),
        Lang::AssemblyScript => format!(
            "created {name} (AssemblyScript) in {}\nnext:\n  {cd}\n  npm install && npm run build     # writes {name}.wasm\n  npm test\n  ./deploy.sh PLUGIN_DIR    # copies {name}.wasm and its manifest, manifest first (README.md)",
            project.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_files_crates_and_types() {
        assert!(check_name("order-audit").is_ok());
        assert!(check_name("a1_b").is_ok());
        for bad in ["", "Order", "1st", "a b", "../x", "a.b"] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.contains("is not usable"), "{bad}: {e}");
        }
        assert_eq!(type_name("order-audit"), "OrderAudit");
        assert_eq!(type_name("x"), "X");
    }

    #[test]
    fn every_placeholder_is_filled() {
        let dir = std::env::temp_dir().join(format!("oplet-scaffold-unit-{}", std::process::id()));
        for (lang, sub) in [(Lang::Rust, "rs"), (Lang::AssemblyScript, "as")] {
            let project = new_plugin("order-audit", lang, Some(&dir.join(sub))).unwrap();
            for entry in walk(&project) {
                let text = std::fs::read_to_string(&entry).unwrap();
                assert!(!text.contains("{{"), "{} has an unfilled placeholder", entry.display());
            }
            assert!(project.join("order-audit.toml").is_file());
            // deploy.sh copies the module cargo or asc really writes, as NAME.wasm.
            use std::os::unix::fs::PermissionsExt;
            let deploy = project.join("deploy.sh");
            assert_eq!(std::fs::metadata(&deploy).unwrap().permissions().mode() & 0o777, 0o755);
            let script = std::fs::read_to_string(&deploy).unwrap();
            let built = if lang == Lang::Rust { "module=\"${CARGO_TARGET_DIR:-target}/wasm32-unknown-unknown/release/order_audit.wasm\"" } else { "module=\"order-audit.wasm\"" };
            assert!(script.contains(built), "{script}");
            assert!(script.contains("mv \"$dir/.order-audit.wasm.tmp\" \"$dir/order-audit.wasm\""), "{script}");
            let again = new_plugin("order-audit", lang, Some(&project)).unwrap_err().to_string();
            assert!(again.contains("already exists and is not empty"), "{again}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }
}

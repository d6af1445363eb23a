//! Generates `events::topics` from `topics/*.toml`: one constant per topic name and the text of
//! every spec file, so that a topic is named and specified in one place, its file.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    if let Err(message) = generate() {
        // A build script's stderr is what cargo shows when it fails.
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

/// One spec file, as far as the generated code needs it. The runtime parses and validates the
/// whole spec (the crate's tests check every embedded file against `TopicSet::load`).
struct Spec {
    name: String,
    description: String,
    path: PathBuf,
}

fn generate() -> Result<(), String> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR")
        .map_err(|e| format!("CARGO_MANIFEST_DIR is not set: {e}"))?;
    // The crate is services/events; topics/ is at the workspace root.
    let root = Path::new(&manifest)
        .ancestors()
        .nth(2)
        .ok_or_else(|| format!("{manifest} has no workspace root two levels up"))?;
    let dir = root.join("topics");
    // A directory here makes cargo rerun the script when a file is added or removed.
    println!("cargo:rerun-if-changed={}", dir.display());
    let entries =
        std::fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
            .path();
        if path.extension().is_some_and(|x| x == "toml") {
            paths.push(path);
        }
    }
    let mut specs = Vec::new();
    for path in paths {
        println!("cargo:rerun-if-changed={}", path.display());
        specs.push(read(path)?);
    }
    specs.sort_by(|a, b| a.name.cmp(&b.name));

    let mut code = String::new();
    let mut idents: Vec<(String, &str)> = Vec::new();
    for spec in specs.iter().filter(|s| !s.name.starts_with('_')) {
        let ident = constant(&spec.name).ok_or_else(|| {
            format!(
                "{}: topic name '{}' cannot name a Rust constant; start it with a letter",
                spec.path.display(),
                spec.name
            )
        })?;
        if let Some((_, other)) = idents.iter().find(|(i, _)| *i == ident) {
            return Err(format!(
                "{}: topics '{other}' and '{}' would both be the constant {ident}",
                spec.path.display(),
                spec.name
            ));
        }
        let _ = writeln!(code, "#[doc = {:?}]", spec.description);
        let _ = writeln!(code, "pub const {ident}: &str = {:?};", spec.name);
        idents.push((ident, &spec.name));
    }
    let _ = writeln!(
        code,
        "/// Every spec file of `topics/`, internal topics included, sorted by topic name."
    );
    let _ = writeln!(code, "pub const FILES: &[SpecFile] = &[");
    for spec in &specs {
        let file = spec
            .path
            .file_name()
            .and_then(|f| f.to_str())
            .ok_or_else(|| format!("{}: the file name is not UTF-8", spec.path.display()))?;
        let path = spec
            .path
            .to_str()
            .ok_or_else(|| format!("{}: the path is not UTF-8", spec.path.display()))?;
        let _ = writeln!(
            code,
            "    SpecFile {{ file: {file:?}, text: include_str!({path:?}) }},"
        );
    }
    let _ = writeln!(code, "];");

    let out = std::env::var("OUT_DIR").map_err(|e| format!("OUT_DIR is not set: {e}"))?;
    let target = Path::new(&out).join("topics.rs");
    std::fs::write(&target, code).map_err(|e| format!("cannot write {}: {e}", target.display()))
}

/// The name and description of one spec file.
fn read(path: PathBuf) -> Result<Spec, String> {
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("{} is not a valid topic spec: {e}", path.display()))?;
    let field = |key: &str| {
        table
            .get(key)
            .and_then(toml::Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("{}: `{key}` must be a string", path.display()))
    };
    let name = field("name")?;
    let description = field("description")?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    if name != stem {
        return Err(format!(
            "{}: name '{name}' must equal the file name without .toml ('{stem}')",
            path.display()
        ));
    }
    Ok(Spec {
        name,
        description,
        path,
    })
}

/// `flight.commands` → `FLIGHT_COMMANDS`; `None` when the name cannot start an identifier.
fn constant(name: &str) -> Option<String> {
    let ident: String = name
        .chars()
        .map(|c| match c {
            '.' | '-' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    ident
        .starts_with(|c: char| c.is_ascii_alphabetic())
        .then_some(ident)
}

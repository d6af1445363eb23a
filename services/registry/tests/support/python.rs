//! The Python with Confluent's client (`confluent-kafka` and its Avro extras) that the interop
//! tests drive: `TRIPSTREAM_PYTHON`, else `.venv/bin/python` at the repository root (what
//! `scripts/test` creates), else `python3`. Shared by the registry's and the system's interop
//! tests (`#[path]`), so both find it, and skip or fail without it, the same way.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Python to run, or `None` after saying the test is skipped. Panics when none has
/// `confluent_kafka` and `TRIPSTREAM_INTEROP=required` (as in `scripts/test` and CI).
pub fn with_confluent_kafka() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let found = [
        std::env::var_os("TRIPSTREAM_PYTHON").map(PathBuf::from),
        Some(root.join(".venv/bin/python")),
        Some(PathBuf::from("python3")),
    ]
    .into_iter()
    .flatten()
    .find(|python| {
        Command::new(python)
            .args(["-c", "import confluent_kafka.schema_registry.avro"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        let required = std::env::var("TRIPSTREAM_INTEROP").is_ok_and(|v| v == "required");
        assert!(
            !required,
            "no Python with confluent-kafka found; run scripts/test, or pip install 'confluent-kafka[avro,schemaregistry]'"
        );
        eprintln!("SKIPPED: no Python with confluent-kafka; run scripts/test to include this test");
    }
    found
}

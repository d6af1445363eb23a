//! The project's contract: `topics/` and `schemas/` loaded together, and the registry subjects
//! they define.
//!
//! Subjects follow the TopicRecordNameStrategy, `<topic>-<record full name>`, because most
//! tripstream topics carry several record types (a booking's requested, confirmed and
//! cancelled events share one topic to keep their order). A schema therefore has one subject
//! per topic that allows it, each at that topic's compatibility level.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::avro::compat::Level;
use crate::avro::schema::Schema;
use crate::error::{Error, Result};
use crate::kafka::topic::TopicSet;
use crate::registry::subject_name;

/// One `.avsc` file of `schemas/`.
#[derive(Debug, Clone)]
pub struct SchemaFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// The parsed schema.
    pub schema: Schema,
}

impl SchemaFile {
    /// The record's full name, which is also the file name without `.avsc`.
    pub fn full_name(&self) -> &str {
        self.schema.full_name().unwrap_or_default()
    }
}

/// A registry subject defined by the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// `<topic>-<record>`.
    pub name: String,
    /// The topic.
    pub topic: String,
    /// The record's full name.
    pub record: String,
    /// The level of the topic.
    pub level: Level,
}

/// Topics and schemas of a project.
#[derive(Debug, Clone)]
pub struct Contract {
    /// The topics.
    pub topics: TopicSet,
    /// The schemas by full name.
    pub schemas: BTreeMap<String, SchemaFile>,
}

impl Contract {
    /// Loads `<root>/topics` and `<root>/schemas` and checks that they agree.
    ///
    /// # Errors
    ///
    /// Every problem found, each naming its file: invalid specs, invalid schemas, a file name
    /// that differs from the record's full name, a topic naming a record type with no schema.
    pub fn load(root: &Path) -> std::result::Result<Contract, Vec<Error>> {
        let mut errors = Vec::new();
        let topics = TopicSet::load(&root.join("topics")).unwrap_or_else(|e| {
            errors.extend(e);
            TopicSet::default()
        });
        let mut schemas_complete = true;
        let schemas = load_schemas(&root.join("schemas")).unwrap_or_else(|e| {
            schemas_complete = false;
            errors.extend(e);
            BTreeMap::new()
        });
        for spec in topics.declared() {
            for (i, record) in spec.record_types.iter().enumerate() {
                if schemas_complete && !schemas.contains_key(record) {
                    errors.push(Error::TopicSpec {
                        file: root.join("topics").join(format!("{}.toml", spec.name)),
                        field: format!("record_types[{i}]"),
                        reason: format!("no schema file schemas/{record}.avsc defines {record}"),
                    });
                }
            }
        }
        if errors.is_empty() {
            Ok(Contract { topics, schemas })
        } else {
            Err(errors)
        }
    }

    /// Every subject, sorted by name. A schema that no topic allows gets one subject named
    /// after the record alone (RecordNameStrategy) at BACKWARD, so it is still checked.
    pub fn subjects(&self) -> Vec<Subject> {
        let mut subjects = Vec::new();
        for spec in self.topics.declared() {
            for record in &spec.record_types {
                subjects.push(Subject {
                    name: subject_name(&spec.name, record),
                    topic: spec.name.clone(),
                    record: record.clone(),
                    level: spec.compatibility,
                });
            }
        }
        for record in self.schemas.keys() {
            if !subjects.iter().any(|s| s.record == *record) {
                subjects.push(Subject {
                    name: record.clone(),
                    topic: String::new(),
                    record: record.clone(),
                    level: Level::Backward,
                });
            }
        }
        subjects.sort_by(|a, b| a.name.cmp(&b.name));
        subjects
    }
}

/// Reads every `.avsc` file of a directory.
///
/// # Errors
///
/// Every invalid file with its reason and location.
pub fn load_schemas(dir: &Path) -> std::result::Result<BTreeMap<String, SchemaFile>, Vec<Error>> {
    let entries = std::fs::read_dir(dir).map_err(|e| vec![Error::io(dir, e)])?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "avsc"))
        .collect();
    paths.sort();
    let mut schemas = BTreeMap::new();
    let mut errors = Vec::new();
    for path in paths {
        match load_schema_file(&path) {
            Ok(file) => {
                schemas.insert(file.full_name().to_owned(), file);
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(schemas)
    } else {
        Err(errors)
    }
}

/// Reads one `.avsc` file, whose name must be the record's full name.
///
/// # Errors
///
/// [`Error::Io`], or [`Error::Schema`] naming the file, location and reason.
pub fn load_schema_file(path: &Path) -> Result<SchemaFile> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let shown = path.display().to_string();
    let schema = Schema::parse(&text).map_err(|e| e.in_source(shown.clone()))?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    match schema.full_name() {
        Some(name) if name == stem => Ok(SchemaFile {
            path: path.to_owned(),
            schema,
        }),
        Some(name) => Err(Error::from(crate::avro::schema::SchemaError {
            source: Some(shown),
            location: "/name".into(),
            reason: format!(
                "the record is named {name} but the file is named {stem}.avsc; they must agree"
            ),
        })),
        None => Err(Error::from(crate::avro::schema::SchemaError {
            source: Some(shown),
            location: "/".into(),
            reason: "a file under schemas/ must define a named record type".into(),
        })),
    }
}

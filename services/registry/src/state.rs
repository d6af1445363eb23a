//! The registry's state and the deterministic state machine that the `_schemas` log drives.
//!
//! Every write is a [`Command`] appended to the one-partition `_schemas` topic; every instance
//! applies the log in order with [`State::apply`]. Because `apply` depends only on the state
//! and the command (compatibility checks included), all instances that have read the same
//! prefix of the log hold the same subjects, versions and ids, and a restart that replays the
//! log serves the same ids as before.
//!
//! Applying is split in two so that readers are not held up by the costly part: [`State::prepare`]
//! parses and checks a schema under a read lock, and [`State::commit`] makes the change under
//! the write lock. The log's applier is the only writer and runs one record at a time, so the
//! state a command was prepared against is still the state it is committed to.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use streams::avro::compat::{self, Direction, Level};
use streams::avro::schema::Schema;

use crate::error::ApiError;

/// A write, as stored in the `_schemas` log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Register a schema under a subject.
    Register {
        /// The subject.
        subject: String,
        /// The schema's canonical text.
        schema: String,
    },
    /// Delete one version of a subject.
    DeleteVersion {
        /// The subject.
        subject: String,
        /// The version, or `None` for the latest.
        version: Option<i32>,
        /// Hard delete (after a soft one).
        permanent: bool,
    },
    /// Delete every version of a subject.
    DeleteSubject {
        /// The subject.
        subject: String,
        /// Hard delete (after a soft one).
        permanent: bool,
    },
    /// Set (`Some`) or remove (`None`) a compatibility level, globally or for a subject.
    SetLevel {
        /// The subject, or `None` for the global level.
        subject: Option<String>,
        /// The new level.
        level: Option<Level>,
    },
    /// Set the global mode.
    SetMode {
        /// The new mode.
        mode: Mode,
    },
}

/// Whether the registry accepts writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Mode {
    /// Reads and writes.
    Readwrite,
    /// Reads only: registrations and deletions are refused.
    Readonly,
}

impl Mode {
    /// The upper-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Readwrite => "READWRITE",
            Mode::Readonly => "READONLY",
        }
    }
}

/// A schema known by id.
#[derive(Debug, Clone)]
pub struct StoredSchema {
    /// Its global id.
    pub id: u32,
    /// The parsed schema (its canonical text is its identity).
    pub schema: Arc<Schema>,
    /// The pre-rendered body of `GET /schemas/ids/{id}`, the registry's hottest read.
    pub body: Bytes,
    /// How many versions (soft-deleted included) use it.
    references: usize,
}

/// One version of a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubjectVersion {
    /// The version number, from 1.
    pub version: i32,
    /// The schema's global id.
    pub id: u32,
    /// Soft-deleted.
    pub deleted: bool,
}

#[derive(Debug, Clone, Default)]
struct SubjectState {
    versions: Vec<SubjectVersion>,
    level: Option<Level>,
}

impl SubjectState {
    fn active(&self) -> impl Iterator<Item = &SubjectVersion> {
        self.versions.iter().filter(|v| !v.deleted)
    }

    fn is_empty(&self) -> bool {
        self.versions.is_empty() && self.level.is_none()
    }
}

/// A command whose costly part is done: its schema parsed and checked against the versions
/// before it. Made by [`State::prepare`], applied by [`State::commit`] to the same state.
#[derive(Debug)]
pub struct Prepared(Step);

#[derive(Debug)]
enum Step {
    /// The answer is known and the command changes nothing.
    Answer(Result<Value, ApiError>),
    /// Add a version holding this schema, which passed the compatibility check.
    Register {
        subject: String,
        schema: Arc<Schema>,
    },
    /// A command with nothing costly to prepare.
    Apply(Command),
}

/// Everything the registry knows.
#[derive(Debug, Clone)]
pub struct State {
    schemas: HashMap<u32, StoredSchema>,
    ids: HashMap<String, u32>,
    next_id: u32,
    subjects: BTreeMap<String, SubjectState>,
    global_level: Level,
    default_level: Level,
    mode: Mode,
}

impl State {
    /// An empty registry whose global level starts (and resets) at `default_level`.
    pub fn new(default_level: Level) -> Self {
        State {
            schemas: HashMap::new(),
            ids: HashMap::new(),
            next_id: 1,
            subjects: BTreeMap::new(),
            global_level: default_level,
            default_level,
            mode: Mode::Readwrite,
        }
    }

    /// Applies one command from the log; the result is the HTTP answer for its proposer.
    ///
    /// # Errors
    ///
    /// The registry error the proposer receives (the command then changes nothing).
    pub fn apply(&mut self, command: &Command) -> Result<Value, ApiError> {
        let prepared = self.prepare(command.clone(), None);
        self.commit(prepared)
    }

    /// Does the costly part of a command without changing anything: a registration's schema is
    /// parsed (unless `parsed`, the proposer's own parse of the same text, or a schema already
    /// known by this text is at hand) and checked against the subject's versions.
    pub fn prepare(&self, command: Command, parsed: Option<Arc<Schema>>) -> Prepared {
        let Command::Register {
            subject,
            schema: text,
        } = command
        else {
            return Prepared(Step::Apply(command));
        };
        Prepared(
            self.prepare_register(subject, &text, parsed)
                .unwrap_or_else(|e| Step::Answer(Err(e))),
        )
    }

    /// Applies a prepared command; the result is the HTTP answer for its proposer.
    ///
    /// # Errors
    ///
    /// The registry error the proposer receives (the command then changes nothing).
    pub fn commit(&mut self, prepared: Prepared) -> Result<Value, ApiError> {
        match prepared.0 {
            Step::Answer(answer) => answer,
            Step::Register { subject, schema } => Ok(self.add_version(&subject, schema)),
            Step::Apply(command) => self.apply_cheap(command),
        }
    }

    fn apply_cheap(&mut self, command: Command) -> Result<Value, ApiError> {
        match command {
            // `prepare` keeps registrations for itself; were one handed here, it is prepared
            // now rather than skipped.
            register @ Command::Register { .. } => {
                let prepared = self.prepare(register, None);
                self.commit(prepared)
            }
            Command::DeleteVersion {
                subject,
                version,
                permanent,
            } => self.delete_version(&subject, version, permanent),
            Command::DeleteSubject { subject, permanent } => {
                self.delete_subject(&subject, permanent)
            }
            Command::SetLevel { subject, level } => self.set_level(subject.as_deref(), level),
            Command::SetMode { mode } => {
                self.mode = mode;
                Ok(json!({ "mode": mode.as_str() }))
            }
        }
    }

    fn writable(&self) -> Result<(), ApiError> {
        match self.mode {
            Mode::Readwrite => Ok(()),
            Mode::Readonly => Err(ApiError::read_only()),
        }
    }

    /// A new version to add, or the answer when the subject already holds the schema.
    fn prepare_register(
        &self,
        subject: String,
        text: &str,
        parsed: Option<Arc<Schema>>,
    ) -> Result<Step, ApiError> {
        self.writable()?;
        // The log holds canonical texts, so a schema registered before (under any subject)
        // is found by its text and not parsed again: a replay parses each schema once.
        let known = parsed.filter(|s| s.canonical() == text).or_else(|| {
            self.ids
                .get(text)
                .and_then(|id| self.schemas.get(id))
                .map(|stored| stored.schema.clone())
        });
        let schema = match known {
            Some(schema) => schema,
            // Stored, not full, checks: a record the log holds was accepted when it was
            // written, and must replay to the same ids (the HTTP API checks new ones in full).
            None => Arc::new(Schema::parse_stored(text).map_err(|e| ApiError::invalid_schema(&e))?),
        };
        if let Some(existing) = self.find_in_subject(&subject, schema.canonical(), false) {
            return Ok(Step::Answer(Ok(json!({ "id": existing.id }))));
        }
        let level = self.level_of(&subject);
        let previous = self.active_schemas(&subject);
        let refs: Vec<&Schema> = previous.iter().map(|(_, s)| s.as_ref()).collect();
        let violations = compat::check(level, &schema, &refs);
        if !violations.is_empty() {
            let versions: Vec<i32> = previous.iter().map(|(v, _)| *v).collect();
            let details = describe(&violations, &versions);
            return Err(ApiError::incompatible(&subject, &details));
        }
        Ok(Step::Register { subject, schema })
    }

    /// Adds a version of `subject` holding `schema`, under the schema's id (a new one for a
    /// schema not known before).
    fn add_version(&mut self, subject: &str, schema: Arc<Schema>) -> Value {
        let id = match self.ids.get(schema.canonical()) {
            Some(id) => *id,
            None => {
                let id = self.next_id;
                self.next_id += 1;
                self.ids.insert(schema.canonical().to_owned(), id);
                let body = json!({ "schema": schema.canonical() }).to_string();
                self.schemas.insert(
                    id,
                    StoredSchema {
                        id,
                        schema,
                        body: Bytes::from(body),
                        references: 0,
                    },
                );
                id
            }
        };
        if let Some(stored) = self.schemas.get_mut(&id) {
            stored.references += 1;
        }
        let state = self.subjects.entry(subject.to_owned()).or_default();
        let version = state.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
        state.versions.push(SubjectVersion {
            version,
            id,
            deleted: false,
        });
        json!({ "id": id })
    }

    fn delete_version(
        &mut self,
        subject: &str,
        version: Option<i32>,
        permanent: bool,
    ) -> Result<Value, ApiError> {
        self.writable()?;
        let state = self.subject_with_versions(subject)?;
        let position = match version {
            Some(v) => state.versions.iter().position(|x| x.version == v),
            // "latest" means the latest live version; when none is live, the latest soft-deleted
            // one, so that `DELETE .../latest?permanent=true` can finish the job.
            None => state
                .versions
                .iter()
                .rposition(|x| !x.deleted)
                .or(if permanent {
                    state.versions.len().checked_sub(1)
                } else {
                    None
                }),
        };
        let Some(position) = position else {
            return Err(ApiError::version_not_found(subject, version));
        };
        let entry = state.versions[position];
        if !permanent {
            if entry.deleted {
                return Err(ApiError::version_soft_deleted(subject, entry.version));
            }
            state.versions[position].deleted = true;
        } else {
            if !entry.deleted {
                return Err(ApiError::version_not_soft_deleted(subject, entry.version));
            }
            state.versions.remove(position);
            let empty = state.is_empty();
            self.release(entry.id);
            if empty {
                self.subjects.remove(subject);
            }
        }
        Ok(json!(entry.version))
    }

    fn delete_subject(&mut self, subject: &str, permanent: bool) -> Result<Value, ApiError> {
        self.writable()?;
        let state = self.subject_with_versions(subject)?;
        let all_deleted = state.versions.iter().all(|v| v.deleted);
        if !permanent {
            if all_deleted {
                return Err(ApiError::subject_soft_deleted(subject));
            }
            let mut deleted = Vec::new();
            for v in state.versions.iter_mut().filter(|v| !v.deleted) {
                v.deleted = true;
                deleted.push(v.version);
            }
            return Ok(json!(deleted));
        }
        if !all_deleted {
            return Err(ApiError::subject_not_soft_deleted(subject));
        }
        let removed = std::mem::take(&mut state.versions);
        let level_kept = state.level.is_some();
        if !level_kept {
            self.subjects.remove(subject);
        }
        for v in &removed {
            self.release(v.id);
        }
        Ok(json!(removed.iter().map(|v| v.version).collect::<Vec<_>>()))
    }

    /// A subject that has at least one version (soft-deleted ones count), for changing it.
    fn subject_with_versions(&mut self, subject: &str) -> Result<&mut SubjectState, ApiError> {
        self.subjects
            .get_mut(subject)
            .filter(|s| !s.versions.is_empty())
            .ok_or_else(|| ApiError::subject_not_found(subject))
    }

    fn release(&mut self, id: u32) {
        // The schema stays known by its text, so registering it again yields the same id.
        if let Some(stored) = self.schemas.get_mut(&id) {
            stored.references = stored.references.saturating_sub(1);
        }
    }

    fn set_level(
        &mut self,
        subject: Option<&str>,
        level: Option<Level>,
    ) -> Result<Value, ApiError> {
        // Applied in READONLY too: the API refuses config changes in READONLY before they are
        // logged, and a log written before it did replays as it did.
        match (subject, level) {
            (None, Some(level)) => {
                self.global_level = level;
                Ok(json!({ "compatibility": level.as_str() }))
            }
            (None, None) => {
                let previous = std::mem::replace(&mut self.global_level, self.default_level);
                Ok(json!({ "compatibilityLevel": previous.as_str() }))
            }
            (Some(subject), Some(level)) => {
                self.subjects.entry(subject.to_owned()).or_default().level = Some(level);
                Ok(json!({ "compatibility": level.as_str() }))
            }
            (Some(subject), None) => {
                let state = self
                    .subjects
                    .get_mut(subject)
                    .ok_or_else(|| ApiError::subject_not_found(subject))?;
                let previous = state.level.take().unwrap_or(self.global_level);
                if state.is_empty() {
                    self.subjects.remove(subject);
                }
                Ok(json!({ "compatibilityLevel": previous.as_str() }))
            }
        }
    }

    // ---- reads ----

    /// The level in force for a subject.
    pub fn level_of(&self, subject: &str) -> Level {
        self.subjects
            .get(subject)
            .and_then(|s| s.level)
            .unwrap_or(self.global_level)
    }

    /// The subject's own level, if set.
    pub fn subject_level(&self, subject: &str) -> Option<Level> {
        self.subjects.get(subject).and_then(|s| s.level)
    }

    /// The global level.
    pub fn global_level(&self) -> Level {
        self.global_level
    }

    /// The global mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Subjects with a version (soft-deleted ones too when `deleted`).
    pub fn subjects(&self, deleted: bool) -> Vec<&str> {
        self.subjects
            .iter()
            .filter(|(_, s)| {
                if deleted {
                    !s.versions.is_empty()
                } else {
                    s.active().next().is_some()
                }
            })
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// Whether a subject has any version (soft-deleted ones count when `deleted`).
    pub fn has_subject(&self, subject: &str, deleted: bool) -> bool {
        self.subjects.get(subject).is_some_and(|s| {
            if deleted {
                !s.versions.is_empty()
            } else {
                s.active().next().is_some()
            }
        })
    }

    /// The versions of a subject.
    pub fn versions(&self, subject: &str, deleted: bool) -> Vec<SubjectVersion> {
        self.subjects
            .get(subject)
            .map(|s| {
                s.versions
                    .iter()
                    .filter(|v| deleted || !v.deleted)
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One version of a subject; `None` means the latest live one.
    pub fn version(
        &self,
        subject: &str,
        version: Option<i32>,
        deleted: bool,
    ) -> Option<SubjectVersion> {
        let versions = self.versions(subject, deleted);
        match version {
            Some(v) => versions.into_iter().find(|x| x.version == v),
            None => versions.into_iter().rev().find(|x| !x.deleted),
        }
    }

    /// The schema with a global id, while some version uses it.
    pub fn schema(&self, id: u32) -> Option<&StoredSchema> {
        self.schemas.get(&id).filter(|s| s.references > 0)
    }

    /// The (subject, version) pairs that use a schema id.
    pub fn uses_of(&self, id: u32) -> Vec<(&str, i32)> {
        self.subjects
            .iter()
            .flat_map(|(name, s)| {
                s.active()
                    .filter(move |v| v.id == id)
                    .map(move |v| (name.as_str(), v.version))
            })
            .collect()
    }

    /// The version of a subject holding exactly this schema.
    pub fn find_in_subject(
        &self,
        subject: &str,
        canonical: &str,
        deleted: bool,
    ) -> Option<SubjectVersion> {
        let id = *self.ids.get(canonical)?;
        self.subjects
            .get(subject)?
            .versions
            .iter()
            .find(|v| v.id == id && (deleted || !v.deleted))
            .copied()
    }

    /// The live versions of a subject with their schemas, oldest first.
    pub fn active_schemas(&self, subject: &str) -> Vec<(i32, Arc<Schema>)> {
        self.subjects
            .get(subject)
            .map(|s| {
                s.active()
                    .filter_map(|v| {
                        self.schemas
                            .get(&v.id)
                            .map(|x| (v.version, x.schema.clone()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Human lines for violations, naming the version each concerns.
pub fn describe(violations: &[compat::Violation], versions: &[i32]) -> Vec<String> {
    violations
        .iter()
        .map(|v| {
            let version = versions.get(v.previous).copied().unwrap_or_default();
            let direction = match v.direction {
                Direction::NewReadsOld => {
                    format!("the new schema cannot read data written with version {version}")
                }
                Direction::OldReadsNew => {
                    format!("version {version} cannot read data written with the new schema")
                }
            };
            format!(
                "{}: {direction}: {}",
                v.problem.kind,
                location_and_message(&v.problem)
            )
        })
        .collect()
}

fn location_and_message(problem: &compat::Incompatibility) -> String {
    format!("at {}, {}", problem.location, problem.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"type":"record","name":"User","fields":[{"name":"id","type":"string"}]}"#;
    const V2: &str = r#"{"type":"record","name":"User","fields":[{"name":"id","type":"string"},{"name":"age","type":"int","default":0}]}"#;
    const V2_NO_DEFAULT: &str = r#"{"type":"record","name":"User","fields":[{"name":"id","type":"string"},{"name":"age","type":"int"}]}"#;

    fn register(state: &mut State, subject: &str, schema: &str) -> Result<Value, ApiError> {
        state.apply(&Command::Register {
            subject: subject.into(),
            schema: schema.into(),
        })
    }

    #[test]
    fn ids_are_global_and_registration_is_idempotent() {
        let mut state = State::new(Level::Backward);
        assert_eq!(register(&mut state, "a", V1).expect("ok"), json!({"id": 1}));
        assert_eq!(register(&mut state, "b", V1).expect("ok"), json!({"id": 1}));
        assert_eq!(register(&mut state, "a", V1).expect("ok"), json!({"id": 1}));
        assert_eq!(register(&mut state, "a", V2).expect("ok"), json!({"id": 2}));
        assert_eq!(state.versions("a", false).len(), 2);
        assert_eq!(state.versions("b", false).len(), 1);
    }

    #[test]
    fn an_incompatible_schema_is_refused_and_changes_nothing() {
        let mut state = State::new(Level::Backward);
        register(&mut state, "a", V1).expect("ok");
        let e = register(&mut state, "a", V2_NO_DEFAULT).expect_err("incompatible");
        assert_eq!(e.code, 409);
        assert!(
            e.message.contains("READER_FIELD_MISSING_DEFAULT_VALUE"),
            "{}",
            e.message
        );
        assert_eq!(state.versions("a", true).len(), 1);
    }

    #[test]
    fn a_schema_known_by_its_text_or_parsed_by_the_proposer_is_not_parsed_again() {
        let mut state = State::new(Level::Backward);
        register(&mut state, "a", V1).expect("ok");
        let stored = state.schema(1).expect("registered").schema.clone();
        let again = state.prepare(
            Command::Register {
                subject: "b".into(),
                schema: V1.into(),
            },
            None,
        );
        let Prepared(Step::Register { schema, .. }) = &again else {
            panic!("a new version of b: {again:?}")
        };
        assert!(Arc::ptr_eq(schema, &stored), "parsed again");
        let proposed = Arc::new(Schema::parse(V2).expect("valid"));
        let prepared = state.prepare(
            Command::Register {
                subject: "a".into(),
                schema: V2.into(),
            },
            Some(proposed.clone()),
        );
        let Prepared(Step::Register { schema, .. }) = &prepared else {
            panic!("a new version of a: {prepared:?}")
        };
        assert!(Arc::ptr_eq(schema, &proposed), "parsed again");
        assert_eq!(state.commit(prepared).expect("ok"), json!({"id": 2}));
        // A parse handed over for another text is not used.
        let other = state.prepare(
            Command::Register {
                subject: "c".into(),
                schema: V2_NO_DEFAULT.into(),
            },
            Some(proposed.clone()),
        );
        let Prepared(Step::Register { schema, .. }) = &other else {
            panic!("a new version of c: {other:?}")
        };
        assert_eq!(schema.canonical(), V2_NO_DEFAULT);
    }

    #[test]
    fn a_logged_schema_that_later_checks_refuse_keeps_its_id_on_replay() {
        // Accepted before field orders were checked; the log must replay to the same ids.
        let old = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int","order":"sideways"}]}"#;
        assert!(Schema::parse(old).is_err());
        let mut state = State::new(Level::Backward);
        assert_eq!(
            register(&mut state, "old", old).expect("ok"),
            json!({"id": 1})
        );
        assert_eq!(register(&mut state, "a", V1).expect("ok"), json!({"id": 2}));
    }

    #[test]
    fn a_logged_config_change_applies_in_read_only_mode_as_it_did_before_the_api_refused_it() {
        let mut state = State::new(Level::Backward);
        for command in [
            Command::SetMode {
                mode: Mode::Readonly,
            },
            Command::SetLevel {
                subject: None,
                level: Some(Level::None),
            },
        ] {
            state.apply(&command).expect("applied");
        }
        assert_eq!(state.global_level(), Level::None);
    }

    #[test]
    fn replaying_the_same_commands_gives_the_same_state() {
        let commands = [
            Command::Register {
                subject: "a".into(),
                schema: V1.into(),
            },
            Command::Register {
                subject: "a".into(),
                schema: V2_NO_DEFAULT.into(),
            },
            Command::Register {
                subject: "b".into(),
                schema: V2.into(),
            },
            Command::DeleteSubject {
                subject: "a".into(),
                permanent: false,
            },
            Command::Register {
                subject: "a".into(),
                schema: V2_NO_DEFAULT.into(),
            },
        ];
        let run = || {
            let mut state = State::new(Level::Backward);
            let answers: Vec<String> = commands
                .iter()
                .map(|c| format!("{:?}", state.apply(c).map_err(|e| e.code)))
                .collect();
            (
                answers,
                state.versions("a", true),
                state.versions("b", true),
            )
        };
        assert_eq!(run(), run());
        let (answers, a, _) = run();
        assert_eq!(answers[1], "Err(409)");
        assert_eq!(
            a.iter().map(|v| (v.version, v.deleted)).collect::<Vec<_>>(),
            vec![(1, true), (2, false)]
        );
    }
}

//! Schema evolution checks: Avro schema resolution at the seven Confluent compatibility levels.
//!
//! `can_read(reader, writer)` follows the Avro specification's resolution rules as the
//! Confluent registry applies them (type promotion, fields matched by name or alias, defaults
//! for missing fields, enum symbols and enum defaults, union branches, fixed sizes, unqualified
//! type names or aliases) and keeps going after the first problem, so a report lists every
//! incompatibility with its location. Logical types resolve as their underlying types, as in
//! Avro itself.
//!
//! Each pair of named types is compared once per check and its outcome reused wherever the
//! pair recurs, so a schema that uses one type at many places (or, as an attack, a chain of
//! records each using the next one twice, 2^depth paths) does not cost its paths. A check
//! lists at most [`MAX_REPORTED`] problems per pair of types, and gives up past [`MAX_WORK`]
//! comparisons or [`MAX_DEPTH`] levels, answering incompatible: pairs of schemas a few
//! kilobytes large can otherwise ask for minutes and gigabytes (every reader type against
//! every writer type of two large unions, or two chains of records laid out crosswise), and
//! the registry runs this check on every write it applies.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::avro::schema::{Field, NamedKind, Schema, Type};

/// A compatibility level, as the Confluent registry names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Level {
    /// Anything goes.
    None,
    /// The new schema reads data written with the latest version.
    Backward,
    /// The new schema reads data written with every earlier version.
    BackwardTransitive,
    /// The latest version reads data written with the new schema.
    Forward,
    /// Every earlier version reads data written with the new schema.
    ForwardTransitive,
    /// Backward and forward against the latest version.
    Full,
    /// Backward and forward against every earlier version.
    FullTransitive,
}

impl Level {
    /// Every level, in the order the registry documents them.
    pub const ALL: [Level; 7] = [
        Level::None,
        Level::Backward,
        Level::BackwardTransitive,
        Level::Forward,
        Level::ForwardTransitive,
        Level::Full,
        Level::FullTransitive,
    ];

    /// The upper-case name, e.g. `BACKWARD_TRANSITIVE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "NONE",
            Level::Backward => "BACKWARD",
            Level::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Level::Forward => "FORWARD",
            Level::ForwardTransitive => "FORWARD_TRANSITIVE",
            Level::Full => "FULL",
            Level::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    fn transitive(self) -> bool {
        matches!(
            self,
            Level::BackwardTransitive | Level::ForwardTransitive | Level::FullTransitive
        )
    }

    fn backward(self) -> bool {
        matches!(
            self,
            Level::Backward | Level::BackwardTransitive | Level::Full | Level::FullTransitive
        )
    }

    fn forward(self) -> bool {
        matches!(
            self,
            Level::Forward | Level::ForwardTransitive | Level::Full | Level::FullTransitive
        )
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A compatibility level name that is not one of the seven.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "'{0}' is not a compatibility level; use one of NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE"
)]
pub struct UnknownLevel(pub String);

impl FromStr for Level {
    type Err = UnknownLevel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Level::ALL
            .into_iter()
            .find(|level| level.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownLevel(s.to_owned()))
    }
}

/// The kinds of incompatibility, named as in Avro's and Confluent's reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Kind {
    /// A named type's name differs and the reader has no alias for the writer's name.
    NameMismatch,
    /// Two fixed types differ in size.
    FixedSizeMismatch,
    /// The writer's enum has symbols the reader lacks, and the reader has no enum default.
    MissingEnumSymbols,
    /// A reader field has no writer counterpart and no default.
    ReaderFieldMissingDefaultValue,
    /// The types cannot be resolved, even by promotion.
    TypeMismatch,
    /// A type the writer may write has no branch in the reader's union.
    MissingUnionBranch,
    /// The check gave up: more than [`MAX_WORK`] comparisons or [`MAX_DEPTH`] levels.
    TooComplexToCheck,
}

impl Kind {
    /// The upper-case name, e.g. `TYPE_MISMATCH`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::NameMismatch => "NAME_MISMATCH",
            Kind::FixedSizeMismatch => "FIXED_SIZE_MISMATCH",
            Kind::MissingEnumSymbols => "MISSING_ENUM_SYMBOLS",
            Kind::ReaderFieldMissingDefaultValue => "READER_FIELD_MISSING_DEFAULT_VALUE",
            Kind::TypeMismatch => "TYPE_MISMATCH",
            Kind::MissingUnionBranch => "MISSING_UNION_BRANCH",
            Kind::TooComplexToCheck => "TOO_COMPLEX_TO_CHECK",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One reason a reader cannot read what a writer wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Incompatibility {
    /// What kind of problem it is.
    pub kind: Kind,
    /// Where, as a path through the reader's schema (`/fields/3/type/items`); union branches
    /// written by the writer appear as their index in the writer's union.
    pub location: String,
    /// A plain-English reason.
    pub message: String,
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}: {}", self.kind, self.location, self.message)
    }
}

/// Which way the data would flow in a failing check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The new schema reads data written with an earlier version (backward).
    NewReadsOld,
    /// An earlier version reads data written with the new schema (forward).
    OldReadsNew,
}

/// An incompatibility found by [`check`], with the earlier version it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Index into the `previous` slice given to [`check`] (0 is the oldest).
    pub previous: usize,
    /// Which way the data would flow.
    pub direction: Direction,
    /// What is wrong.
    #[serde(flatten)]
    pub problem: Incompatibility,
}

/// The most problems listed for one pair of types (and so for one pair of schemas): enough for
/// every real evolution, and a bound on what one check can cost when a type recurs along
/// exponentially many paths. A list cut short still has problems, so the verdict is the same.
pub const MAX_REPORTED: usize = 1_000;

/// The most type comparisons one reader–writer check makes: the contract's schemas take a few
/// dozen, a 40,000-field record about as many as it has fields.
pub const MAX_WORK: usize = 200_000;

/// The deepest one reader–writer check descends (the parser refuses types nested deeper than
/// [`crate::avro::schema::MAX_NESTING`], but two recursive types can lead a check round and
/// round); also what keeps the check's recursion within a thread's stack.
pub const MAX_DEPTH: usize = 256;

/// Checks whether `new` may follow `previous` (oldest first) at `level`, listing every problem.
///
/// Non-transitive levels compare with the latest version only; transitive levels with all.
/// An empty result means compatible.
pub fn check(level: Level, new: &Schema, previous: &[&Schema]) -> Vec<Violation> {
    if level == Level::None || previous.is_empty() {
        return Vec::new();
    }
    let first = if level.transitive() {
        0
    } else {
        previous.len() - 1
    };
    let mut violations = Vec::new();
    for (index, old) in previous.iter().enumerate().skip(first) {
        if level.backward() {
            violations.extend(can_read(new, old).into_iter().map(|problem| Violation {
                previous: index,
                direction: Direction::NewReadsOld,
                problem,
            }));
        }
        if level.forward() {
            violations.extend(can_read(old, new).into_iter().map(|problem| Violation {
                previous: index,
                direction: Direction::OldReadsNew,
                problem,
            }));
        }
    }
    violations
}

/// Lists every reason `reader` cannot read data written with `writer` (empty: it can).
pub fn can_read(reader: &Schema, writer: &Schema) -> Vec<Incompatibility> {
    let mut checker = Checker {
        reader,
        writer,
        in_progress: HashSet::new(),
        done: HashMap::new(),
        work: 0,
        depth: 0,
        exhausted: false,
    };
    let mut location = String::new();
    let problems = checker.compare(reader.root(), writer.root(), &mut location);
    if checker.exhausted {
        return vec![checker.problem(
            Kind::TooComplexToCheck,
            "",
            format!(
                "the schemas are too large or too deeply nested to check (more than {MAX_WORK} type comparisons or {MAX_DEPTH} levels); they are taken as incompatible"
            ),
        )];
    }
    problems
}

struct Checker<'a> {
    reader: &'a Schema,
    writer: &'a Schema,
    /// Pairs of named types under comparison: meeting one again means a recursive type, which
    /// is compatible as far as this path goes (the pair's own check reports any problem).
    in_progress: HashSet<(usize, usize)>,
    /// Pairs of named types already compared, with their problems' locations relative to the
    /// pair's own. A pair met again anywhere has the same problems there. (A pair compared
    /// while one of its enclosing pairs was in progress took that one as compatible; the
    /// enclosing pair reports its own problems, so nothing is lost from the verdict.)
    done: HashMap<(usize, usize), Vec<Incompatibility>>,
    /// Comparisons made so far, against [`MAX_WORK`].
    work: usize,
    /// How deep the comparison in progress is, against [`MAX_DEPTH`].
    depth: usize,
    /// Set once either bound is passed: every comparison after it answers at once.
    exhausted: bool,
}

/// Cuts a list of problems to [`MAX_REPORTED`], keeping the first.
fn bounded(mut problems: Vec<Incompatibility>) -> Vec<Incompatibility> {
    problems.truncate(MAX_REPORTED);
    problems
}

impl<'a> Checker<'a> {
    fn problem(&self, kind: Kind, location: &str, message: String) -> Incompatibility {
        Incompatibility {
            kind,
            location: if location.is_empty() {
                "/".into()
            } else {
                location.to_owned()
            },
            message,
        }
    }

    fn compare(
        &mut self,
        reader: &Type,
        writer: &Type,
        location: &mut String,
    ) -> Vec<Incompatibility> {
        self.work += 1;
        if self.exhausted || self.work > MAX_WORK || self.depth >= MAX_DEPTH {
            self.exhausted = true;
            return Vec::new();
        }
        self.depth += 1;
        let problems = self.compare_within_bounds(reader, writer, location);
        self.depth -= 1;
        problems
    }

    fn compare_within_bounds(
        &mut self,
        reader: &Type,
        writer: &Type,
        location: &mut String,
    ) -> Vec<Incompatibility> {
        if let Type::Union(branches) = writer {
            // Every branch the writer may have written must be readable.
            let mut problems = Vec::new();
            for (i, branch) in branches.iter().enumerate() {
                if problems.len() >= MAX_REPORTED {
                    break;
                }
                let mark = location.len();
                location.push_str(&format!("/{i}"));
                let found = self.compare(reader, branch, location);
                if !found.is_empty() {
                    if self.counterpart(reader, branch).is_some() {
                        // The reader has the same type for this branch: the precise reasons
                        // inside it say more than "branch missing".
                        problems.extend(found);
                    } else {
                        problems.push(self.problem(
                            Kind::MissingUnionBranch,
                            location,
                            format!(
                                "the writer's union branch {} has no matching type in the reader's {}",
                                self.writer.describe(branch),
                                self.reader.describe(reader)
                            ),
                        ));
                    }
                }
                location.truncate(mark);
            }
            return bounded(problems);
        }
        if let Type::Union(branches) = reader {
            let counterpart = self.counterpart(reader, writer);
            let mut counterpart_problems = Vec::new();
            if let Some(i) = counterpart {
                counterpart_problems = self.compare(&branches[i], writer, location);
                if counterpart_problems.is_empty() {
                    return Vec::new();
                }
            }
            // Otherwise the first branch that can read the writer's type (by promotion) wins.
            // Only unnamed types promote: a named writer type is read by its counterpart or
            // not at all, so other branches need no comparison.
            if !matches!(writer, Type::Named(_)) {
                for (i, branch) in branches.iter().enumerate() {
                    if Some(i) != counterpart && self.compare(branch, writer, location).is_empty() {
                        return Vec::new();
                    }
                }
            }
            if counterpart.is_some() {
                return counterpart_problems;
            }
            return vec![self.problem(
                Kind::MissingUnionBranch,
                location,
                format!(
                    "the reader's {} has no branch that can read the writer's {}",
                    self.reader.describe(reader),
                    self.writer.describe(writer)
                ),
            )];
        }
        match (reader, writer) {
            (Type::Array(r), Type::Array(w)) => {
                let mark = location.len();
                location.push_str("/items");
                let found = self.compare(r, w, location);
                location.truncate(mark);
                found
            }
            (Type::Map(r), Type::Map(w)) => {
                let mark = location.len();
                location.push_str("/values");
                let found = self.compare(r, w, location);
                location.truncate(mark);
                found
            }
            (Type::Named(r), Type::Named(w)) => self.compare_named(*r, *w, location),
            (r, w) if r == w || promotes(w, r) => Vec::new(),
            (r, w) => vec![self.problem(
                Kind::TypeMismatch,
                location,
                format!(
                    "the reader expects {} but the writer wrote {}",
                    self.reader.describe(r),
                    self.writer.describe(w)
                ),
            )],
        }
    }

    /// The reader-union branch that is "the same type" as the writer's: same named type by
    /// name or alias, or the same kind of unnamed type.
    fn counterpart(&self, reader: &Type, writer: &Type) -> Option<usize> {
        let Type::Union(branches) = reader else {
            return match (reader, writer) {
                (Type::Named(r), Type::Named(w)) if self.same_named(*r, *w) => Some(0),
                (Type::Array(_), Type::Array(_)) | (Type::Map(_), Type::Map(_)) => Some(0),
                _ => None,
            };
        };
        branches.iter().position(|branch| match (branch, writer) {
            (Type::Named(r), Type::Named(w)) => self.same_named(*r, *w),
            (Type::Array(_), Type::Array(_)) | (Type::Map(_), Type::Map(_)) => true,
            (r, w) => r == w,
        })
    }

    fn same_named(&self, reader: usize, writer: usize) -> bool {
        let r = self.reader.named(reader);
        let w = self.writer.named(writer);
        r.same_kind(w) && r.reads_name_of(w)
    }

    fn compare_named(&mut self, r: usize, w: usize, location: &mut String) -> Vec<Incompatibility> {
        if let Some(known) = self.done.get(&(r, w)) {
            return known
                .iter()
                .map(|problem| Incompatibility {
                    location: if location.is_empty() && problem.location.is_empty() {
                        "/".to_owned()
                    } else {
                        format!("{location}{}", problem.location)
                    },
                    ..problem.clone()
                })
                .collect();
        }
        if !self.in_progress.insert((r, w)) {
            return Vec::new();
        }
        let problems = bounded(self.compare_named_once(r, w, location));
        self.in_progress.remove(&(r, w));
        let relative = problems
            .iter()
            .map(|problem| Incompatibility {
                location: match problem.location.strip_prefix(location.as_str()) {
                    Some("/") if location.is_empty() => String::new(),
                    Some(rest) => rest.to_owned(),
                    // Every problem found under this pair lies under its location.
                    None => problem.location.clone(),
                },
                ..problem.clone()
            })
            .collect();
        self.done.insert((r, w), relative);
        problems
    }

    fn compare_named_once(
        &mut self,
        r: usize,
        w: usize,
        location: &mut String,
    ) -> Vec<Incompatibility> {
        // Borrowed for the schemas' lifetime, not the checker's, so the fields need no copy
        // while `compare` takes the checker mutably.
        let (reader_schema, writer_schema): (&'a Schema, &'a Schema) = (self.reader, self.writer);
        let reader = reader_schema.named(r);
        let writer = writer_schema.named(w);
        let mut problems = Vec::new();
        let names_match = reader.reads_name_of(writer);
        let kinds_match = reader.same_kind(writer);
        if !kinds_match {
            problems.push(self.problem(
                Kind::TypeMismatch,
                location,
                format!(
                    "the reader expects {} but the writer wrote {}",
                    self.reader.describe(&Type::Named(r)),
                    self.writer.describe(&Type::Named(w))
                ),
            ));
            return problems;
        }
        if !names_match {
            problems.push(self.problem(
                Kind::NameMismatch,
                &format!("{location}/name"),
                format!(
                    "the reader's type is named {} and has no alias for the writer's {}",
                    reader.name, writer.name
                ),
            ));
        }
        match (&reader.kind, &writer.kind) {
            (NamedKind::Fixed { size: rs }, NamedKind::Fixed { size: ws }) if rs != ws => {
                problems.push(self.problem(
                    Kind::FixedSizeMismatch,
                    &format!("{location}/size"),
                    format!(
                        "the reader's fixed {} holds {rs} bytes but the writer's holds {ws}",
                        reader.name
                    ),
                ));
            }
            (
                NamedKind::Enum {
                    symbols: reader_symbols,
                    default,
                },
                NamedKind::Enum {
                    symbols: writer_symbols,
                    ..
                },
            ) => {
                let reader_symbols: HashSet<&str> =
                    reader_symbols.iter().map(String::as_str).collect();
                let missing: Vec<&str> = writer_symbols
                    .iter()
                    .filter(|s| !reader_symbols.contains(s.as_str()))
                    .map(String::as_str)
                    .collect();
                if !missing.is_empty() && default.is_none() {
                    problems.push(self.problem(
                        Kind::MissingEnumSymbols,
                        &format!("{location}/symbols"),
                        format!(
                            "the reader's enum {} lacks the writer's symbols [{}] and has no default to read them as",
                            reader.name,
                            missing.join(", ")
                        ),
                    ));
                }
            }
            (
                NamedKind::Record {
                    fields: reader_fields,
                },
                NamedKind::Record {
                    fields: writer_fields,
                },
            ) => {
                // By name, so a record of many fields is not a scan per field.
                let by_name: HashMap<&str, (usize, &Field)> = writer_fields
                    .iter()
                    .enumerate()
                    .map(|(i, f)| (f.name.as_str(), (i, f)))
                    .collect();
                for (i, field) in reader_fields.iter().enumerate() {
                    // Enough to list: the rest could not be listed, and the verdict stands.
                    if problems.len() >= MAX_REPORTED {
                        break;
                    }
                    let mark = location.len();
                    location.push_str(&format!("/fields/{i}"));
                    // Failing the name, the writer's first field that one of the aliases names.
                    let counterpart = by_name
                        .get(field.name.as_str())
                        .or_else(|| {
                            field
                                .aliases
                                .iter()
                                .filter_map(|alias| by_name.get(alias.as_str()))
                                .min_by_key(|(i, _)| *i)
                        })
                        .map(|(_, f)| *f);
                    match counterpart {
                        Some(wf) => {
                            location.push_str("/type");
                            problems.extend(self.compare(&field.ty, &wf.ty, location));
                        }
                        None if field.default.is_some() => {}
                        None => problems.push(self.problem(
                            Kind::ReaderFieldMissingDefaultValue,
                            location,
                            format!(
                                "the reader's field '{}' has no default and the writer has no such field (nor one named by its aliases)",
                                field.name
                            ),
                        )),
                    }
                    location.truncate(mark);
                }
            }
            _ => {}
        }
        problems
    }
}

/// Avro's promotions: what a reader of type `reader` accepts from a writer of type `writer`.
fn promotes(writer: &Type, reader: &Type) -> bool {
    matches!(
        (writer, reader),
        (Type::Int, Type::Long | Type::Float | Type::Double)
            | (Type::Long, Type::Float | Type::Double)
            | (Type::Float, Type::Double)
            | (Type::String, Type::Bytes)
            | (Type::Bytes, Type::String)
    )
}

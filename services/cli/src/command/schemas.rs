//! `tripstream schemas`: compare two schema files, check schemas/ against history, register it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;
use streams::avro::compat::{self, Direction, Level, Violation};
use streams::avro::schema::Schema;
use streams::contract::{Contract, Subject};
use streams::registry::Client;

use crate::{EXIT_UNUSABLE, git};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Lines for people and CI logs.
    Text,
    /// One JSON document for scripts.
    Json,
}

fn parse_level(text: &str) -> Result<Level, String> {
    text.parse()
        .map_err(|e: compat::UnknownLevel| e.to_string())
}

/// Subcommands of `tripstream schemas`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Whether NEW may be registered after the OLD versions at a level.
    ///
    /// Exits 0 when it may, 1 when it may not (every incompatibility printed with its path and
    /// reason), 2 when an input is not a valid Avro schema or the arguments are wrong.
    Compat {
        /// NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL or FULL_TRANSITIVE.
        #[arg(long, value_parser = parse_level)]
        level: Level,
        /// The schema to be registered.
        #[arg(long, value_name = "NEW.avsc")]
        new: PathBuf,
        /// An existing version; repeat for several, oldest first.
        #[arg(long, value_name = "OLD.avsc", required = true)]
        old: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// The CI check: every schema of schemas/ against its earlier versions.
    ///
    /// Earlier versions come from git history up to GIT_REF (default HEAD) or from a registry.
    /// Each subject is checked at its topic's level (default BACKWARD) unless --level is given.
    /// Prints one line per subject (ok, new, incompatible) and every incompatibility; exits 1
    /// if any subject is incompatible, 2 if the check itself cannot run.
    Check {
        /// Take earlier versions from git history up to this commit.
        #[arg(long, value_name = "GIT_REF", conflicts_with = "registry")]
        against: Option<String>,
        /// Take earlier versions from the registry at this URL.
        #[arg(long, value_name = "URL")]
        registry: Option<String>,
        /// Check every subject at this level instead of its configured one.
        #[arg(long, value_parser = parse_level)]
        level: Option<Level>,
    },
    /// Register every schema of schemas/ under its subjects, `<topic>-<record full name>`.
    ///
    /// Sets each subject's compatibility level to its topic's. Exits 1 if any registration is
    /// refused.
    Register {
        /// The registry's URL.
        #[arg(long, env = "TRIPSTREAM_REGISTRY", value_name = "URL")]
        registry: String,
    },
}

/// Runs a `schemas` subcommand.
pub async fn run(root: &Path, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Compat {
            level,
            new,
            old,
            format,
        } => Ok(compat_files(level, &new, &old, format)),
        Command::Check {
            against,
            registry,
            level,
        } => check(root, against, registry, level).await,
        Command::Register { registry } => {
            let contract = load_contract(root)?;
            let (_, failed) = register_all(&contract, &registry, true).await?;
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

fn load_contract(root: &Path) -> anyhow::Result<Contract> {
    Contract::load(root).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        anyhow::anyhow!(
            "the project's topics/ and schemas/ are not valid:\n  {}",
            lines.join("\n  ")
        )
    })
}

fn read_schema(path: &Path) -> anyhow::Result<Schema> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Schema::parse(&text).map_err(|e| anyhow::anyhow!(e.in_source(path.display().to_string())))
}

fn direction_text(direction: Direction, old: &str) -> String {
    match direction {
        Direction::NewReadsOld => format!("the new schema cannot read data written with {old}"),
        Direction::OldReadsNew => format!("{old} cannot read data written with the new schema"),
    }
}

fn compat_files(level: Level, new: &Path, old: &[PathBuf], format: Format) -> ExitCode {
    let loaded: anyhow::Result<(Schema, Vec<Schema>)> = (|| {
        let new_schema = read_schema(new)?;
        let olds = old
            .iter()
            .map(|p| read_schema(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok((new_schema, olds))
    })();
    let (new_schema, olds) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            if format == Format::Json {
                println!("{}", json!({ "error": format!("{e:#}") }));
            }
            eprintln!("error: {e:#}");
            return ExitCode::from(EXIT_UNUSABLE);
        }
    };
    let refs: Vec<&Schema> = olds.iter().collect();
    let violations = compat::check(level, &new_schema, &refs);
    let old_name = |v: &Violation| old[v.previous].display().to_string();
    match format {
        Format::Json => {
            let problems: Vec<_> = violations
                .iter()
                .map(|v| {
                    json!({
                        "old": old_name(v),
                        "direction": v.direction,
                        "kind": v.problem.kind,
                        "location": v.problem.location,
                        "message": v.problem.message,
                    })
                })
                .collect();
            println!(
                "{}",
                json!({
                    "compatible": violations.is_empty(),
                    "level": level.as_str(),
                    "new": new.display().to_string(),
                    "old": old.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
                    "incompatibilities": problems,
                })
            );
        }
        Format::Text => {
            if violations.is_empty() {
                println!(
                    "compatible: {} may follow {} at {level}",
                    new.display(),
                    plural(old.len(), "earlier version")
                );
            } else {
                println!(
                    "incompatible: {} may not follow at {level} ({})",
                    new.display(),
                    plural(violations.len(), "problem")
                );
                for v in &violations {
                    println!(
                        "  {}: {}: {}",
                        v.problem.location,
                        direction_text(v.direction, &old_name(v)),
                        v.problem
                    );
                }
            }
        }
    }
    if violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Earlier versions of one subject, oldest first, each with a label for reports.
struct History {
    versions: Vec<(String, Schema)>,
    warnings: Vec<String>,
    /// The registry already holds the current schema as its latest version (this label).
    registered: Option<String>,
}

fn git_history(root: &Path, file: &Path, current: &Schema, rev: &str) -> anyhow::Result<History> {
    let relative = file
        .strip_prefix(root)
        .unwrap_or(file)
        .to_string_lossy()
        .into_owned();
    let mut versions: Vec<(String, Schema)> = Vec::new();
    let mut warnings = Vec::new();
    for version in git::history(root, &relative, rev)? {
        match Schema::parse(&version.text) {
            // Consecutive commits that leave the schema as it was are one version.
            Ok(schema) if versions.last().is_some_and(|(_, last)| *last == schema) => {}
            Ok(schema) => versions.push((format!("commit {}", version.commit), schema)),
            Err(e) => warnings.push(format!(
                "skipped the version at commit {}, which is not a valid schema: {e}",
                version.commit
            )),
        }
    }
    // The working copy is the new schema; when it is the newest commit's version too, compare
    // it with the versions before, so a clean checkout still checks its latest change.
    if versions.last().is_some_and(|(_, last)| last == current) {
        versions.pop();
    }
    Ok(History {
        versions,
        warnings,
        registered: None,
    })
}

async fn registry_history(
    client: &Client,
    subject: &str,
    current: &Schema,
) -> anyhow::Result<(History, Option<Level>)> {
    let mut versions = Vec::new();
    let mut warnings = Vec::new();
    for v in client.versions(subject).await? {
        match Schema::parse(&v.schema) {
            Ok(schema) => versions.push((format!("version {}", v.version), schema)),
            Err(e) => warnings.push(format!(
                "skipped version {}, which this checker cannot parse: {e}",
                v.version
            )),
        }
    }
    let level = if versions.is_empty() {
        None
    } else {
        Some(client.level(subject).await?)
    };
    let registered = versions
        .last()
        .filter(|(_, last)| last == current)
        .map(|(label, _)| label.clone());
    Ok((
        History {
            versions,
            warnings,
            registered,
        },
        level,
    ))
}

async fn check(
    root: &Path,
    against: Option<String>,
    registry: Option<String>,
    level: Option<Level>,
) -> anyhow::Result<ExitCode> {
    let contract = load_contract(root)?;
    let client = registry.as_deref().map(Client::new).transpose()?;
    let rev = against.unwrap_or_else(|| "HEAD".to_owned());
    if client.is_none() {
        git::check_revision(root, &rev)?;
    }
    let source = match &client {
        Some(c) => format!("registry {}", c.url()),
        None => format!("git history up to {rev}"),
    };
    let subjects = contract.subjects();
    println!(
        "Checking {} against {source}",
        plural(subjects.len(), "subject")
    );
    let (mut ok, mut new, mut incompatible) = (0, 0, 0);
    for subject in &subjects {
        let Some(file) = contract.schemas.get(&subject.record) else {
            continue;
        };
        let current = &file.schema;
        let (history, registry_level) = match &client {
            Some(c) => registry_history(c, &subject.name, current).await?,
            None => (git_history(root, &file.path, current, &rev)?, None),
        };
        let effective = level.or(registry_level).unwrap_or(subject.level);
        for warning in &history.warnings {
            println!("warning       {}: {warning}", subject.name);
        }
        if let Some(label) = &history.registered {
            // Registering it again is a no-op that returns its id: nothing to check.
            ok += 1;
            println!(
                "ok            {} ({effective}, registered as {label})",
                subject.name
            );
            continue;
        }
        if history.versions.is_empty() {
            new += 1;
            println!("new           {}", describe_subject(subject, effective, 0));
            continue;
        }
        let refs: Vec<&Schema> = history.versions.iter().map(|(_, s)| s).collect();
        let violations = compat::check(effective, current, &refs);
        if violations.is_empty() {
            ok += 1;
            println!(
                "ok            {}",
                describe_subject(subject, effective, refs.len())
            );
        } else {
            incompatible += 1;
            println!(
                "incompatible  {}",
                describe_subject(subject, effective, refs.len())
            );
            for v in &violations {
                let label = &history.versions[v.previous].0;
                println!(
                    "    {}: {}: {}",
                    file.path.strip_prefix(root).unwrap_or(&file.path).display(),
                    direction_text(v.direction, label),
                    v.problem
                );
            }
        }
    }
    println!(
        "{}: {ok} ok, {new} new, {incompatible} incompatible",
        plural(subjects.len(), "subject")
    );
    Ok(if incompatible == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn describe_subject(subject: &Subject, level: Level, earlier: usize) -> String {
    if earlier == 0 {
        format!("{} ({level})", subject.name)
    } else {
        format!(
            "{} ({level}, {})",
            subject.name,
            plural(earlier, "earlier version")
        )
    }
}

/// Registers every subject of the contract; returns (registered, refused).
///
/// # Errors
///
/// When the registry cannot be reached at all.
pub async fn register_all(
    contract: &Contract,
    url: &str,
    verbose: bool,
) -> anyhow::Result<(usize, usize)> {
    let client = Client::new(url)?;
    let (mut registered, mut failed) = (0, 0);
    for subject in contract.subjects() {
        let Some(file) = contract.schemas.get(&subject.record) else {
            continue;
        };
        if client.level(&subject.name).await? != subject.level {
            client.set_level(&subject.name, subject.level).await?;
        }
        match client.register(&subject.name, &file.schema).await {
            Ok(id) => {
                registered += 1;
                if verbose {
                    println!("registered  {} (id {id}, {})", subject.name, subject.level);
                }
            }
            Err(e @ streams::Error::Registry { .. }) => {
                failed += 1;
                println!("refused     {}: {e}", subject.name);
            }
            Err(e) => return Err(e.into()),
        }
    }
    if verbose {
        println!("{registered} registered, {failed} refused");
    }
    Ok((registered, failed))
}

//! Topic specs as data (`topics/*.toml`) and their idempotent provisioning on a broker.
//!
//! A spec names its partitions, replication factor, retention, cleanup policy, the record
//! types allowed on it, its compatibility level and its dead-letter topic. The dead-letter
//! topic is derived from the spec (one partition, 30 days of retention) rather than written
//! out, so every topic that can carry a poison record has one by construction.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Deserialize;

use crate::avro::compat::Level;
use crate::error::{Error, Result};
use crate::kafka::broker::EmbeddedBroker;

/// How long dead-letter records are kept: long enough for a person to look at them.
const DEAD_LETTER_RETENTION: &str = "30d";

/// The topic config naming how many replicas must have a write before an `acks=all` producer
/// (every tripstream producer is idempotent, hence `acks=all`) is told it is written.
const MIN_INSYNC_REPLICAS: &str = "min.insync.replicas";

/// What the broker does with old records of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CleanupPolicy {
    /// Delete records older than the retention.
    Delete,
    /// Keep the latest record per key.
    Compact,
}

impl CleanupPolicy {
    /// The Kafka config value.
    pub fn as_str(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
        }
    }
}

/// One topic's spec, as written in `topics/<name>.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// The topic name; equals the file name without `.toml`.
    pub name: String,
    /// What flows on the topic and how it is keyed.
    pub description: String,
    /// Number of partitions.
    pub partitions: i32,
    /// Replicas per partition on a cluster with that many brokers.
    pub replication_factor: i32,
    /// How long records are kept: `"7d"`, `"12h"`, `"30m"` or `"forever"`.
    pub retention: String,
    /// Delete or compact.
    pub cleanup_policy: CleanupPolicy,
    /// Full names of the record types allowed on the topic.
    pub record_types: Vec<String>,
    /// Compatibility level of this topic's subjects.
    #[serde(default = "default_level")]
    pub compatibility: Level,
    /// Where poison records go; none for topics only the runtime itself writes.
    #[serde(default)]
    pub dead_letter: Option<String>,
    /// Extra Kafka topic configs, passed through as they are.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

fn default_level() -> Level {
    Level::Backward
}

impl TopicSpec {
    /// Parses and validates the text of a spec file (`file` names it in errors, and its stem
    /// must be the topic's name).
    ///
    /// # Errors
    ///
    /// [`Error::TopicSpec`] naming the file, the field and the reason.
    pub fn parse(file: &Path, text: &str) -> Result<TopicSpec> {
        let spec: TopicSpec = toml::from_str(text).map_err(|e| {
            let field = e
                .span()
                .and_then(|span| field_at(text, span.start))
                .unwrap_or_else(|| "-".into());
            Error::TopicSpec {
                file: file.to_owned(),
                field,
                reason: e.message().to_owned(),
            }
        })?;
        spec.validate(file)?;
        Ok(spec)
    }

    /// Retention in milliseconds, -1 for forever.
    ///
    /// # Errors
    ///
    /// The reason, when the retention is not of the accepted forms.
    pub fn retention_ms(&self) -> std::result::Result<i64, String> {
        parse_retention(&self.retention)
    }

    /// The Kafka topic configs this spec asks for.
    pub fn kafka_config(&self) -> BTreeMap<String, String> {
        self.kafka_config_for(self.replication_factor)
    }

    /// The Kafka topic configs this spec asks for on a cluster where the topic gets
    /// `replication` replicas (fewer than the spec's on a smaller cluster): a
    /// `min.insync.replicas` above that is lowered to it, or no write could ever succeed.
    pub fn kafka_config_for(&self, replication: i32) -> BTreeMap<String, String> {
        let mut config = self.config.clone();
        if let Some(value) = config.get_mut(MIN_INSYNC_REPLICAS)
            && value.parse::<i32>().is_ok_and(|n| n > replication)
        {
            *value = replication.max(1).to_string();
        }
        config.insert("cleanup.policy".into(), self.cleanup_policy.as_str().into());
        if let Ok(ms) = self.retention_ms() {
            config.insert("retention.ms".into(), ms.to_string());
        }
        config
    }

    /// The spec of this topic's dead-letter topic, if it has one.
    pub fn dead_letter_spec(&self) -> Option<TopicSpec> {
        let name = self.dead_letter.clone()?;
        Some(TopicSpec {
            description: format!(
                "Records of {} that could not be processed, with the reason in headers.",
                self.name
            ),
            name,
            partitions: 1,
            replication_factor: self.replication_factor,
            retention: DEAD_LETTER_RETENTION.into(),
            cleanup_policy: CleanupPolicy::Delete,
            record_types: Vec::new(),
            compatibility: Level::None,
            dead_letter: None,
            // A dead letter is kept as safely as the record it stands for.
            config: self
                .config
                .get_key_value(MIN_INSYNC_REPLICAS)
                .map(|(k, v)| (k.clone(), v.clone()))
                .into_iter()
                .collect(),
        })
    }

    fn validate(&self, file: &Path) -> Result<()> {
        let fail = |field: &str, reason: String| Error::TopicSpec {
            file: file.to_owned(),
            field: field.into(),
            reason,
        };
        let stem = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        if !valid_topic_name(&self.name) {
            return Err(fail(
                "name",
                format!(
                    "'{}' is not a valid Kafka topic name: use 1 to 249 of a-z, A-Z, 0-9, '.', '_' and '-'",
                    self.name
                ),
            ));
        }
        if self.name != stem {
            return Err(fail(
                "name",
                format!(
                    "'{}' must equal the file name without .toml ('{stem}')",
                    self.name
                ),
            ));
        }
        if self.description.trim().is_empty() {
            return Err(fail(
                "description",
                "say what flows on the topic and how it is keyed".into(),
            ));
        }
        if !(1..=10_000).contains(&self.partitions) {
            return Err(fail(
                "partitions",
                format!("{} is not between 1 and 10000", self.partitions),
            ));
        }
        if !(1..=16).contains(&self.replication_factor) {
            return Err(fail(
                "replication_factor",
                format!("{} is not between 1 and 16", self.replication_factor),
            ));
        }
        self.retention_ms()
            .map_err(|reason| fail("retention", reason))?;
        if let Some(dlq) = &self.dead_letter
            && (!valid_topic_name(dlq) || dlq == &self.name)
        {
            return Err(fail(
                "dead_letter",
                format!("'{dlq}' is not a valid topic name distinct from the topic itself"),
            ));
        }
        for (i, record) in self.record_types.iter().enumerate() {
            if record.split('.').count() < 2 || record.split('.').any(|p| p.is_empty()) {
                return Err(fail(
                    &format!("record_types[{i}]"),
                    format!(
                        "'{record}' is not a full record name such as tripstream.booking.BookingRequested"
                    ),
                ));
            }
        }
        if let Some(value) = self.config.get(MIN_INSYNC_REPLICAS)
            && !value
                .parse::<i32>()
                .is_ok_and(|n| (1..=self.replication_factor).contains(&n))
        {
            return Err(fail(
                &format!("config.{MIN_INSYNC_REPLICAS}"),
                format!(
                    "'{value}' is not a number from 1 to the replication factor ({})",
                    self.replication_factor
                ),
            ));
        }
        for key in ["cleanup.policy", "retention.ms"] {
            if self.config.contains_key(key) {
                return Err(fail(
                    &format!("config.{key}"),
                    "set it with the spec's own field, not in config".into(),
                ));
            }
        }
        Ok(())
    }
}

fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn parse_retention(text: &str) -> std::result::Result<i64, String> {
    if text == "forever" {
        return Ok(-1);
    }
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let amount: i64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a duration such as 7d, 12h, 30m or forever"))?;
    let unit_ms = match unit {
        "d" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1_000,
        _ => {
            return Err(format!(
                "'{text}' is not a duration such as 7d, 12h, 30m or forever"
            ));
        }
    };
    match amount.checked_mul(unit_ms) {
        Some(ms) if ms > 0 => Ok(ms),
        _ => Err(format!("'{text}' must be a positive duration")),
    }
}

/// The topics of a project, with dead-letter topics derived.
#[derive(Debug, Clone, Default)]
pub struct TopicSet {
    specs: Vec<TopicSpec>,
}

impl TopicSet {
    /// Reads and validates every `*.toml` file in `dir`.
    ///
    /// # Errors
    ///
    /// Every invalid spec, each with its file, field and reason.
    pub fn load(dir: &Path) -> std::result::Result<TopicSet, Vec<Error>> {
        let entries = std::fs::read_dir(dir).map_err(|e| vec![Error::io(dir, e)])?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        let mut specs = Vec::new();
        let mut errors = Vec::new();
        for path in paths {
            match Self::load_file(&path) {
                Ok(spec) => specs.push(spec),
                Err(e) => errors.push(e),
            }
        }
        let mut set = TopicSet { specs };
        errors.extend(set.cross_check(dir));
        if errors.is_empty() {
            set.specs.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(set)
        } else {
            Err(errors)
        }
    }

    /// Reads and validates one spec file.
    ///
    /// # Errors
    ///
    /// [`Error::TopicSpec`] with the field and reason, or [`Error::Io`].
    pub fn load_file(path: &Path) -> Result<TopicSpec> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        TopicSpec::parse(path, &text)
    }

    fn cross_check(&mut self, dir: &Path) -> Vec<Error> {
        let mut errors = Vec::new();
        let names: Vec<String> = self.specs.iter().map(|s| s.name.clone()).collect();
        for spec in &self.specs {
            if let Some(dlq) = &spec.dead_letter
                && names.contains(dlq)
            {
                errors.push(Error::TopicSpec {
                    file: dir.join(format!("{}.toml", spec.name)),
                    field: "dead_letter".into(),
                    reason: format!("'{dlq}' is also declared as a topic; dead-letter topics are derived, not declared"),
                });
            }
        }
        errors
    }

    /// Every spec, dead-letter topics included, sorted by name.
    pub fn all(&self) -> Vec<TopicSpec> {
        let mut all: Vec<TopicSpec> = self
            .specs
            .iter()
            .flat_map(|s| std::iter::once(s.clone()).chain(s.dead_letter_spec()))
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all.dedup_by(|a, b| a.name == b.name);
        all
    }

    /// The declared specs, without derived dead-letter topics.
    pub fn declared(&self) -> &[TopicSpec] {
        &self.specs
    }

    /// The spec of a topic, dead-letter topics included.
    pub fn get(&self, name: &str) -> Option<TopicSpec> {
        self.all().into_iter().find(|s| s.name == name)
    }
}

/// The TOML key whose value contains byte offset `at`, for error messages.
fn field_at(text: &str, at: usize) -> Option<String> {
    let line_start = text[..at.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?;
    let key = line.split('=').next()?.trim();
    (!key.is_empty() && !key.starts_with('[') && line.contains('=')).then(|| key.to_owned())
}

/// What provisioning found or did for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The topic was missing and has been created.
    Created,
    /// The topic exists as specified.
    Matches,
    /// The topic exists but differs; each entry says how. Nothing is changed.
    Differs(Vec<String>),
    /// The topic is missing and cannot be created on this broker.
    Missing(String),
}

/// One line of a provisioning report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The topic.
    pub topic: String,
    /// What happened.
    pub outcome: Outcome,
}

/// Where topics are provisioned.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// The in-process mock cluster: topics are created through the mock itself.
    Embedded(&'a EmbeddedBroker),
    /// Any Kafka-protocol cluster, through the Admin API.
    Kafka(&'a str),
}

/// A topic as the broker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveTopic {
    /// The name.
    pub name: String,
    /// Number of partitions.
    pub partitions: usize,
    /// Replicas of partition 0.
    pub replication: usize,
}

/// Whether a bootstrap address belongs to librdkafka's mock cluster (`tripstream broker`).
///
/// # Errors
///
/// [`Error::Kafka`] when the cluster cannot be reached.
pub fn is_mock_cluster(bootstrap: &str) -> Result<bool> {
    Ok(is_mock_cluster_id(&cluster_id(bootstrap)?))
}

/// Whether a cluster id (see [`cluster_id`]) is one librdkafka's mock cluster gives itself.
pub fn is_mock_cluster_id(id: &str) -> bool {
    id.starts_with("mockCluster")
}

/// The cluster id the brokers at `bootstrap` report.
///
/// # Errors
///
/// [`Error::Kafka`] when the cluster cannot be reached, [`Error::Timeout`] when it does not
/// answer within 10 s.
pub fn cluster_id(bootstrap: &str) -> Result<String> {
    let consumer = metadata_client(bootstrap)?;
    consumer
        .client()
        .fetch_cluster_id(Duration::from_secs(10))
        .ok_or_else(|| Error::Timeout {
            action: format!("asking {bootstrap} for its cluster id"),
            seconds: 10,
        })
}

fn metadata_client(bootstrap: &str) -> Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "3")
        .create()
        .map_err(|e| Error::kafka("creating a metadata client", e))
}

/// The topics a cluster has, sorted by name.
///
/// # Errors
///
/// [`Error::Kafka`] when the metadata request fails.
pub fn list(bootstrap: &str) -> Result<Vec<LiveTopic>> {
    let consumer = metadata_client(bootstrap)?;
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|e| Error::kafka(format!("reading topic metadata from {bootstrap}"), e))?;
    let mut topics: Vec<LiveTopic> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| LiveTopic {
            name: t.name().to_owned(),
            partitions: t.partitions().len(),
            replication: t.partitions().first().map_or(0, |p| p.replicas().len()),
        })
        .collect();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(topics)
}

/// Creates every missing topic of `specs` and reports how existing ones differ.
///
/// Idempotent: running it twice creates nothing the second time. Existing topics are never
/// altered, since changing partitions or retention of a live topic is a decision for a person.
/// A replication factor above the number of brokers is capped at that number and reported.
///
/// # Errors
///
/// [`Error::Kafka`] when the cluster cannot be reached or refuses a creation.
pub async fn apply(target: Target<'_>, specs: &[TopicSpec]) -> Result<Vec<Report>> {
    match target {
        Target::Embedded(broker) => apply_embedded(broker, specs),
        Target::Kafka(bootstrap) => {
            if is_mock_cluster(bootstrap)? {
                // A `tripstream broker` process: its admin API is absent, and it created every
                // topic of topics/ when it started.
                let live = list(bootstrap)?;
                Ok(specs
                    .iter()
                    .map(|spec| Report {
                        topic: spec.name.clone(),
                        outcome: match live.iter().find(|t| t.name == spec.name) {
                            Some(topic) => compare_partitions(spec, topic),
                            None => Outcome::Missing(
                                "the embedded broker has no admin API; restart `tripstream broker` to create it".into(),
                            ),
                        },
                    })
                    .collect())
            } else {
                apply_admin(bootstrap, specs).await
            }
        }
    }
}

fn compare_partitions(spec: &TopicSpec, topic: &LiveTopic) -> Outcome {
    if topic.partitions as i32 == spec.partitions {
        Outcome::Matches
    } else {
        Outcome::Differs(vec![format!(
            "partitions: spec {} but the topic has {}",
            spec.partitions, topic.partitions
        )])
    }
}

fn apply_embedded(broker: &EmbeddedBroker, specs: &[TopicSpec]) -> Result<Vec<Report>> {
    let live = broker.topics()?;
    let mut reports = Vec::new();
    let mut missing = Vec::new();
    for spec in specs {
        let outcome = match live.iter().find(|(name, _)| *name == spec.name) {
            Some((_, partitions)) => compare_partitions(
                spec,
                &LiveTopic {
                    name: spec.name.clone(),
                    partitions: *partitions,
                    replication: 0,
                },
            ),
            None => {
                missing.push((spec.name.as_str(), spec.partitions, spec.replication_factor));
                Outcome::Created
            }
        };
        reports.push(Report {
            topic: spec.name.clone(),
            outcome,
        });
    }
    // All at once: one by one, the mock takes a wake-up per topic.
    broker.create_topics(&missing)?;
    Ok(reports)
}

async fn apply_admin(bootstrap: &str, specs: &[TopicSpec]) -> Result<Vec<Report>> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(|e| Error::kafka("creating an admin client", e))?;
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|e| Error::kafka(format!("reading topic metadata from {bootstrap}"), e))?;
    let broker_count = metadata.brokers().len().max(1) as i32;
    let live = list(bootstrap)?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let mut reports = Vec::new();
    for spec in specs {
        let outcome = match live.iter().find(|t| t.name == spec.name) {
            Some(topic) => {
                let mut differences = match compare_partitions(spec, topic) {
                    Outcome::Differs(d) => d,
                    _ => Vec::new(),
                };
                let wanted_replicas = spec.replication_factor.min(broker_count) as usize;
                if topic.replication != wanted_replicas {
                    differences.push(format!(
                        "replication: spec {} but the topic has {}",
                        spec.replication_factor, topic.replication
                    ));
                }
                differences.extend(
                    config_differences(&admin, &options, spec, wanted_replicas as i32).await?,
                );
                if differences.is_empty() {
                    Outcome::Matches
                } else {
                    Outcome::Differs(differences)
                }
            }
            None => {
                let replication = spec.replication_factor.min(broker_count);
                let config = spec.kafka_config_for(replication);
                let mut topic = NewTopic::new(
                    &spec.name,
                    spec.partitions,
                    TopicReplication::Fixed(replication),
                );
                for (key, value) in &config {
                    topic = topic.set(key, value);
                }
                let results = admin
                    .create_topics([&topic], &options)
                    .await
                    .map_err(|e| Error::kafka(format!("creating topic {}", spec.name), e))?;
                for result in results {
                    if let Err((name, code)) = result
                        && code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists
                    {
                        return Err(Error::kafka(
                            format!("creating topic {name}"),
                            rdkafka::error::KafkaError::AdminOp(code),
                        ));
                    }
                }
                if replication < spec.replication_factor {
                    tracing::warn!(
                        topic = %spec.name,
                        requested = spec.replication_factor,
                        brokers = broker_count,
                        "Replication factor (and min.insync.replicas) capped at the number of brokers"
                    );
                }
                Outcome::Created
            }
        };
        reports.push(Report {
            topic: spec.name.clone(),
            outcome,
        });
    }
    Ok(reports)
}

async fn config_differences(
    admin: &AdminClient<DefaultClientContext>,
    options: &AdminOptions,
    spec: &TopicSpec,
    replication: i32,
) -> Result<Vec<String>> {
    let results = admin
        .describe_configs([&ResourceSpecifier::Topic(&spec.name)], options)
        .await
        .map_err(|e| Error::kafka(format!("describing topic {}", spec.name), e))?;
    let mut differences = Vec::new();
    for result in results {
        // A broker that cannot describe configs (some Kafka-compatible ones) leaves only the
        // partition and replication checks; that is not an error worth failing over.
        let Ok(resource) = result else { continue };
        for (key, wanted) in spec.kafka_config_for(replication) {
            let actual = resource.get(&key).and_then(|entry| entry.value.clone());
            if let Some(actual) = actual
                && actual != wanted
            {
                differences.push(format!("{key}: spec {wanted} but the topic has {actual}"));
            }
        }
    }
    Ok(differences)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_accepts_days_hours_minutes_and_forever() {
        assert_eq!(parse_retention("7d"), Ok(604_800_000));
        assert_eq!(parse_retention("12h"), Ok(43_200_000));
        assert_eq!(parse_retention("forever"), Ok(-1));
        assert!(parse_retention("7 days").is_err());
        assert!(parse_retention("0d").is_err());
        assert!(parse_retention("d").is_err());
    }

    #[test]
    fn the_field_of_a_toml_error_is_found_from_its_offset() {
        let text = "name = \"a\"\npartitions = \"six\"\n";
        let at = text.find("\"six\"").expect("present");
        assert_eq!(field_at(text, at).as_deref(), Some("partitions"));
    }

    #[test]
    fn dead_letter_topics_are_derived_with_one_partition() {
        let spec = TopicSpec {
            name: "bookings".into(),
            description: "d".into(),
            partitions: 6,
            replication_factor: 3,
            retention: "7d".into(),
            cleanup_policy: CleanupPolicy::Delete,
            record_types: vec![],
            compatibility: Level::Backward,
            dead_letter: Some("bookings.dlq".into()),
            config: BTreeMap::new(),
        };
        let dlq = spec.dead_letter_spec().expect("declared");
        assert_eq!(
            (dlq.name.as_str(), dlq.partitions, dlq.replication_factor),
            ("bookings.dlq", 1, 3)
        );
        assert_eq!(dlq.retention_ms(), Ok(30 * 86_400_000));
    }

    fn spec_with_min_insync(value: &str) -> String {
        format!(
            "name = \"bookings\"\ndescription = \"d\"\npartitions = 6\nreplication_factor = 3\n\
             retention = \"7d\"\ncleanup_policy = \"delete\"\nrecord_types = []\n\
             dead_letter = \"bookings.dlq\"\n\n[config]\n\"min.insync.replicas\" = \"{value}\"\n"
        )
    }

    #[test]
    fn min_insync_replicas_is_lowered_to_the_replicas_a_small_cluster_gives() {
        let spec = TopicSpec::parse(Path::new("bookings.toml"), &spec_with_min_insync("2"))
            .expect("valid");
        assert_eq!(spec.kafka_config()["min.insync.replicas"], "2");
        assert_eq!(spec.kafka_config_for(3)["min.insync.replicas"], "2");
        assert_eq!(spec.kafka_config_for(1)["min.insync.replicas"], "1");
        let dlq = spec.dead_letter_spec().expect("declared");
        assert_eq!(dlq.kafka_config_for(1)["min.insync.replicas"], "1");
        assert_eq!(dlq.kafka_config()["min.insync.replicas"], "2");
    }

    #[test]
    fn min_insync_replicas_above_the_replication_factor_is_refused() {
        for value in ["4", "0", "two"] {
            let error = TopicSpec::parse(Path::new("bookings.toml"), &spec_with_min_insync(value))
                .expect_err(value);
            assert!(
                error.to_string().contains("config.min.insync.replicas"),
                "{error}"
            );
        }
    }
}

//! What every tripstream service process shares: where its broker, registry and store are, and
//! running its handler over its topics until shutdown.

use std::future::Future;
use std::path::{Path, PathBuf};

use crate::codec::Codec;
use crate::error::Result;
use crate::kafka::topic::TopicSpec;
use crate::processor::{self, Handler, Positions};
use crate::registry::Client;
use crate::store::Store;

/// Where a service keeps its state.
#[derive(Debug, Clone)]
pub enum Data {
    /// A sled directory of its own (a service process).
    Dir(PathBuf),
    /// A store opened by the caller (services embedded in one process, tests).
    Store(Store),
}

impl Data {
    /// Opens the store.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Store`] when sled cannot open the directory.
    pub fn open(&self) -> Result<Store> {
        match self {
            Data::Dir(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| crate::Error::Store(format!("creating {}: {e}", dir.display())))?;
                Store::open(dir)
            }
            Data::Store(store) => Ok(store.clone()),
        }
    }
}

impl std::fmt::Display for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Data::Dir(dir) => write!(f, "{}", dir.display()),
            Data::Store(_) => f.write_str("a store opened by the caller"),
        }
    }
}

/// Settings every event-driven service takes.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The schema registry's base URL.
    pub registry: String,
    /// Where the service's store lives.
    pub data: Data,
    /// Raw librdkafka consumer settings (tests shorten session timeouts with these).
    pub consumer: Vec<(String, String)>,
    /// Warm copies of tasks other instances own (see [`processor::Settings::standby_replicas`]).
    pub standby_replicas: usize,
    /// The partitions the service's processor holds and how far it is: shared with whoever
    /// made the settings (benches and tests watch a fail-over through it).
    pub positions: Positions,
}

impl Settings {
    /// Settings with no consumer overrides.
    pub fn new(brokers: impl Into<String>, registry: impl Into<String>, data: Data) -> Self {
        Settings {
            brokers: brokers.into(),
            registry: registry.into(),
            data,
            consumer: Vec::new(),
            standby_replicas: 0,
            positions: Positions::default(),
        }
    }

    /// A codec on the settings' registry.
    ///
    /// # Errors
    ///
    /// [`crate::Error::RegistryUnavailable`] when the URL is unusable.
    pub fn codec(&self) -> Result<Codec> {
        Ok(Codec::new(Client::new(&self.registry)?))
    }
}

/// What a service reads and where it logs its state.
#[derive(Debug, Clone, Default)]
pub struct Topics<'a> {
    /// The topics whose partitions make up its tasks (co-partitioned: as many partitions each).
    pub tasks: Vec<&'a TopicSpec>,
    /// The topics every instance reads whole, as global tables.
    pub globals: Vec<&'a TopicSpec>,
    /// The compacted topic its tasks' state is logged to.
    pub changelog: Option<&'a TopicSpec>,
}

/// Runs `handler` as consumer group `group` over `topics` until `shutdown`, on the store of
/// `settings`, showing what it holds in `settings.positions`.
///
/// # Errors
///
/// As [`processor::run`], and when the store cannot be opened.
pub async fn run<H: Handler>(
    group: &str,
    topics: &Topics<'_>,
    settings: &Settings,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let store = settings.data.open()?;
    let mut processor = processor::Settings::new(&settings.brokers, group, &topics.tasks)
        .with_globals(&topics.globals);
    if let Some(changelog) = topics.changelog {
        processor = processor.with_changelog(changelog);
    }
    processor.consumer.clone_from(&settings.consumer);
    processor.standby_replicas = settings.standby_replicas;
    if settings.standby_replicas > 0 && topics.changelog.is_none() {
        tracing::warn!(
            group,
            "This service logs no state to a changelog: --standby-replicas has nothing to copy"
        );
    }
    tracing::info!(
        group,
        tasks = ?processor.topics,
        globals = ?processor.globals,
        changelog = ?processor.changelog,
        "Service starting"
    );
    processor::run(
        processor,
        store,
        settings.codec()?,
        handler,
        settings.positions.clone(),
        shutdown,
    )
    .await
}

/// Which Kafka cluster a command talks to: `--brokers`, `TRIPSTREAM_BROKERS`, or the address
/// a running `tripstream broker` wrote to [`BOOTSTRAP_FILE`].
#[derive(Debug, Clone, Default, clap::Args)]
// No argument group: commands that flatten these flags have their own `Args` group.
#[group(skip)]
pub struct Brokers {
    /// Kafka bootstrap servers [default: the address `tripstream broker` wrote to
    /// .tripstream/bootstrap].
    #[arg(
        long = "brokers",
        id = "brokers",
        value_name = "BROKERS",
        env = "TRIPSTREAM_BROKERS"
    )]
    pub explicit: Option<String>,
}

impl Brokers {
    /// The explicit brokers, else the address a running `tripstream broker` wrote to
    /// [`BOOTSTRAP_FILE`] under `root`.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Usage`] saying how to give a broker when there is none,
    /// [`crate::Error::Io`] when the file is there but cannot be read.
    pub fn resolve(&self, root: &Path) -> Result<String> {
        if let Some(brokers) = &self.explicit {
            return Ok(brokers.clone());
        }
        let file = root.join(BOOTSTRAP_FILE);
        match std::fs::read_to_string(&file) {
            Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
            Ok(_) => Err(crate::Error::Usage(format!(
                "{} is empty; restart `tripstream broker` or pass --brokers",
                file.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(crate::Error::Usage(format!(
                    "no broker given: pass --brokers HOST:PORT, set TRIPSTREAM_BROKERS, or start \
                     `tripstream broker` (which writes {})",
                    file.display()
                )))
            }
            Err(e) => Err(crate::Error::io(file, e)),
        }
    }
}

/// The schema registry a command uses unless told otherwise.
pub const DEFAULT_REGISTRY: &str = "http://127.0.0.1:8081";

/// The broker and registry flags of every command that reads or writes events.
#[derive(Debug, Clone, clap::Args)]
// No argument group: commands that flatten these flags have their own `Args` group.
#[group(skip)]
pub struct Connection {
    /// Where the Kafka cluster is.
    #[command(flatten)]
    pub brokers: Brokers,
    /// The schema registry.
    #[arg(long, env = "TRIPSTREAM_REGISTRY", default_value = DEFAULT_REGISTRY)]
    pub registry: String,
}

/// The command-line flags of every service process (`tripstream run <service>` and each
/// service's own binary).
#[derive(Debug, Clone, clap::Args)]
// No argument group: commands that flatten these flags have their own `Args` group.
#[group(skip)]
pub struct Args {
    /// The broker and the registry.
    #[command(flatten)]
    pub connection: Connection,
    /// The service's store directory [default: .tripstream/data/<service>].
    #[arg(long, env = "TRIPSTREAM_DATA")]
    pub data: Option<PathBuf>,
    /// A librdkafka consumer setting, KEY=VALUE (repeatable), e.g.
    /// session.timeout.ms=6000 to hand a crashed instance's partitions over sooner.
    #[arg(long = "consumer", env = "TRIPSTREAM_CONSUMER", value_delimiter = ',', value_parser = key_value)]
    pub consumer: Vec<(String, String)>,
    /// Keep warm copies of the tasks other instances own, caught up from their changelogs
    /// every second, so that taking one over after a crash reads only its latest changes
    /// instead of restoring it whole. 0: none. Any other number: every task this instance
    /// does not own (with two instances, one standby per task); costs the disk and the reads
    /// of the whole service's state on every instance.
    #[arg(
        long,
        env = "TRIPSTREAM_STANDBY_REPLICAS",
        default_value_t = 0,
        value_name = "N"
    )]
    pub standby_replicas: usize,
}

fn key_value(text: &str) -> std::result::Result<(String, String), String> {
    text.split_once('=')
        .filter(|(key, _)| !key.is_empty())
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, found `{text}`"))
}

/// Where `tripstream broker` writes its address, relative to the project root.
pub const BOOTSTRAP_FILE: &str = ".tripstream/bootstrap";

/// Where `service` keeps its store under `root` unless told otherwise:
/// `<root>/.tripstream/data/<service>`.
pub fn default_data_dir(root: &Path, service: &str) -> PathBuf {
    root.join(".tripstream/data").join(service)
}

impl Args {
    /// The settings these flags give `service` started in `root`: the bootstrap file and the
    /// default store directory are looked for there; an explicit `--data` is taken as it is.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Usage`] when no broker is given and no `tripstream broker` wrote its
    /// address.
    pub fn settings(&self, root: &Path, service: &str) -> Result<Settings> {
        let brokers = self.connection.brokers.resolve(root)?;
        let data = self
            .data
            .clone()
            .unwrap_or_else(|| default_data_dir(root, service));
        let mut settings = Settings::new(brokers, &self.connection.registry, Data::Dir(data));
        settings.consumer.clone_from(&self.consumer);
        settings.standby_replicas = self.standby_replicas;
        Ok(settings)
    }
}

/// What a service's shutdown signal is.
pub type Shutdown = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// The whole `main` of a service binary: flags, logging, Ctrl-C or SIGTERM, exit code (0 after
/// a clean stop, 2 when the service could not start or failed).
///
/// `binary` names the program in `--help` (pass `env!("CARGO_BIN_NAME")`).
pub fn main<F, Fut, E>(
    service: &str,
    binary: &'static str,
    about: &'static str,
    run: F,
) -> std::process::ExitCode
where
    F: FnOnce(Settings, Shutdown) -> Fut,
    Fut: Future<Output = std::result::Result<(), E>>,
    E: std::fmt::Display,
{
    use clap::{Args as _, FromArgMatches as _};
    // The flags' own doc would otherwise become the program's description.
    let command = Args::augment_args(clap::Command::new(binary))
        .about(about)
        .version(env!("CARGO_PKG_VERSION"));
    let args = match Args::from_arg_matches(&command.get_matches()) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    main_with(&args, service, |settings| {
        run(settings, Box::pin(interrupted()))
    })
}

/// As [`main`], for a service binary that parses more flags itself: logging, the runtime and
/// the exit code, given the common flags. `run`'s error is the service's own.
pub fn main_with<F, Fut, E>(args: &Args, service: &str, run: F) -> std::process::ExitCode
where
    F: FnOnce(Settings) -> Fut,
    Fut: Future<Output = std::result::Result<(), E>>,
    E: std::fmt::Display,
{
    crate::telemetry::init("info,librdkafka=warn");
    let failed = |error: &dyn std::fmt::Display| {
        eprintln!("error: {service}: {error}");
        std::process::ExitCode::from(2)
    };
    let settings = match args.settings(Path::new("."), service) {
        Ok(settings) => settings,
        Err(e) => return failed(&e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return failed(&format_args!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(run(settings)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => failed(&e),
    }
}

/// Resolves on Ctrl-C, or SIGTERM on Unix (how process managers stop a service).
pub async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

//! A cluster of `tripstream` processes for the tests that kill them: a broker process (the
//! embedded one or Tansu), the registry and service instances, and HTTP helpers that ride out a
//! gateway restarting.

// Each test binary that includes this uses a different part of it.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use events::Money;
use rust_decimal::Decimal;
use serde_json::Value;

use super::Process;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn tripstream() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tripstream"));
    command
        .arg("--root")
        .arg(root())
        .env("TRIPSTREAM_LOG", "warn");
    command
}

impl Process {
    /// SIGTERM, then wait: the service drains and closes its store.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub bootstrap: String,
    pub registry: String,
    pub auth_port: u16,
    pub gateway_port: u16,
}

impl Drop for Cluster {
    /// A failing scenario prints the end of every process's log before its directory goes.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("--- last lines of {}:", path.display());
                for line in &lines[lines.len().saturating_sub(40)..] {
                    eprintln!("{line}");
                }
            }
        }
    }
}

impl Cluster {
    /// Starts `tripstream run <name>` on its own store, `<dir>/<name>`.
    pub fn service(&self, name: &str) -> Process {
        self.instance(name, name)
    }

    /// Starts an instance of service `name` on the store `<dir>/<instance>`, logging to
    /// `<dir>/<instance>.log`.
    pub fn instance(&self, name: &str, instance: &str) -> Process {
        self.instance_with(name, instance, &[])
    }

    /// As [`Cluster::instance`], with more flags for `tripstream run`.
    pub fn instance_with(&self, name: &str, instance: &str, flags: &[&str]) -> Process {
        let dir = self.dir.path();
        let mut command = tripstream();
        command
            .args([
                "run",
                name,
                "--brokers",
                &self.bootstrap,
                "--registry",
                &self.registry,
            ])
            .arg("--data")
            .arg(dir.join(instance))
            .args(flags);
        match name {
            "auth" => {
                command
                    .args(["--listen", &format!("127.0.0.1:{}", self.auth_port)])
                    .arg("--token-keys")
                    .arg(dir.join("token-keys"));
            }
            "gateway" => {
                command
                    .args(["--listen", &format!("127.0.0.1:{}", self.gateway_port)])
                    .args([
                        "--auth-url",
                        &format!("http://127.0.0.1:{}", self.auth_port),
                    ]);
            }
            _ => {}
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{instance}.log")))
            .expect("log file");
        // Printed when the scenario fails (see `Cluster`'s drop).
        command.env("TRIPSTREAM_LOG", "info,librdkafka=warn");
        Process(
            command
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("the service starts"),
        )
    }

    pub fn gateway(&self) -> String {
        format!("http://127.0.0.1:{}", self.gateway_port)
    }
}

pub fn eur(amount: i64) -> Money {
    Money::new(Decimal::new(amount * 100, 2), "EUR")
}

/// What became of a request.
pub enum Sent {
    /// Answered.
    Answered(u16, Value),
    /// Never reached the gateway (it was down).
    Unreached,
    /// Broken off after it was sent (the gateway was killed): its effect is unknown, so only
    /// a request with an idempotency key may be sent again.
    BrokenOff,
}

pub async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
    idempotency_key: Option<&str>,
) -> Sent {
    let mut request = http.request(method, url);
    if let Some(key) = idempotency_key {
        request = request.header("idempotency-key", key);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            match response.json().await {
                Ok(body) => Sent::Answered(status, body),
                Err(_) => Sent::BrokenOff,
            }
        }
        Err(e) if e.is_connect() => Sent::Unreached,
        Err(_) => Sent::BrokenOff,
    }
}

/// Sends a request; `None` when it did not get an answer (the gateway may be restarting).
/// Only for requests that are safe to repeat (reads, sign-up, login).
pub async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> Option<(u16, Value)> {
    match send(http, method, url, token, body, None).await {
        Sent::Answered(status, body) => Some((status, body)),
        Sent::Unreached | Sent::BrokenOff => None,
    }
}

pub async fn until_answered(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // 503: the gateway is up but what it needs (auth, the broker) is not yet.
        if let Some(answer) = call(http, method.clone(), url.clone(), token, body.clone()).await
            && answer.0 != 503
        {
            return answer;
        }
        assert!(Instant::now() < deadline, "{url} unreachable for 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The broker process the cluster runs on.
pub struct Broker {
    pub bootstrap: String,
    /// How to start it again on the same storage; `None` for the embedded broker, whose log
    /// lives in memory and ends with its process.
    pub restart: Option<Command>,
    pub process: Process,
}

impl Broker {
    /// `tripstream broker`: librdkafka's mock cluster in its own process, topics created.
    pub fn embedded(dir: &Path) -> Broker {
        let bootstrap_file = dir.join("bootstrap");
        let process = Process(
            tripstream()
                .args(["broker", "--bootstrap-file"])
                .arg(&bootstrap_file)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("broker"),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        let bootstrap = loop {
            if let Ok(text) = std::fs::read_to_string(&bootstrap_file)
                && !text.trim().is_empty()
            {
                break text.trim().to_owned();
            }
            assert!(Instant::now() < deadline, "the broker never started");
            std::thread::sleep(Duration::from_millis(50));
        };
        Broker {
            bootstrap,
            restart: None,
            process,
        }
    }

    /// Tansu on a free port, storing in SQLite under `dir`.
    pub fn tansu(binary: &Path, dir: &Path) -> Broker {
        let port = free_port();
        let bootstrap = format!("127.0.0.1:{port}");
        let url = format!("tcp://{bootstrap}");
        let mut command = Command::new(binary);
        command
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            // Relative to the working directory, which holds no stray `.env` for Tansu to read.
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(dir)
            .stdout(Stdio::null());
        let process = start_tansu(&mut command, dir, &bootstrap);
        Broker {
            bootstrap,
            restart: Some(command),
            process,
        }
    }

    /// SIGKILL, then start again on the same storage.
    pub fn kill_and_restart(&mut self, dir: &Path) {
        let command = self
            .restart
            .as_mut()
            .expect("only a broker with durable storage is restarted");
        self.process.0.kill().expect("SIGKILL");
        let _ = self.process.0.wait();
        std::thread::sleep(Duration::from_millis(300));
        self.process = start_tansu(command, dir, &self.bootstrap);
    }
}

pub fn start_tansu(command: &mut Command, dir: &Path, bootstrap: &str) -> Process {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("tansu.log"))
        .expect("log file");
    let process = Process(command.stderr(log).spawn().expect("tansu starts"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(bootstrap).is_err() {
        assert!(
            Instant::now() < deadline,
            "Tansu never listened on {bootstrap}: {}",
            std::fs::read_to_string(dir.join("tansu.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    process
}

/// Signs up one user per entry of `credits` through the gateway (emails `user<i>@<domain>`),
/// credits each that much through `payment.commands`, and logs each in: their tokens.
pub async fn funded_users(
    http: &reqwest::Client,
    gateway: &str,
    producer: &streams::kafka::producer::Producer,
    domain: &str,
    credits: &[i64],
) -> Vec<String> {
    let mut tokens = Vec::new();
    for (i, credit) in credits.iter().enumerate() {
        let email = format!("user{i}@{domain}");
        let password = "a test password 123";
        let (status, user) = until_answered(
            http,
            reqwest::Method::POST,
            format!("{gateway}/v1/users"),
            None,
            Some(serde_json::json!({"email": email, "password": password, "display_name": "T"})),
        )
        .await;
        assert_eq!(status, 201, "{user}");
        let user_id = user["user_id"].as_str().expect("id").to_owned();
        let credited = events::AccountCredited {
            user_id: user_id.clone(),
            amount: eur(*credit),
            note: "seed".into(),
        };
        producer
            .send(
                events::topics::PAYMENT_COMMANDS,
                &credited,
                &streams::kafka::headers::Metadata::new(&user_id),
            )
            .await
            .expect("credit");
        let (status, session) = until_answered(
            http,
            reqwest::Method::POST,
            format!("{gateway}/v1/sessions"),
            None,
            Some(serde_json::json!({"email": email, "password": password})),
        )
        .await;
        assert_eq!(status, 201, "{session}");
        tokens.push(session["token"].as_str().expect("token").to_owned());
    }
    tokens
}

/// Waits until the gateway lists `count` flights from LIS to FRA (the catalog reaches it
/// through the log).
pub async fn wait_for_flights(http: &reqwest::Client, gateway: &str, token: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, found) = until_answered(
            http,
            reqwest::Method::GET,
            format!("{gateway}/v1/flights?from=LIS&to=FRA"),
            Some(token),
            None,
        )
        .await;
        if found["flights"]
            .as_array()
            .is_some_and(|f| f.len() == count)
        {
            return;
        }
        assert!(Instant::now() < deadline, "no catalog: {found}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Places a booking through the gateway, retrying with the idempotency key `key` while the
/// gateway is down or broken off (the key makes a retry safe even when the gateway died
/// mid-request): the booking's id.
pub async fn place(
    http: &reqwest::Client,
    gateway: &str,
    token: &str,
    body: &Value,
    key: &str,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sent = send(
            http,
            reqwest::Method::POST,
            format!("{gateway}/v1/bookings"),
            Some(token),
            Some(body.clone()),
            Some(key),
        )
        .await;
        if let Sent::Answered(status, booking) = sent
            && status != 503
        {
            assert_eq!(status, 202, "{booking}");
            return booking["booking_id"].as_str().expect("id").to_owned();
        }
        assert!(Instant::now() < deadline, "gateway down for 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until booking `id` is no longer `PENDING` (at most until `deadline`): its view.
pub async fn ended(
    http: &reqwest::Client,
    gateway: &str,
    token: &str,
    id: &str,
    deadline: Instant,
) -> Value {
    loop {
        let (status, view) = until_answered(
            http,
            reqwest::Method::GET,
            format!("{gateway}/v1/bookings/{id}"),
            Some(token),
            None,
        )
        .await;
        assert_eq!(status, 200, "{view}");
        if view["status"] != "PENDING" {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "booking {id} never finished: {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Puts flights LIS to FRA on sale, `(flight id, seats)` each at 100 EUR a seat, and hotel H1
/// in Frankfurt with 1,000 rooms at 80 EUR a night.
pub async fn seed_catalog(producer: &streams::kafka::producer::Producer, flights: &[(&str, i32)]) {
    for (id, seats) in flights {
        let flight = events::FlightScheduled {
            flight_id: (*id).into(),
            origin: "LIS".into(),
            destination: "FRA".into(),
            // A week from today: the gateway refuses check-ins in the past.
            departs_at: system::millis_at(system::day_from_today(7), 5),
            arrives_at: system::millis_at(system::day_from_today(7), 8),
            seats: *seats,
            seat_price: eur(100),
        };
        producer
            .send(
                events::topics::FLIGHTS,
                &flight,
                &streams::kafka::headers::Metadata::new(*id),
            )
            .await
            .expect("flight");
    }
    let hotel = events::HotelListed {
        hotel_id: "H1".into(),
        name: "Main".into(),
        city: "Frankfurt".into(),
        rooms: 1_000,
        nightly_rate: eur(80),
    };
    producer
        .send(
            events::topics::HOTELS,
            &hotel,
            &streams::kafka::headers::Metadata::new("H1"),
        )
        .await
        .expect("hotel");
}

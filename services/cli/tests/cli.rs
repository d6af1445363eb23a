//! The `tripstream` binary as scripts use it: exit codes and messages, and the demo serving.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

mod support;
use support::start_registry;

fn tripstream() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tripstream"));
    command
        .env_remove("TRIPSTREAM_BROKERS")
        .env_remove("TRIPSTREAM_REGISTRY");
    command
}

fn run(command: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("tripstream runs");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

const USER_V1: &str = r#"{"type":"record","name":"User","namespace":"demo","fields":[{"name":"id","type":"string"}]}"#;
const USER_V2: &str = r#"{"type":"record","name":"User","namespace":"demo","fields":[{"name":"id","type":"string"},{"name":"age","type":"int","default":0}]}"#;
const USER_BREAKING: &str = r#"{"type":"record","name":"User","namespace":"demo","fields":[{"name":"id","type":"long"},{"name":"email","type":"string"}]}"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("dir");
    }
    std::fs::write(&path, text).expect("write");
    path
}

fn compat(level: &str, new: &Path, old: &[&Path], extra: &[&str]) -> (i32, String, String) {
    let mut command = tripstream();
    command
        .args(["schemas", "compat", "--level", level, "--new"])
        .arg(new);
    for o in old {
        command.arg("--old").arg(o);
    }
    run(command.args(extra))
}

#[test]
fn schemas_compat_exits_0_when_compatible_and_1_with_every_problem_when_not() {
    let dir = TempDir::new().expect("tmp");
    let v1 = write(dir.path(), "v1.avsc", USER_V1);
    let v2 = write(dir.path(), "v2.avsc", USER_V2);
    let bad = write(dir.path(), "bad.avsc", USER_BREAKING);

    let (code, out, _) = compat("BACKWARD", &v2, &[&v1], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("compatible:"), "{out}");

    let (code, out, _) = compat("BACKWARD", &bad, &[&v1, &v2], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("incompatible:") && out.contains("(2 problems)"),
        "{out}"
    );
    assert!(
        out.contains("/fields/0/type") && out.contains("TYPE_MISMATCH"),
        "{out}"
    );
    assert!(
        out.contains("/fields/1") && out.contains("READER_FIELD_MISSING_DEFAULT_VALUE"),
        "{out}"
    );

    // Transitive levels check every --old, each problem naming its file.
    let (code, out, _) = compat("FULL_TRANSITIVE", &bad, &[&v1, &v2], &["--format", "json"]);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&out).expect("json output");
    assert_eq!(report["compatible"], false);
    assert_eq!(report["level"], "FULL_TRANSITIVE");
    let olds: Vec<&str> = report["incompatibilities"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|i| i["old"].as_str())
        .collect();
    assert!(
        olds.iter().any(|o| o.ends_with("v1.avsc")) && olds.iter().any(|o| o.ends_with("v2.avsc")),
        "{olds:?}"
    );

    let (code, _, _) = compat("NONE", &bad, &[&v1], &[]);
    assert_eq!(code, 0);
}

#[test]
fn schemas_compat_exits_2_naming_the_file_and_reason_for_unusable_input() {
    let dir = TempDir::new().expect("tmp");
    let v1 = write(dir.path(), "v1.avsc", USER_V1);
    let not_json = write(
        dir.path(),
        "not-json.avsc",
        "{\"type\": \"record\",\n oops}",
    );
    let not_avro = write(dir.path(), "not-avro.avsc", r#"{"type":"spaceship"}"#);
    let unknown = write(
        dir.path(),
        "unknown.avsc",
        r#"{"type":"record","name":"R","fields":[{"name":"a","type":{"type":"array","items":"Missing"}}]}"#,
    );
    let missing = dir.path().join("absent.avsc");

    let (code, _, err) = compat("BACKWARD", &not_json, &[&v1], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("not-json.avsc")
            && err.contains("line 2, column 2")
            && err.contains("not valid JSON"),
        "{err}"
    );

    let (code, _, err) = compat("BACKWARD", &v1, &[&not_avro], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("not-avro.avsc") && err.contains("unknown type name 'spaceship'"),
        "{err}"
    );

    let (code, out, err) = compat("BACKWARD", &unknown, &[&v1], &["--format", "json"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("/fields/0/type/items") && err.contains("'Missing'"),
        "{err}"
    );
    assert!(out.contains("\"error\""), "{out}");

    let (code, _, err) = compat("BACKWARD", &missing, &[&v1], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("absent.avsc"), "{err}");

    let (code, _, err) = compat("SIDEWAYS", &v1, &[&v1], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("'SIDEWAYS' is not a compatibility level"),
        "{err}"
    );

    let (code, _, err) = run(tripstream()
        .args(["schemas", "compat", "--level", "FULL", "--new"])
        .arg(&v1));
    assert_eq!(code, 2);
    assert!(err.contains("--old"), "{err}");
}

/// A throwaway project in its own git repository.
struct Project {
    dir: TempDir,
}

impl Project {
    fn new() -> Project {
        let project = Project {
            dir: TempDir::new().expect("tmp"),
        };
        project.git(&["init", "-q"]);
        write(
            project.path(),
            "topics/people.toml",
            r#"name = "people"
description = "People, keyed by id."
partitions = 3
replication_factor = 1
retention = "7d"
cleanup_policy = "delete"
dead_letter = "people.dlq"
record_types = ["demo.User"]
"#,
        );
        project
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn git(&self, args: &[&str]) {
        let status = Command::new("git")
            .arg("-C")
            .arg(self.path())
            .args([
                "-c",
                "user.name=Test",
                "-c",
                "user.email=test@example.com",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .status()
            .expect("git runs");
        assert!(status.success(), "git {args:?}");
    }

    fn commit_schema(&self, text: &str, message: &str) {
        write(self.path(), "schemas/demo.User.avsc", text);
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
    }

    fn check(&self, extra: &[&str]) -> (i32, String, String) {
        run(tripstream()
            .arg("--root")
            .arg(self.path())
            .args(["schemas", "check"])
            .args(extra))
    }
}

#[test]
fn schemas_check_fails_on_an_incompatible_change_in_git_history() {
    let project = Project::new();
    project.commit_schema(USER_V1, "first");
    let (code, out, _) = project.check(&[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("new           people-demo.User"), "{out}");

    project.commit_schema(USER_V2, "compatible");
    let (code, out, _) = project.check(&[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ok            people-demo.User (BACKWARD, 1 earlier version)"),
        "{out}"
    );

    // An uncommitted breaking edit is checked against history up to HEAD.
    write(project.path(), "schemas/demo.User.avsc", USER_BREAKING);
    let (code, out, _) = project.check(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("incompatible  people-demo.User (BACKWARD, 2 earlier versions)"),
        "{out}"
    );
    assert!(
        out.contains("schemas/demo.User.avsc") && out.contains("TYPE_MISMATCH at /fields/0/type"),
        "{out}"
    );
    assert!(
        out.contains("1 subject: 0 ok, 0 new, 1 incompatible"),
        "{out}"
    );

    // Committed, the same change still fails: the newest commit is compared with the ones before.
    project.git(&["commit", "-qam", "breaking"]);
    let (code, out, _) = project.check(&[]);
    assert_eq!(code, 1, "{out}");
    // Against the first commit only, and at NONE, it passes.
    let (code, _, _) = project.check(&["--against", "HEAD~2"]);
    assert_eq!(code, 1, "the working copy still breaks version 1");
    let (code, out, _) = project.check(&["--level", "NONE"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn schemas_check_exits_2_outside_git_or_with_invalid_files() {
    let project = Project::new();
    project.commit_schema(USER_V1, "first");
    let (code, _, err) = project.check(&["--against", "no-such-ref"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("'no-such-ref' does not name a commit"),
        "{err}"
    );

    write(
        project.path(),
        "schemas/demo.User.avsc",
        r#"{"type":"record","name":"User","namespace":"demo","fields":[{"name":"a","type":"Nope"}]}"#,
    );
    let (code, _, err) = project.check(&[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("demo.User.avsc") && err.contains("/fields/0/type"),
        "{err}"
    );

    write(
        project.path(),
        "schemas/demo.User.avsc",
        r#"{"type":"record","name":"Person","namespace":"demo","fields":[]}"#,
    );
    let (code, _, err) = project.check(&[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("named demo.Person but the file is named demo.User.avsc"),
        "{err}"
    );

    let plain = TempDir::new().expect("tmp");
    std::fs::create_dir_all(plain.path().join("topics")).expect("dir");
    write(plain.path(), "schemas/demo.User.avsc", USER_V1);
    let (code, _, err) = run(tripstream()
        .arg("--root")
        .arg(plain.path())
        .args(["schemas", "check"]));
    assert_eq!(code, 2);
    assert!(err.contains("not inside a git repository"), "{err}");
}

#[test]
fn an_invalid_topic_spec_names_the_file_the_field_and_the_reason() {
    let cases = [
        (
            "partitions = 3",
            "partitions = 0",
            "field `partitions`: 0 is not between 1 and 10000",
        ),
        (
            "partitions = 3",
            "partitions = \"three\"",
            "field `partitions`",
        ),
        (
            "retention = \"7d\"",
            "retention = \"a week\"",
            "field `retention`: 'a week' is not a duration",
        ),
        (
            "name = \"people\"",
            "name = \"persons\"",
            "field `name`: 'persons' must equal the file name",
        ),
        (
            "cleanup_policy = \"delete\"",
            "cleanup_policy = \"shred\"",
            "field `cleanup_policy`",
        ),
        (
            "partitions = 3",
            "partitions = 3\ncolour = \"blue\"",
            "unknown field `colour`",
        ),
        (
            "record_types = [\"demo.User\"]",
            "record_types = [\"demo.Nobody\"]",
            "no schema file schemas/demo.Nobody.avsc",
        ),
    ];
    for (from, to, expected) in cases {
        let project = Project::new();
        write(project.path(), "schemas/demo.User.avsc", USER_V1);
        let spec =
            std::fs::read_to_string(project.path().join("topics/people.toml")).expect("spec");
        write(
            project.path(),
            "topics/people.toml",
            &spec.replace(from, to),
        );
        let (code, _, err) = project.check(&[]);
        assert_eq!(code, 2, "{to}: {err}");
        assert!(
            err.contains("people.toml") && err.contains(expected),
            "{to}: expected {expected} in {err}"
        );
        // `topics` commands read topics/ alone, so they cannot know which schemas exist.
        if !expected.starts_with("no schema file") {
            let (code, _, err) = run(tripstream()
                .arg("--root")
                .arg(project.path())
                .args(["topics", "list"]));
            assert_eq!(code, 2, "{to}: {err}");
            assert!(
                err.contains("people.toml") && err.contains(expected),
                "{to}: expected {expected} in {err}"
            );
        }
    }
}

/// A `tripstream broker` process, stopped on drop.
struct BrokerProcess {
    child: Child,
    bootstrap: String,
}

impl BrokerProcess {
    fn start(root: &Path, file: &Path) -> BrokerProcess {
        let child = tripstream()
            .arg("--root")
            .arg(root)
            .args(["broker", "--brokers", "2", "--bootstrap-file"])
            .arg(file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("broker starts");
        // Owned before waiting, so a failed wait still stops the process on drop.
        let mut broker = BrokerProcess {
            child,
            bootstrap: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(file)
                && !text.trim().is_empty()
            {
                broker.bootstrap = text.trim().to_owned();
                return broker;
            }
            assert!(
                Instant::now() < deadline,
                "the broker never wrote {}",
                file.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_standalone_broker_serves_topics_a_registry_and_schema_registration() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let tmp = TempDir::new().expect("tmp");
    let file = tmp.path().join("bootstrap");
    let broker = BrokerProcess::start(&root, &file);
    assert!(
        broker.bootstrap.starts_with("127.0.0.1:"),
        "{}",
        broker.bootstrap
    );

    // The broker created every topic of topics/ at start, so apply finds them all in place.
    let (code, out, err) = run(tripstream().arg("--root").arg(&root).args([
        "topics",
        "apply",
        "--brokers",
        &broker.bootstrap,
    ]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ok        bookings")
            && out.contains("ok        bookings.dlq")
            && out.contains("0 missing"),
        "{out}"
    );
    let (code, out, _) = run(tripstream()
        .arg("--root")
        .arg(&root)
        .env("TRIPSTREAM_BROKERS", &broker.bootstrap)
        .args(["topics", "list"]));
    assert_eq!(code, 0);
    let bookings = out
        .lines()
        .find(|l| l.starts_with("bookings "))
        .expect("bookings listed");
    assert!(
        bookings.trim_end().ends_with('6'),
        "live partitions shown: {bookings}"
    );

    // A registry process on that broker, then the project's schemas registered and checked.
    let (registry, url) = start_registry(tripstream(), &broker.bootstrap);
    let (code, out, err) = run(tripstream().arg("--root").arg(&root).args([
        "schemas",
        "register",
        "--registry",
        &url,
    ]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("registered  bookings-tripstream.booking.BookingRequested"),
        "{out}"
    );
    let (code, out, err) =
        run(tripstream()
            .arg("--root")
            .arg(&root)
            .args(["schemas", "check", "--registry", &url]));
    drop(registry);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(" 0 new, 0 incompatible"),
        "registered schemas are the latest versions: {out}"
    );
}

#[test]
fn topics_apply_without_a_broker_says_how_to_get_one() {
    let project = Project::new();
    write(project.path(), "schemas/demo.User.avsc", USER_V1);
    let (code, _, err) = run(tripstream()
        .arg("--root")
        .arg(project.path())
        .args(["topics", "apply"]));
    assert_eq!(code, 2);
    assert!(
        err.contains("pass --brokers") && err.contains("tripstream broker"),
        "{err}"
    );
}

#[test]
fn produce_consume_and_replay_round_trip_json_lines_through_the_broker() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let tmp = TempDir::new().expect("tmp");
    let broker = BrokerProcess::start(&root, &tmp.path().join("bootstrap"));
    let (_registry, url) = start_registry(tripstream(), &broker.bootstrap);
    let with_env = |command: &mut Command| {
        command
            .arg("--root")
            .arg(&root)
            .env("TRIPSTREAM_BROKERS", &broker.bootstrap)
            .env("TRIPSTREAM_REGISTRY", &url);
    };

    let input = [
        r#"{"booking_id":"0b6f2f7e-4a57-4c1e-9d59-1f6e7b2a9c10","user_id":"5e0c9a3b-77d2-4f0e-8a41-c2d9f1b3e6a7","total":{"amount":"1234.50","currency":"EUR"},"confirmed_at":1764000000000}"#,
        "not json",
        r#"{"booking_id":"only"}"#,
        r#"{"booking_id":"1b6f2f7e-4a57-4c1e-9d59-1f6e7b2a9c10","user_id":"5e0c9a3b-77d2-4f0e-8a41-c2d9f1b3e6a7","total":{"amount":"99.00","currency":"EUR"},"confirmed_at":1764000000001}"#,
    ]
    .join("\n");
    let mut produce = tripstream();
    with_env(&mut produce);
    let mut child = produce
        .args([
            "produce",
            "--topic",
            "bookings",
            "--type",
            "tripstream.booking.BookingConfirmed",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("produce starts");
    {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("written");
    }
    let output = child.wait_with_output().expect("produce ends");
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "two lines were rejected: {err}"
    );
    assert!(
        err.contains("line 2: not JSON")
            && err.contains("line 3:")
            && err.contains("Produced 2 records"),
        "{err}"
    );

    let mut consume = tripstream();
    with_env(&mut consume);
    let (code, out, err) = run(consume.args([
        "consume",
        "--topic",
        "bookings",
        "--from-beginning",
        "--max",
        "2",
    ]));
    assert_eq!(code, 0, "{err}");
    let records: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(records.len(), 2);
    for record in &records {
        assert_eq!(record["type"], "tripstream.booking.BookingConfirmed");
        assert_eq!(
            record["headers"]["event_type"],
            "tripstream.booking.BookingConfirmed"
        );
        assert!(record["headers"]["event_id"].is_string());
        assert_eq!(record["value"]["total"]["currency"], "EUR");
    }

    let mut replay = tripstream();
    with_env(&mut replay);
    let store = tmp.path().join("store");
    let (code, out, err) = run(replay
        .args([
            "replay",
            "--topic",
            "bookings",
            "--handler",
            "latest",
            "--into",
        ])
        .arg(&store));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Replayed 2 records of bookings"), "{out}");
    assert!(out.contains("digest 2:"), "{out}");
    let mut again = tripstream();
    with_env(&mut again);
    let (code, _, err) = run(again
        .args([
            "replay",
            "--topic",
            "bookings",
            "--handler",
            "latest",
            "--into",
        ])
        .arg(&store));
    assert_eq!(code, 2);
    assert!(err.contains("already holds a store"), "{err}");
}

#[test]
fn demo_serve_on_port_0_prints_the_port_it_bound_and_serves_there() {
    let mut demo = support::Process(
        tripstream()
            .args([
                "demo",
                "--bookings",
                "4",
                "--users",
                "2",
                "--serve",
                "127.0.0.1:0",
            ])
            // The demo reads topics/ from the project it runs in.
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("demo starts"),
    );
    let lines = std::io::BufRead::lines(std::io::BufReader::new(
        demo.0.stdout.take().expect("stdout"),
    ));
    let mut seen = Vec::new();
    let mut url = None;
    for line in lines {
        let line = line.expect("a line");
        if let Some(rest) = line.strip_prefix("Serving the API at ") {
            url = rest.split_whitespace().next().map(str::to_owned);
            break;
        }
        seen.push(line);
    }
    let url = url.unwrap_or_else(|| panic!("no serving line in:\n{}", seen.join("\n")));
    let address = url.strip_prefix("http://").expect("an http URL");
    assert!(!address.ends_with(":0"), "the bound port, not 0: {url}");
    let mut connection = std::net::TcpStream::connect(address).expect("the gateway answers");
    std::io::Write::write_all(
        &mut connection,
        b"GET /openapi.json HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n",
    )
    .expect("request sent");
    let mut response = String::new();
    std::io::Read::read_to_string(&mut connection, &mut response).expect("response read");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"openapi\""), "{response}");
}

//! The auth service over HTTP on the embedded broker: password hashing is bounded and refuses
//! past its queue, unknown emails cost a hash, failed logins are throttled per email and per
//! client, deceptive text is refused, and tokens are JWTs checked with the published keys
//! across a key rotation.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use auth::hashing::{Hashing, Limits};
use reqwest::StatusCode;
use serde_json::{Value, json};
use streams::kafka::broker::EmbeddedBroker;
use streams::service::{Data, Settings};
use streams::store::Store;
use token::{Issuer, TokenError, Verifier};

const PASSWORD: &str = "correct horse 42";

struct Harness {
    _broker: EmbeddedBroker,
    registry: registry::Running,
    auth: auth::Running,
    hashing: Hashing,
    tokens: Issuer,
    http: reqwest::Client,
}

impl Harness {
    /// Auth on a fresh broker, registry and store, its settings changed by `configure`.
    async fn start(configure: impl FnOnce(&mut auth::Settings)) -> Harness {
        streams::telemetry::init("warn");
        let broker = EmbeddedBroker::start(1).expect("broker");
        broker
            .create_topic(registry::SCHEMAS_TOPIC, 1, 1)
            .expect("_schemas topic");
        broker
            .create_topic(events::topics::USERS, 1, 1)
            .expect("users topic");
        let registry = registry::start(registry::Settings::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            broker.bootstrap_servers(),
        ))
        .await
        .expect("registry");
        let tokens = Issuer::random(token::DEFAULT_TTL).expect("key");
        let mut settings = auth::Settings::new(
            Settings::new(
                broker.bootstrap_servers(),
                registry.url(),
                Data::Store(Store::temporary().expect("store")),
            ),
            SocketAddr::from(([127, 0, 0, 1], 0)),
            tokens.clone(),
        );
        configure(&mut settings);
        let hashing = settings.hashing.clone();
        let auth = auth::start(settings).await.expect("auth starts");
        Harness {
            _broker: broker,
            registry,
            auth,
            hashing,
            tokens,
            http: reqwest::Client::new(),
        }
    }

    async fn post(&self, path: &str, body: Value, forwarded_for: Option<&str>) -> Answer {
        let mut request = self
            .http
            .post(format!("{}{path}", self.auth.url()))
            .json(&body);
        if let Some(client) = forwarded_for {
            request = request.header("x-forwarded-for", client);
        }
        let response = request.send().await.expect("auth answers");
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = response.json().await.unwrap_or(Value::Null);
        Answer {
            status,
            retry_after,
            body,
        }
    }

    async fn sign_up(&self, email: &str) -> String {
        let answer = self
            .post(
                "/v1/users",
                json!({"email": email, "password": PASSWORD, "display_name": "Ana"}),
                None,
            )
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        answer.body["user_id"].as_str().expect("id").to_owned()
    }

    async fn log_in(&self, email: &str, password: &str) -> Answer {
        self.post(
            "/v1/sessions",
            json!({"email": email, "password": password}),
            None,
        )
        .await
    }

    async fn stop(self) {
        self.auth.stop().await.expect("auth stops");
        self.registry.stop().await.expect("registry stops");
    }
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    retry_after: Option<u64>,
    body: Value,
}

/// Waits until the gate shows `done`; the wait is for an outcome, bounded so a bug fails the
/// test instead of hanging it.
async fn until(hashing: &Hashing, what: &str, done: impl Fn(auth::hashing::Stats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(hashing.stats()) {
        assert!(Instant::now() < deadline, "{what}: {:?}", hashing.stats());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A job holding one of the gate's places to run until released.
struct Held {
    release: std::sync::mpsc::Sender<()>,
    job: tokio::task::JoinHandle<
        Result<Result<(), std::sync::mpsc::RecvError>, auth::hashing::Busy>,
    >,
}

impl Held {
    /// Starts the job and waits until it runs.
    async fn start(hashing: &Hashing) -> Held {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let job = tokio::spawn({
            let hashing = hashing.clone();
            async move { hashing.run(move || released.recv()).await }
        });
        until(hashing, "the held job runs", |s| s.running == 1).await;
        Held { release, job }
    }

    /// Lets the job end, and checks it ran.
    async fn release(self) {
        self.release.send(()).expect("the held job waits");
        assert!(self.job.await.expect("joined").expect("ran").is_ok());
    }
}

fn lenient(settings: &mut auth::Settings) {
    settings.throttle.per_email_and_address = 1_000;
    settings.throttle.per_email = 1_000;
    settings.throttle.per_address = 1_000;
    settings.throttle.sign_ups_per_address = 1_000;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_logins_never_run_more_hashes_at_once_than_the_gate_allows() {
    let harness = Harness::start(|settings| {
        lenient(settings);
        settings.hashing = Hashing::new(Limits {
            running: 2,
            queued: 64,
        });
    })
    .await;
    harness.sign_up("ana@example.com").await;
    let before = harness.hashing.stats();
    let logins = (0..16).map(|i| {
        let harness = &harness;
        async move {
            harness
                .log_in("ana@example.com", &format!("wrong password {i}"))
                .await
        }
    });
    let answers = futures::future::join_all(logins).await;
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{answer:?}");
    }
    let after = harness.hashing.stats();
    assert_eq!(after.runs - before.runs, 16, "every login ran its hash");
    assert!(after.peak <= 2, "at most 2 hashes at once: {after:?}");
    assert_eq!(after.refused, 0);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_past_the_hashing_queue_is_refused_503_with_retry_after() {
    let harness = Harness::start(|settings| {
        lenient(settings);
        settings.hashing = Hashing::new(Limits {
            running: 1,
            queued: 1,
        });
    })
    .await;
    harness.sign_up("ana@example.com").await;
    // The one place to run is taken by a job that ends when told.
    let held = Held::start(&harness.hashing).await;
    let queued = tokio::spawn({
        let http = harness.http.clone();
        let url = format!("{}/v1/sessions", harness.auth.url());
        async move {
            http.post(url)
                .json(&json!({"email": "ana@example.com", "password": "wrong password 1"}))
                .send()
                .await
                .expect("auth answers")
                .status()
        }
    });
    until(&harness.hashing, "a login waits", |s| s.queued == 1).await;

    let refused = harness.log_in("ana@example.com", PASSWORD).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{refused:?}"
    );
    assert_eq!(refused.body["error"]["code"], "unavailable", "{refused:?}");
    assert!(refused.retry_after.is_some_and(|s| s >= 1), "{refused:?}");

    held.release().await;
    assert_eq!(queued.await.expect("joined"), StatusCode::UNAUTHORIZED);
    let stats = harness.hashing.stats();
    assert_eq!(stats.peak, 1, "{stats:?}");
    assert_eq!(stats.refused, 1, "{stats:?}");
    assert_eq!(
        harness.log_in("ana@example.com", PASSWORD).await.status,
        StatusCode::CREATED,
        "once the gate is free, logins pass"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_email_costs_a_hash_and_gets_the_same_answer_as_a_wrong_password() {
    let harness = Harness::start(lenient).await;
    harness.sign_up("ana@example.com").await;
    let runs = harness.hashing.stats().runs;
    let unknown = harness.log_in("nobody@example.com", PASSWORD).await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        harness.hashing.stats().runs,
        runs + 1,
        "the unknown email's login ran a hash"
    );
    let wrong = harness.log_in("ana@example.com", "wrong password 1").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(harness.hashing.stats().runs, runs + 2);
    assert_eq!(unknown.body, wrong.body, "no hint which it was");
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeated_wrong_logins_get_429_per_email_and_per_client() {
    let harness = Harness::start(|settings| {
        settings.throttle.per_email = 3;
        settings.throttle.per_address = 5;
    })
    .await;
    harness.sign_up("ana@example.com").await;
    for i in 0..3 {
        let answer = harness
            .log_in("ana@example.com", &format!("wrong password {i}"))
            .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{answer:?}");
    }
    let runs = harness.hashing.stats().runs;
    let throttled = harness.log_in("ana@example.com", PASSWORD).await;
    assert_eq!(
        throttled.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{throttled:?}"
    );
    assert_eq!(throttled.body["error"]["code"], "too_many_requests");
    assert!(
        throttled.retry_after.is_some_and(|s| s >= 1),
        "{throttled:?}"
    );
    assert_eq!(
        harness.hashing.stats().runs,
        runs,
        "a throttled login runs no hash"
    );

    // Two more failures from this client, on other emails, use up its five.
    for email in ["bo@example.com", "cy@example.com"] {
        let answer = harness.log_in(email, PASSWORD).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{answer:?}");
    }
    let throttled = harness.log_in("dee@example.com", PASSWORD).await;
    assert_eq!(
        throttled.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{throttled:?}"
    );
    // A client behind the gateway (a trusted proxy, here loopback) is counted apart.
    let behind = harness
        .post(
            "/v1/sessions",
            json!({"email": "dee@example.com", "password": PASSWORD}),
            Some("203.0.113.7"),
        )
        .await;
    assert_eq!(behind.status, StatusCode::UNAUTHORIZED, "{behind:?}");
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_guesser_at_one_address_cannot_lock_an_email_out_elsewhere_but_many_addresses_together_can()
 {
    let harness = Harness::start(|settings| {
        settings.throttle.per_email_and_address = 3;
        settings.throttle.per_email = 5;
        settings.throttle.per_address = 100;
    })
    .await;
    harness.sign_up("ana@example.com").await;
    let log_in_from = |address: &'static str, password: String| {
        let harness = &harness;
        async move {
            harness
                .post(
                    "/v1/sessions",
                    json!({"email": "ana@example.com", "password": password}),
                    Some(address),
                )
                .await
        }
    };
    // Behind the gateway (a trusted proxy, here loopback): a guesser at one address.
    for i in 0..3 {
        let answer = log_in_from("203.0.113.7", format!("wrong {i}")).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{answer:?}");
    }
    let stopped = log_in_from("203.0.113.7", PASSWORD.into()).await;
    assert_eq!(stopped.status, StatusCode::TOO_MANY_REQUESTS, "{stopped:?}");
    // The owner, elsewhere, still gets in, and that clears the email's count.
    let owner = log_in_from("198.51.100.1", PASSWORD.into()).await;
    assert_eq!(owner.status, StatusCode::CREATED, "{owner:?}");

    // Guesses spread over addresses are stopped by the email's count from all of them, and
    // an IPv6 client is one client across its /64.
    let addresses = [
        "2001:db8:1:2::1",
        "2001:db8:1:2::2",
        "2001:db8:1:2::3",
        "198.51.100.2",
        "198.51.100.3",
    ];
    for (i, address) in addresses.into_iter().enumerate() {
        let answer = log_in_from(address, format!("wrong {i}")).await;
        assert_eq!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "{address}: {answer:?}"
        );
    }
    let same_64 = log_in_from("2001:db8:1:2::99", PASSWORD.into()).await;
    assert_eq!(
        same_64.status,
        StatusCode::TOO_MANY_REQUESTS,
        "three failures from one /64: {same_64:?}"
    );
    let spread = log_in_from("198.51.100.4", PASSWORD.into()).await;
    assert_eq!(
        spread.status,
        StatusCode::TOO_MANY_REQUESTS,
        "five failures for the email from any address: {spread:?}"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_wrong_logins_for_one_email_get_no_more_answers_than_the_limit() {
    const LIMIT: u32 = 3;
    const SENT: usize = 12;
    let harness = Harness::start(|settings| {
        lenient(settings);
        settings.throttle.per_email = LIMIT;
        settings.hashing = Hashing::new(Limits {
            running: 1,
            queued: 64,
        });
    })
    .await;
    harness.sign_up("ana@example.com").await;
    // No hash ends until every login is either waiting for one or answered: every check
    // happens before any failure is known, the worst case for the limit.
    let held = Held::start(&harness.hashing).await;
    let logins: Vec<_> = (0..SENT)
        .map(|i| {
            let http = harness.http.clone();
            let url = format!("{}/v1/sessions", harness.auth.url());
            tokio::spawn(async move {
                http.post(url)
                    .json(&json!({"email": "ana@example.com", "password": format!("wrong {i}")}))
                    .send()
                    .await
                    .expect("auth answers")
                    .status()
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answered = logins.iter().filter(|l| l.is_finished()).count();
        if harness.hashing.stats().queued + answered == SENT {
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", harness.hashing.stats());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    held.release().await;
    let mut passed = 0;
    for login in logins {
        let status = login.await.expect("joined");
        if status != StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            passed += 1;
        }
    }
    assert_eq!(passed, LIMIT, "at most {LIMIT} guesses get an answer");
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sign_ups_are_throttled_per_client_and_a_taken_email_costs_no_hash() {
    let harness = Harness::start(|settings| {
        settings.throttle.sign_ups_per_address = 3;
    })
    .await;
    harness.sign_up("ana@example.com").await;
    let runs = harness.hashing.stats().runs;
    let taken = harness
        .post(
            "/v1/users",
            json!({"email": "ana@example.com", "password": PASSWORD, "display_name": "Ana"}),
            None,
        )
        .await;
    assert_eq!(taken.status, StatusCode::CONFLICT, "{taken:?}");
    assert_eq!(taken.body["error"]["code"], "conflict");
    assert_eq!(
        harness.hashing.stats().runs,
        runs,
        "a taken email is refused before its hash"
    );
    harness.sign_up("bo@example.com").await;
    let runs = harness.hashing.stats().runs;
    let throttled = harness
        .post(
            "/v1/users",
            json!({"email": "cy@example.com", "password": PASSWORD, "display_name": "Cy"}),
            None,
        )
        .await;
    assert_eq!(
        throttled.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{throttled:?}"
    );
    assert_eq!(throttled.body["error"]["code"], "too_many_requests");
    assert!(
        throttled.retry_after.is_some_and(|s| s >= 1),
        "{throttled:?}"
    );
    assert_eq!(harness.hashing.stats().runs, runs, "no hash is run");
    // Another client behind the gateway still signs up; logins are not held.
    let behind = harness
        .post(
            "/v1/users",
            json!({"email": "cy@example.com", "password": PASSWORD, "display_name": "Cy"}),
            Some("203.0.113.7"),
        )
        .await;
    assert_eq!(behind.status, StatusCode::CREATED, "{behind:?}");
    assert_eq!(
        harness.log_in("ana@example.com", PASSWORD).await.status,
        StatusCode::CREATED
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_invisible_and_bidi_characters_are_refused_naming_the_field() {
    let harness = Harness::start(lenient).await;
    for (email, name, field) in [
        ("ana\u{202E}moc.elpmaxe@evil.com", "Ana", "email"),
        ("\u{0007}ana@example.com", "Ana", "email"),
        ("ana@example.com\n", "Ana", "email"),
        ("ana@example.com", "Ana\u{202E}nimda", "display_name"),
        ("ana@example.com", "Ana\u{2066}x\u{2069}", "display_name"),
        ("ana@example.com", "Ana\u{0000}", "display_name"),
        ("ana@example.com", "\u{001B}[31mAna", "display_name"),
        ("ana\u{200B}@example.com", "Ana", "email"),
        ("ana@exa\u{00AD}mple.com", "Ana", "email"),
        ("\u{FEFF}ana@example.com", "Ana", "email"),
        ("ana@example.com", "A\u{200D}na", "display_name"),
        ("ana@example.com", "Ana\u{2060}", "display_name"),
        ("ana@example.com", "Ana\u{2028}Admin", "display_name"),
        ("ana@example.com", "Ana\u{2029}", "display_name"),
        ("ana@example.com", "An\u{2064}a", "display_name"),
    ] {
        let answer = harness
            .post(
                "/v1/users",
                json!({"email": email, "password": PASSWORD, "display_name": name}),
                None,
            )
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{email:?} {name:?}");
        let message = answer.body["error"]["message"].as_str().unwrap_or("");
        assert!(message.starts_with(&format!("{field}: ")), "{message}");
    }
    let answer = harness.log_in("ana\u{202E}@example.com", PASSWORD).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{answer:?}");
    harness.sign_up("ana@example.com").await;
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_email_is_one_account_however_its_accents_are_composed() {
    let harness = Harness::start(lenient).await;
    // "josé": the é as one character (NFC), then as e and a combining acute accent (NFD).
    let composed = "jos\u{00E9}@example.com";
    let decomposed = "jose\u{0301}@example.com";
    let user_id = harness.sign_up(composed).await;
    let again = harness
        .post(
            "/v1/users",
            json!({"email": decomposed, "password": PASSWORD, "display_name": "Jose"}),
            None,
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{again:?}");
    let session = harness.log_in(decomposed, PASSWORD).await;
    assert_eq!(session.status, StatusCode::CREATED, "{session:?}");
    assert_eq!(session.body["user_id"], user_id.as_str());
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_are_jwts_checked_with_the_published_keys_across_a_key_rotation() {
    let harness = Harness::start(lenient).await;
    let user = harness.sign_up("ana@example.com").await;
    let jwks_url = format!("{}{}", harness.auth.url(), token::JWKS_PATH);
    let verifier = Verifier::new(&jwks_url, harness.http.clone());
    let kid = |token: &str| {
        jsonwebtoken::decode_header(token)
            .expect("a JWT")
            .kid
            .expect("a kid")
    };
    let session = |answer: Answer| {
        assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
        answer.body["token"].as_str().expect("token").to_owned()
    };
    let published = || async {
        let jwks: Value = harness
            .http
            .get(&jwks_url)
            .send()
            .await
            .expect("jwks")
            .json()
            .await
            .expect("json");
        let mut kids: Vec<String> = jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| {
                assert_eq!(k["kty"], "OKP");
                assert_eq!(k["crv"], "Ed25519");
                assert!(k.get("d").is_none(), "never the private half");
                k["kid"].as_str().expect("kid").to_owned()
            })
            .collect();
        kids.sort();
        kids
    };

    let old = session(harness.log_in("ana@example.com", PASSWORD).await);
    let old_kid = harness.tokens.signing_kid();
    assert_eq!(kid(&old), old_kid);
    assert_eq!(verifier.verify(&old, token::now()).await, Ok(user.clone()));

    let new_kid = harness.tokens.rotate().expect("rotated");
    let mut both = vec![old_kid.clone(), new_kid.clone()];
    both.sort();
    assert_eq!(published().await, both, "both keys are listed");
    let new = session(harness.log_in("ana@example.com", PASSWORD).await);
    assert_eq!(kid(&new), new_kid, "a new token uses the new key");
    assert_eq!(
        verifier.verify(&new, token::now()).await,
        Ok(user.clone()),
        "the verifier fetches the keys again for a kid it has not seen"
    );
    assert_eq!(
        verifier.verify(&old, token::now()).await,
        Ok(user.clone()),
        "the old key's token passes while both are listed"
    );

    assert!(harness.tokens.retire(&old_kid));
    assert_eq!(published().await, vec![new_kid]);
    let fresh = Verifier::new(&jwks_url, harness.http.clone());
    assert_eq!(
        fresh.verify(&old, token::now()).await,
        Err(TokenError::Forged),
        "a retired key's tokens fail"
    );
    assert_eq!(fresh.verify(&new, token::now()).await, Ok(user.clone()));

    // With auth gone, the keys already fetched still check tokens; one naming another key
    // cannot be checked, which is not the same as forged.
    let Harness { auth, registry, .. } = harness;
    auth.stop().await.expect("auth stops");
    assert_eq!(
        fresh.verify(&new, token::now()).await,
        Ok(user),
        "cached keys"
    );
    let stranger = Issuer::random(Duration::from_secs(60))
        .expect("key")
        .issue("u", token::now())
        .expect("token")
        .0;
    assert!(
        matches!(
            fresh.verify(&stranger, token::now()).await,
            Err(TokenError::Unavailable(_))
        ),
        "an unknown key while auth is away"
    );
    registry.stop().await.expect("registry stops");
}

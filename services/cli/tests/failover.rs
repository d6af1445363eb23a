//! Scale-out and fail-over with separate processes: two instances each of booking, flight,
//! hotel and payment (each on its own store) share their service's tasks. While bookings flow,
//! one instance of each is killed with SIGKILL and never restarted, and the survivors must
//! take its tasks over (from the warm copies `--standby-replicas 1` keeps) before anything else
//! happens; then a third instance of each joins, and
//! one instance is restarted on an empty store. Every saga ends, every booking on ample
//! inventory by a funded user confirms (so none timed out in a fail-over), nothing is oversold
//! and money charged equals confirmed totals. Runs on `tripstream broker` and, as the second
//! tier, on Tansu, whose coordinator (0.6.0) leaves a killed member's tasks unowned until a
//! survivor's watchdog rejoins the group (`streams/src/processor/watchdog.rs`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use events::topics;
use serde_json::json;
use streams::codec::Codec;
use streams::kafka::producer::Producer;
use streams::store::Store;

mod support;
use support::Process;
use support::cluster::{Broker, Cluster, free_port, tripstream};

/// The services that run as several instances.
const SCALED: [&str; 4] = ["booking", "flight", "hotel", "payment"];

/// One scenario at a time: each runs a broker, a registry and a dozen services on two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_killed_joining_and_emptied_mid_load_lose_nothing() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = Broker::embedded(dir.path());
    fail_over(dir, broker).await;
}

/// The same on a real broker process (Tansu, storing in SQLite), where the survivors take the
/// killed instances' tasks over through their watchdogs only. Runs when `TRIPSTREAM_TANSU`
/// names a Tansu binary (`scripts/test` installs one and sets it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_real_broker_process_instances_joining_and_killed_mid_load_lose_nothing() {
    let Some(binary) = std::env::var_os("TRIPSTREAM_TANSU") else {
        eprintln!("skipped: TRIPSTREAM_TANSU names no Tansu binary (scripts/test sets it)");
        return;
    };
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = Broker::tansu(std::path::Path::new(&binary), dir.path());
    let provisioned = tripstream()
        .args(["topics", "apply", "--brokers", &broker.bootstrap])
        .output()
        .expect("topics apply runs");
    assert!(
        provisioned.status.success(),
        "{}",
        String::from_utf8_lossy(&provisioned.stderr)
    );
    fail_over(dir, broker).await;
}

/// The flags of the instances that survive the kill.
const STANDBY: &[&str] = &["--standby-replicas", "1"];

/// What one booking asks, and what it must end as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Ample seats and rooms, a funded user: must confirm.
    Ample,
    /// A flight with few seats: confirms while seats last.
    Scarce,
    /// A user who cannot pay: must be cancelled.
    Unfunded,
}

async fn fail_over(dir: tempfile::TempDir, broker: Broker) {
    let bootstrap = broker.bootstrap.clone();
    let (_registry, registry_url) = support::start_registry(tripstream(), &bootstrap);
    let cluster = Cluster {
        dir,
        bootstrap,
        registry: registry_url,
        auth_port: free_port(),
        gateway_port: free_port(),
    };
    let mut running: HashMap<String, Process> = HashMap::new();
    for name in ["auth", "gateway"] {
        running.insert(name.to_owned(), cluster.service(name));
    }
    for name in SCALED {
        running.insert(
            format!("{name}-1"),
            cluster.instance(name, &format!("{name}-1")),
        );
        // The survivors keep warm copies of the tasks they do not own: they take the killed
        // instances' tasks over from those.
        running.insert(
            format!("{name}-2"),
            cluster.instance_with(name, &format!("{name}-2"), STANDBY),
        );
    }

    let codec = Codec::new(streams::registry::Client::new(&cluster.registry).expect("client"));
    let producer = Producer::new(&cluster.bootstrap, codec, &[]).expect("producer");
    const SCARCE_SEATS: i32 = 3;
    support::cluster::seed_catalog(&producer, &[("LH1", 1_000), ("LH9", SCARCE_SEATS)]).await;

    let http = reqwest::Client::new();
    let gateway = cluster.gateway();
    // Two funded users and one with too little for any trip (a trip costs 260 EUR).
    let tokens = support::cluster::funded_users(
        &http,
        &gateway,
        &producer,
        "failover.test",
        &[1_000_000, 1_000_000, 150],
    )
    .await;
    support::cluster::wait_for_flights(&http, &gateway, &tokens[0], 2).await;

    let trip = |flight: &str| {
        json!({
            "flight_id": flight, "seats": 1, "hotel_id": "H1",
            "check_in": events::date::format(system::day_from_today(7)),
            "check_out": events::date::format(system::day_from_today(9))
        })
    };
    // Bookings flow from here until every departure and arrival below is over.
    let flowing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let placing = {
        let (http, gateway, tokens) = (http.clone(), gateway.clone(), tokens.clone());
        let flowing = flowing.clone();
        tokio::spawn(async move {
            let mut placed = Vec::new();
            let mut i = 0;
            while flowing.load(std::sync::atomic::Ordering::SeqCst) && i < 400 {
                let kind = match i % 6 {
                    5 => Kind::Scarce,
                    4 => Kind::Unfunded,
                    _ => Kind::Ample,
                };
                let (flight, token) = match kind {
                    Kind::Ample => ("LH1", &tokens[i % 2]),
                    Kind::Scarce => ("LH9", &tokens[i % 2]),
                    Kind::Unfunded => ("LH1", &tokens[2]),
                };
                let key = format!("failover-{i}");
                let id = support::cluster::place(&http, &gateway, token, &trip(flight), &key).await;
                placed.push((id, token.clone(), kind));
                tokio::time::sleep(Duration::from_millis(200)).await;
                i += 1;
            }
            placed
        })
    };

    let join = |running: &mut HashMap<String, Process>| {
        for name in SCALED {
            let instance = format!("{name}-3");
            running.insert(instance.clone(), cluster.instance(name, &instance));
        }
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Mid-load: one instance of each dies for good...
    for name in SCALED {
        let mut process = running.remove(&format!("{name}-1")).expect("running");
        process.0.kill().expect("SIGKILL");
        let _ = process.0.wait();
    }
    // ...and the survivors take its tasks over on their own: bookings placed now, spread over
    // every task, confirm before any instance joins (a join would rebalance the groups
    // anyway; on Tansu only the survivors' watchdogs move the dead instance's tasks).
    let mut probes = Vec::new();
    for i in 0..12 {
        let token = &tokens[i % 2];
        let key = format!("failover-probe-{i}");
        let id = support::cluster::place(&http, &gateway, token, &trip("LH1"), &key).await;
        probes.push((id, token.clone(), Kind::Ample));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for (id, token, _) in &probes {
        let view = support::cluster::ended(&http, &gateway, token, id, deadline).await;
        assert_eq!(
            view["status"], "CONFIRMED",
            "after the kill, before any join: {view}"
        );
    }
    // ...a third of each joins...
    join(&mut running);
    // ...and one comes back on an empty store.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut emptied = running.remove("payment-2").expect("running");
    emptied.0.kill().expect("SIGKILL");
    let _ = emptied.0.wait();
    std::fs::remove_dir_all(cluster.dir.path().join("payment-2")).expect("emptied");
    running.insert(
        "payment-2".to_owned(),
        cluster.instance_with("payment", "payment-2", STANDBY),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    flowing.store(false, std::sync::atomic::Ordering::SeqCst);
    let mut placed = placing.await.expect("placing");
    placed.extend(probes);

    // Every booking ends, as seen through the gateway.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut ended = Vec::new();
    for (id, token, kind) in &placed {
        let view = support::cluster::ended(&http, &gateway, token, id, deadline).await;
        ended.push((*kind, view));
    }
    for (kind, view) in &ended {
        match kind {
            Kind::Ample => assert_eq!(view["status"], "CONFIRMED", "{view}"),
            Kind::Unfunded => assert_eq!(view["reason"], "PAYMENT_DECLINED", "{view}"),
            Kind::Scarce => assert!(
                view["status"] == "CONFIRMED" || view["reason"] == "SEATS_UNAVAILABLE",
                "{view}"
            ),
        }
    }
    let scarce_confirmed = ended
        .iter()
        .filter(|(kind, view)| *kind == Kind::Scarce && view["status"] == "CONFIRMED")
        .count();
    assert!(
        scarce_confirmed <= SCARCE_SEATS as usize,
        "{scarce_confirmed} confirmed on {SCARCE_SEATS} seats"
    );

    // The whole state, read back from the log: every task of each service restored from its
    // changelog into an empty store (a store is disposable), its global tables replayed.
    for (_, process) in running.drain() {
        process.stop();
    }
    let codec = Codec::new(streams::registry::Client::new(&cluster.registry).expect("client"));
    let bootstrap = cluster.bootstrap.as_str();
    let open = |name: &str| Store::open(&cluster.dir.path().join(name)).expect("store");
    let stores = system::Stores {
        booking: rebuilt(
            bootstrap,
            &codec,
            booking::GROUP,
            booking::TOPICS,
            &[],
            &booking::Sagas,
        )
        .await,
        flight: rebuilt(
            bootstrap,
            &codec,
            flight::GROUP,
            flight::TOPICS,
            flight::GLOBALS,
            &flight::Flights,
        )
        .await,
        hotel: rebuilt(
            bootstrap,
            &codec,
            hotel::GROUP,
            hotel::TOPICS,
            hotel::GLOBALS,
            &hotel::Hotels,
        )
        .await,
        payment: rebuilt(
            bootstrap,
            &codec,
            payment::GROUP,
            payment::TOPICS,
            payment::GLOBALS,
            &payment::Payments,
        )
        .await,
        gateway: open("gateway"),
        auth: open("auth"),
    };
    let report = system::consistency(&stores).expect("consistency");
    assert_eq!(report.sagas, placed.len(), "every booking has one saga");
    assert!(report.holds(), "{report:?}");
    let charged = payment::charges(&stores.payment)
        .expect("charges")
        .iter()
        .filter(|(_, c)| matches!(c, payment::Charge::Charged { .. }))
        .count();
    let confirmed = ended
        .iter()
        .filter(|(_, view)| view["status"] == "CONFIRMED")
        .count();
    assert_eq!(charged, confirmed, "one charge per confirmed booking");
    drop(broker);
}

/// The state of the service whose consumer group is `group`: every task restored from its
/// changelog (`<group>.changelog`) as an instance given the task restores it, and the global
/// tables replayed with `handler`.
async fn rebuilt<H: streams::processor::Handler>(
    bootstrap: &str,
    codec: &Codec,
    group: &str,
    tasks: &[&str],
    globals: &[&str],
    handler: &H,
) -> Store {
    let store = Store::temporary().expect("store");
    let changelog = streams::store::Changelog {
        topic: format!("{group}.changelog"),
        group: group.to_owned(),
        inputs: tasks.iter().map(|t| (*t).to_owned()).collect(),
    };
    let partitions = topics::spec(&changelog.topic)
        .expect("a changelog spec")
        .partitions;
    tokio::task::block_in_place(|| {
        streams::processor::restore_tasks(bootstrap, &changelog, &store, 0..partitions)
            .expect("restored");
    });
    if !globals.is_empty() {
        let inputs = streams::replay::Inputs {
            tasks: &[],
            globals,
        };
        streams::replay::replay(
            bootstrap,
            inputs,
            &streams::replay::Start::Beginning,
            &store,
            codec,
            handler,
            |_| {},
        )
        .await
        .expect("the global tables replayed");
    }
    store
}

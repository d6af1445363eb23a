//! A small service on the processor: counts bookings per route, then proves a replay rebuilds
//! the same state. Self-contained (embedded broker and registry in the process):
//!
//!     cargo run -p tripstream-streams --example route_counter

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use streams::codec::{Codec, Event};
use streams::kafka::broker::EmbeddedBroker;
use streams::kafka::topic::TopicSet;
use streams::kafka::{Metadata, Producer};
use streams::processor::{self, Context, Handler, HandlerError, Positions, Record, Settings};
use streams::replay::{self, Start};
use streams::store::Store;

/// The event, with its Avro schema.
#[derive(Serialize, Deserialize)]
struct Booked {
    booking_id: String,
    route: String,
}

impl Event for Booked {
    const SCHEMA: &'static str = r#"{"type":"record","name":"Booked","namespace":"example",
        "fields":[{"name":"booking_id","type":"string"},{"name":"route","type":"string"}]}"#;
    fn key(&self) -> String {
        self.booking_id.clone()
    }
}

/// The service's logic: one record in, state changes out (applied atomically with the offset).
struct RouteCounter;

impl Handler for RouteCounter {
    async fn handle(&self, ctx: &mut Context<'_>, record: &Record<'_>) -> Result<(), HandlerError> {
        let booked: Booked = ctx.decode(record).await?;
        let key = format!("route/{}", booked.route);
        let count = ctx
            .get(key.as_bytes())?
            .map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap_or_default()));
        ctx.put(key, (count + 1).to_be_bytes().to_vec());
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let broker = EmbeddedBroker::start(1)?;
    broker.create_topic(registry::SCHEMAS_TOPIC, 1, 1)?;
    broker.create_topic("bookings", 4, 1)?;
    let listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let registry =
        registry::start(registry::Settings::new(listen, broker.bootstrap_servers())).await?;
    let codec = Codec::new(streams::registry::Client::new(&registry.url())?);

    let producer = Producer::new(broker.bootstrap_servers(), codec.clone(), &[])?;
    for i in 0..1000 {
        let booked = Booked {
            booking_id: format!("b{i}"),
            route: ["LIS-OPO", "LIS-FAO"][i % 2].into(),
        };
        producer
            .send("bookings", &booked, &Metadata::new(&booked.booking_id))
            .await?;
    }

    let store = Store::temporary()?;
    // The bookings topic as `topics/` declares it, dead-letter topic included.
    let spec = TopicSet::load_file(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../topics/bookings.toml"
    )))?;
    let settings = Settings::new(broker.bootstrap_servers(), "route-counter", &[&spec]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let positions = Positions::default();
    let service = tokio::spawn(processor::run(
        settings,
        store.clone(),
        codec.clone(),
        RouteCounter,
        positions.clone(),
        async {
            let _ = stopped.await;
        },
    ));
    while positions.snapshot().values().map(|p| p.next).sum::<i64>() < 1000 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    service.await??;
    for (route, count) in store.scan(b"route/")? {
        println!(
            "{} {}",
            String::from_utf8_lossy(&route),
            u64::from_be_bytes(count.try_into().unwrap_or_default())
        );
    }

    let rebuilt = Store::temporary()?;
    let summary = replay::replay(
        broker.bootstrap_servers(),
        replay::Inputs::tasks(&["bookings"]),
        &Start::Beginning,
        &rebuilt,
        &codec,
        &RouteCounter,
        |_| {},
    )
    .await?;
    println!(
        "live digest {}, replayed digest {}",
        store.digest()?,
        summary.digest
    );
    registry.stop().await?;
    Ok(())
}

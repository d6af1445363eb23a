//! The embedded broker: librdkafka's in-process mock cluster, speaking the real Kafka protocol.
//!
//! It serves the zero-setup demo and the plain test tier. Limits designed around: no admin API
//! (topics are created through the mock itself, see [`EmbeddedBroker::create_topic`]), no
//! compaction, no transactions, about 5 MiB retained per partition, nothing persisted, and
//! random ports (hence [`EmbeddedBroker::bootstrap_servers`]).

// The one place in the workspace that calls librdkafka's C API directly; see `start`.
#![allow(unsafe_code)]

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, DefaultProducerContext, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::error::{Error, Result};

/// A running mock cluster. Dropping it stops every broker.
pub struct EmbeddedBroker {
    /// The client that owns the mock cluster: librdkafka creates the cluster inside the client
    /// configured with `test.mock.num.brokers` and destroys it with that client.
    host: BaseProducer<DefaultProducerContext>,
    bootstrap: String,
    brokers: u16,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("bootstrap", &self.bootstrap)
            .field("brokers", &self.brokers)
            .finish()
    }
}

impl EmbeddedBroker {
    /// Starts a mock cluster of `brokers` brokers on 127.0.0.1, each on a random port.
    ///
    /// Consumer groups join at once: the mock's default initial rebalance delay of 3 s (there
    /// to let a group's members gather) is set to zero, since tests and the demo start their
    /// members together anyway.
    ///
    /// # Errors
    ///
    /// [`Error::Embedded`] when `brokers` is zero or librdkafka cannot create the cluster.
    pub fn start(brokers: u16) -> Result<Self> {
        if brokers == 0 {
            return Err(Error::Embedded(
                "a cluster needs at least one broker".into(),
            ));
        }
        let host: BaseProducer<DefaultProducerContext> = ClientConfig::new()
            .set("test.mock.num.brokers", brokers.to_string())
            // The host client never sends; keep it from logging its own connection attempts.
            .set("log_level", "3")
            .create()
            .map_err(|e| Error::kafka("starting the embedded broker", e))?;
        let native = host.client().native_ptr();
        // SAFETY: `native` is a live rd_kafka_t owned by `host`, which outlives this call.
        // rd_kafka_handle_mock_cluster returns the cluster that client created (or null), and
        // rd_kafka_mock_group_initial_rebalance_delay_ms only stores an integer in it under the
        // cluster's own lock; the pointer is not kept.
        unsafe {
            let cluster = rdkafka_sys::rd_kafka_handle_mock_cluster(native);
            if cluster.is_null() {
                return Err(Error::Embedded(
                    "librdkafka did not create a mock cluster".into(),
                ));
            }
            rdkafka_sys::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0);
        }
        let bootstrap = host
            .client()
            .mock_cluster()
            .ok_or_else(|| Error::Embedded("librdkafka did not create a mock cluster".into()))?
            .bootstrap_servers();
        tracing::info!(%bootstrap, brokers, "Embedded broker started");
        Ok(EmbeddedBroker {
            host,
            bootstrap,
            brokers,
        })
    }

    /// The `bootstrap.servers` list for clients of this cluster.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// How many brokers the cluster has.
    pub fn broker_count(&self) -> u16 {
        self.brokers
    }

    /// The mock cluster, for fault injection in tests (brokers down, request errors, latency).
    ///
    /// # Panics
    ///
    /// Never: `start` has checked that the host client owns a mock cluster.
    pub fn mock(&self) -> MockCluster<'_, DefaultProducerContext> {
        #[allow(clippy::expect_used)]
        self.host
            .client()
            .mock_cluster()
            .expect("the host client was created with test.mock.num.brokers")
    }

    /// Creates a topic; an existing topic of that name is left as it is.
    ///
    /// The replication factor is capped at the number of brokers, as a real cluster would
    /// refuse more replicas than brokers.
    ///
    /// # Errors
    ///
    /// [`Error::Embedded`] when the mock refuses the topic (for example zero partitions).
    pub fn create_topic(&self, name: &str, partitions: i32, replication: i32) -> Result<()> {
        let replication = replication.clamp(1, i32::from(self.brokers));
        match self.mock().create_topic(name, partitions, replication) {
            Ok(()) => Ok(()),
            Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::TopicAlreadyExists) => {
                Ok(())
            }
            Err(e) => Err(Error::Embedded(format!("cannot create topic {name}: {e}"))),
        }
    }

    /// Partition count of each topic the cluster knows, by name.
    ///
    /// # Errors
    ///
    /// [`Error::Kafka`] when the metadata request fails.
    pub fn topics(&self) -> Result<Vec<(String, usize)>> {
        let metadata = self
            .host
            .client()
            .fetch_metadata(None, Duration::from_secs(10))
            .map_err(|e| Error::kafka("reading metadata of the embedded broker", e))?;
        Ok(metadata
            .topics()
            .iter()
            .map(|t| (t.name().to_owned(), t.partitions().len()))
            .collect())
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        // Nothing is sent through the host client, but flush so librdkafka shuts down quietly.
        let _ = self.host.flush(Duration::from_millis(100));
        tracing::debug!(bootstrap = %self.bootstrap, "Embedded broker stopped");
    }
}

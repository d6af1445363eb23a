//! The streaming runtime every tripstream service is built on.
//!
//! One module per concern: [`avro`] (schemas, compatibility, resolution, compiled datums),
//! [`kafka`] (the embedded broker, topic specs and provisioning, the producer), [`registry`]
//! (the registry client), [`codec`] (the Confluent wire format), [`contract`] (topics and
//! schemas together, and their registry subjects), [`store`] (a service's sled state),
//! [`outbox`] (events waiting to be published, and the relay that publishes them),
//! [`processor`] (the consumer-group runner), [`replay`] (rebuilding a store from the log),
//! [`service`] (what every service process shares), [`telemetry`] and [`error`].

pub mod avro;
pub mod codec;
pub mod contract;
pub mod error;
pub mod kafka;
pub mod outbox;
mod parts;
pub mod processor;
pub mod registry;
pub mod replay;
pub mod service;
pub mod store;
pub mod sync;
pub mod telemetry;

pub use error::{Error, Result};

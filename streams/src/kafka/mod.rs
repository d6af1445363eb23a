//! Kafka through librdkafka: embedded broker, topic specs, producer and record headers.
//!
//! The embedded broker ([`broker`]), topic specs and their provisioning ([`topic`]), and the
//! producer ([`producer`]) with the headers every record carries ([`headers`]).

pub mod broker;
pub mod headers;
pub mod producer;
pub mod topic;

pub use headers::Metadata;
pub use producer::{Delivery, OutgoingRecord, Producer};

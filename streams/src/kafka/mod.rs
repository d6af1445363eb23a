//! Kafka through librdkafka: the embedded broker, topic specs and their provisioning, and the
//! producer with the headers every record carries.

pub mod broker;
pub mod headers;
pub mod producer;
pub mod topic;

pub use headers::Metadata;
pub use producer::{Delivery, OutgoingRecord, Producer};

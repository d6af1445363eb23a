//! The streaming runtime every tripstream service is built on.
//!
//! One module per concern: [`broker`] (the embedded Kafka-protocol broker), [`topic`] (topic
//! specs and provisioning), [`schema`] (Avro schemas with located errors), [`compat`]
//! (compatibility levels), [`contract`] (topics and schemas together, and their registry
//! subjects), [`registry`] (the registry client), [`codec`] (over [`avro`] and [`resolve`]),
//! [`producer`], [`processor`], [`store`], [`replay`], [`service`] (what every service process
//! shares) and [`telemetry`].

pub mod avro;
pub mod broker;
pub mod codec;
pub mod compat;
pub mod contract;
pub mod error;
pub mod processor;
pub mod producer;
pub mod registry;
pub mod replay;
pub mod resolve;
pub mod schema;
pub mod service;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod topic;

pub use error::{Error, Result};

//! One module per `tripstream` subcommand.

pub mod bench;
pub mod broker;
pub mod consume;
pub mod demo;
pub mod failover_bench;
pub mod produce;
pub mod registry;
pub mod replay;
pub mod run;
pub mod saga_bench;
pub mod schemas;
pub mod topics;

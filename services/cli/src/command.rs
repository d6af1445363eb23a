//! One module per `tripstream` subcommand.

pub mod broker;
pub mod registry;
pub mod schemas;
pub mod topics;

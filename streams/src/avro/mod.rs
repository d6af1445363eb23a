//! Avro: schemas, compatibility levels, resolution, and the compiled readers and writers.
//!
//! Schemas with located errors ([`schema`]), the seven compatibility levels ([`compat`]),
//! writer-to-reader resolution of old versions ([`resolve`]), and the schema-compiled readers
//! and writers the codec runs on ([`program`]).

pub mod compat;
mod de;
mod input;
pub mod program;
pub mod resolve;
pub mod schema;
mod ser;

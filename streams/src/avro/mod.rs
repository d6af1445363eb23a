//! Avro: schemas with located errors, the seven compatibility levels, writer-to-reader
//! resolution, and the schema-compiled readers and writers the codec runs on.

pub mod compat;
mod de;
mod input;
pub mod program;
pub mod resolve;
pub mod schema;
mod ser;

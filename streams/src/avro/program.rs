//! Avro binary datums: a schema compiled once into the nodes the codec's hot paths run on.
//!
//! The reader lives in `input`, the serde deserializer ([`Program::decode`]) in `de` and the
//! serializer ([`Program::encode`]) in `ser`; what they share, the compiled nodes, lives here.

use std::sync::atomic::{AtomicUsize, Ordering};

use serde_avro_fast::schema::{LogicalType, RegularType, SchemaMut};

pub use crate::avro::input::DatumError;
pub use crate::avro::ser::Unsupported;

/// A schema node, compiled; children are indexes into [`Program::nodes`], the same indexes as
/// in the `serde_avro_fast` schema it was compiled from.
#[derive(Debug)]
pub(super) enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Array(usize),
    Map(usize),
    /// A union of `null` and one other type: the branch index of `null`, and the other type.
    Nullable {
        null: i64,
        some: usize,
    },
    Record(Record),
    Enum(Box<[String]>),
    Fixed(usize),
    /// A decimal over `bytes` (`size: None`) or a fixed of `size` bytes.
    Decimal {
        scale: u32,
        size: Option<usize>,
    },
}

#[derive(Debug)]
pub(super) struct Record {
    pub(super) fields: Box<[(String, usize)]>,
    /// The address of a Rust type's field list known to be this record's fields in order, and
    /// of one known not to be: the check costs a comparison of every name, the memo one load.
    pub(super) positional: AtomicUsize,
    pub(super) by_name: AtomicUsize,
}

impl Record {
    #[inline]
    pub(super) fn is_positional(&self, fields: &'static [&'static str]) -> bool {
        if fields.len() != self.fields.len() {
            return false;
        }
        // Two static lists at one address with the same length are the same list.
        let address = fields.as_ptr() as usize;
        if self.positional.load(Ordering::Relaxed) == address {
            return true;
        }
        if self.by_name.load(Ordering::Relaxed) == address {
            return false;
        }
        let same = self
            .fields
            .iter()
            .zip(fields)
            .all(|((name, _), wanted)| name == wanted);
        let memo = if same {
            &self.positional
        } else {
            &self.by_name
        };
        memo.store(address, Ordering::Relaxed);
        same
    }
}

/// A schema compiled for decoding into serde types.
#[derive(Debug)]
pub struct Program {
    pub(super) nodes: Vec<Node>,
}

impl Program {
    /// Compiles a schema, or `None` when it uses what only `serde_avro_fast` decodes: a union
    /// other than `null` with one type, the duration or big-decimal logical type, or a logical
    /// type over a type it does not apply to.
    pub fn compile(schema: &SchemaMut) -> Option<Program> {
        let nodes = schema
            .nodes()
            .iter()
            .map(|node| {
                let base = match &node.type_ {
                    RegularType::Null => Node::Null,
                    RegularType::Boolean => Node::Boolean,
                    RegularType::Int => Node::Int,
                    RegularType::Long => Node::Long,
                    RegularType::Float => Node::Float,
                    RegularType::Double => Node::Double,
                    RegularType::Bytes => Node::Bytes,
                    RegularType::String => Node::String,
                    RegularType::Array(array) => Node::Array(array.items.idx()),
                    RegularType::Map(map) => Node::Map(map.values.idx()),
                    RegularType::Union(union) => match union.variants.as_slice() {
                        [a, b] => {
                            let is_null = |key: &serde_avro_fast::schema::SchemaKey| {
                                matches!(
                                    schema.get(*key).map(|n| &n.type_),
                                    Some(RegularType::Null)
                                )
                            };
                            match (is_null(a), is_null(b)) {
                                (true, false) => Node::Nullable {
                                    null: 0,
                                    some: b.idx(),
                                },
                                (false, true) => Node::Nullable {
                                    null: 1,
                                    some: a.idx(),
                                },
                                _ => return None,
                            }
                        }
                        _ => return None,
                    },
                    RegularType::Record(record) => Node::Record(Record {
                        fields: record
                            .fields
                            .iter()
                            .map(|field| (field.name.clone(), field.type_.idx()))
                            .collect(),
                        positional: AtomicUsize::new(0),
                        by_name: AtomicUsize::new(0),
                    }),
                    RegularType::Enum(symbols) => Node::Enum(symbols.symbols.clone().into()),
                    RegularType::Fixed(fixed) => Node::Fixed(fixed.size),
                };
                Some(match (&node.logical_type, base) {
                    (None | Some(LogicalType::Unknown(_)), base) => base,
                    (Some(LogicalType::Decimal(decimal)), Node::Bytes) => Node::Decimal {
                        scale: decimal.scale,
                        size: None,
                    },
                    (Some(LogicalType::Decimal(decimal)), Node::Fixed(size)) if size <= 16 => {
                        Node::Decimal {
                            scale: decimal.scale,
                            size: Some(size),
                        }
                    }
                    (Some(LogicalType::Uuid), base @ Node::String)
                    | (Some(LogicalType::Date | LogicalType::TimeMillis), base @ Node::Int)
                    | (
                        Some(
                            LogicalType::TimeMicros
                            | LogicalType::TimestampMillis
                            | LogicalType::TimestampMicros,
                        ),
                        base @ Node::Long,
                    ) => base,
                    _ => return None,
                })
            })
            .collect::<Option<Vec<Node>>>()?;
        (!nodes.is_empty()).then_some(Program { nodes })
    }
}

/// The schema, Rust types and values the tests of the deserializer and serializer share.
#[cfg(test)]
pub(super) mod fixtures {
    use std::collections::BTreeMap;

    use rust_decimal::Decimal;
    use serde::de::{self, Visitor};
    use serde::{Deserialize, Serialize};

    use super::*;

    pub(in crate::avro) const SCHEMA: &str = r#"{"type": "record", "name": "t.Everything", "fields": [
        {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "flag", "type": "boolean"},
        {"name": "small", "type": "int"},
        {"name": "big", "type": "long"},
        {"name": "ratio", "type": "float"},
        {"name": "precise", "type": "double"},
        {"name": "raw", "type": "bytes"},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal",
            "precision": 12, "scale": 2}},
        {"name": "fixed_price", "type": {"type": "fixed", "name": "Amount", "size": 8,
            "logicalType": "decimal", "precision": 12, "scale": 3}},
        {"name": "digest", "type": {"type": "fixed", "name": "Digest", "size": 4}},
        {"name": "status", "type": {"type": "enum", "name": "Status",
            "symbols": ["OPEN", "CLOSED"]}},
        {"name": "note", "type": ["null", "string"]},
        {"name": "later", "type": ["string", "null"]},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "counts", "type": {"type": "map", "values": "long"}},
        {"name": "child", "type": ["null", {"type": "record", "name": "Child", "fields": [
            {"name": "name", "type": "string"},
            {"name": "child", "type": ["null", "Child"]}]}]}
    ]}"#;

    /// Avro bytes, to and from serde's byte calls.
    #[derive(Debug, Clone, PartialEq)]
    pub(in crate::avro) struct Raw(Vec<u8>);

    impl Serialize for Raw {
        fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }

    impl<'de> Deserialize<'de> for Raw {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Raw, D::Error> {
            struct Bytes;
            impl Visitor<'_> for Bytes {
                type Value = Raw;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E>(self, v: &[u8]) -> std::result::Result<Raw, E> {
                    Ok(Raw(v.to_vec()))
                }
            }
            d.deserialize_bytes(Bytes)
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
    pub(in crate::avro) enum Status {
        #[serde(rename = "OPEN")]
        Open,
        #[serde(rename = "CLOSED")]
        Closed,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub(in crate::avro) struct Child {
        name: String,
        child: Option<Box<Child>>,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub(in crate::avro) struct Everything {
        pub(in crate::avro) id: String,
        pub(in crate::avro) flag: bool,
        pub(in crate::avro) small: i32,
        pub(in crate::avro) big: i64,
        pub(in crate::avro) ratio: f32,
        pub(in crate::avro) precise: f64,
        pub(in crate::avro) raw: Raw,
        pub(in crate::avro) day: i32,
        pub(in crate::avro) at: i64,
        pub(in crate::avro) price: Decimal,
        pub(in crate::avro) fixed_price: Decimal,
        pub(in crate::avro) digest: Raw,
        pub(in crate::avro) status: Status,
        pub(in crate::avro) note: Option<String>,
        pub(in crate::avro) later: Option<String>,
        pub(in crate::avro) tags: Vec<String>,
        pub(in crate::avro) counts: BTreeMap<String, i64>,
        pub(in crate::avro) child: Option<Child>,
    }

    /// The same fields in another order: decoded by name.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub(in crate::avro) struct Shuffled {
        pub(in crate::avro) child: Option<Child>,
        counts: BTreeMap<String, i64>,
        pub(in crate::avro) price: Decimal,
        fixed_price: Decimal,
        status: Status,
        later: Option<String>,
        note: Option<String>,
        id: String,
        tags: Vec<String>,
        big: i64,
        small: i32,
        flag: bool,
        ratio: f32,
        precise: f64,
        raw: Raw,
        day: i32,
        at: i64,
        digest: Raw,
    }

    pub(in crate::avro) fn everything() -> Everything {
        Everything {
            id: "0b6f2f7e-4a57-4c1e-9d59-1f6e7b2a9c10".into(),
            flag: true,
            small: -42,
            big: i64::MIN + 1,
            ratio: 1.5,
            precise: -2.25e-10,
            raw: Raw(vec![0, 255, 7]),
            day: 20_423,
            at: 1_764_000_000_000,
            price: Decimal::new(-123_456, 2),
            fixed_price: Decimal::new(99_999_999, 3),
            digest: Raw(vec![1, 2, 3, 4]),
            status: Status::Closed,
            note: Some("window seat".into()),
            later: None,
            tags: vec!["a".into(), String::new(), "ünïcode".into()],
            counts: [("x".to_owned(), 1), ("y".to_owned(), -300_000)].into(),
            child: Some(Child {
                name: "outer".into(),
                child: Some(Box::new(Child {
                    name: "inner".into(),
                    child: None,
                })),
            }),
        }
    }

    pub(in crate::avro) fn compiled(text: &str) -> (Program, serde_avro_fast::Schema) {
        let safe: SchemaMut = text.parse().expect("schema");
        let program = Program::compile(&safe).expect("compiles");
        (program, safe.freeze().expect("schema"))
    }

    pub(in crate::avro) fn encode<T: Serialize>(
        value: &T,
        schema: &serde_avro_fast::Schema,
    ) -> Vec<u8> {
        let mut config = serde_avro_fast::ser::SerializerConfig::new(schema);
        serde_avro_fast::to_datum_vec(value, &mut config).expect("encodes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_beyond_nullable_unions_are_left_to_serde_avro_fast() {
        let compiles = |text: &str| {
            let safe: SchemaMut = text.parse().expect("schema");
            Program::compile(&safe).is_some()
        };
        assert!(compiles(r#"["null", "string"]"#));
        assert!(compiles(r#"["string", "null"]"#));
        assert!(!compiles(r#"["int", "string"]"#));
        assert!(!compiles(r#"["null", "int", "string"]"#));
        assert!(!compiles(
            r#"{"type": "fixed", "name": "D", "size": 12, "logicalType": "duration"}"#
        ));
    }
}

//! The serde serializer a compiled [`Program`] encodes Avro binary datums with.
//!
//! The serializer writes the bytes `serde_avro_fast` writes, without its per-field dispatch:
//! records whose fields come in schema order (as derived code gives them), nullable unions,
//! enums, decimals, arrays and maps. Any other value is handed back ([`Unsupported`]) and the
//! codec encodes it with `serde_avro_fast`, which also reports what does not fit the schema.

use serde::ser;

use crate::avro::program::{Node, Program};

/// Why the compiled encoder handed a value back: it is not one of the shapes the encoder writes
/// itself (or does not fit its schema), and `serde_avro_fast` encodes it instead, with the
/// error, if it is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("left to serde_avro_fast")]
pub struct Unsupported;

impl ser::Error for Unsupported {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Unsupported
    }
}

impl Program {
    /// Appends `value`'s datum to `out`. On `Err`, `out` may hold part of a datum: the caller
    /// cuts it off and encodes with `serde_avro_fast`. What it writes is what `serde_avro_fast`
    /// writes for the same value (a test holds the two to the same bytes); records must come
    /// with their fields in schema order, as derived code gives them.
    ///
    /// # Errors
    ///
    /// [`Unsupported`] for any value it does not write itself.
    pub fn encode<T: ser::Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> std::result::Result<(), Unsupported> {
        value.serialize(Writer {
            out,
            nodes: &self.nodes,
            node: 0,
        })
    }
}

/// Appends Avro's zig-zag varint.
#[inline]
pub(super) fn write_long(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Appends a length and the bytes.
#[inline]
pub(super) fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_long(out, bytes.len() as i64);
    out.extend_from_slice(bytes);
}

/// A decimal's unscaled value in two's complement, big-endian, as Avro stores it: in the fewest
/// bytes (at least one) for `bytes`, sign-extended to `size` for a fixed.
fn write_decimal(
    out: &mut Vec<u8>,
    text: &str,
    scale: u32,
    size: Option<usize>,
) -> std::result::Result<(), Unsupported> {
    let mut decimal: rust_decimal::Decimal = text.parse().map_err(|_| Unsupported)?;
    decimal.rescale(scale);
    if decimal.scale() != scale {
        return Err(Unsupported);
    }
    let be = decimal.mantissa().to_be_bytes();
    let sign = if be[0] & 0x80 == 0 { 0x00 } else { 0xff };
    // Leading bytes that only repeat the sign, keeping the one whose top bit still carries it.
    let mut redundant = be.iter().take_while(|&&b| b == sign).count();
    if redundant > 0 && be.get(redundant).is_none_or(|b| b & 0x80 != sign & 0x80) {
        redundant -= 1;
    }
    match size {
        None => write_bytes(out, &be[redundant..]),
        Some(size) => {
            let start = be.len().checked_sub(size).ok_or(Unsupported)?;
            if start > redundant || (size == 0 && !decimal.is_zero()) {
                return Err(Unsupported);
            }
            out.extend_from_slice(&be[start..]);
        }
    }
    Ok(())
}

/// One datum of one schema node, as a serde serializer that appends to a buffer.
struct Writer<'a> {
    out: &'a mut Vec<u8>,
    nodes: &'a [Node],
    node: usize,
}

impl<'a> Writer<'a> {
    #[inline]
    fn node(&self) -> &'a Node {
        self.nodes.get(self.node).unwrap_or(&Node::Null)
    }

    #[inline]
    fn at(&mut self, node: usize) -> Writer<'_> {
        Writer {
            out: self.out,
            nodes: self.nodes,
            node,
        }
    }

    #[inline]
    fn integer<N: TryInto<i32> + TryInto<i64>>(self, n: N) -> std::result::Result<(), Unsupported> {
        let n: i64 = match self.node() {
            Node::Int => i64::from(TryInto::<i32>::try_into(n).map_err(|_| Unsupported)?),
            Node::Long => n.try_into().map_err(|_| Unsupported)?,
            _ => return Err(Unsupported),
        };
        write_long(self.out, n);
        Ok(())
    }

    /// A symbol's index in an enum, or the text of a string.
    fn symbol(self, name: &str) -> std::result::Result<(), Unsupported> {
        match self.node() {
            Node::String => write_bytes(self.out, name.as_bytes()),
            Node::Enum(symbols) => {
                let index = symbols.iter().position(|s| s == name).ok_or(Unsupported)?;
                write_long(self.out, index as i64);
            }
            _ => return Err(Unsupported),
        }
        Ok(())
    }
}

type Refused = ser::Impossible<(), Unsupported>;

impl<'a> ser::Serializer for Writer<'a> {
    type Ok = ();
    type Error = Unsupported;
    type SerializeSeq = ItemWriter<'a>;
    type SerializeTuple = Refused;
    type SerializeTupleStruct = Refused;
    type SerializeTupleVariant = Refused;
    type SerializeMap = ItemWriter<'a>;
    type SerializeStruct = FieldWriter<'a>;
    type SerializeStructVariant = Refused;

    fn serialize_bool(self, v: bool) -> std::result::Result<(), Unsupported> {
        match self.node() {
            Node::Boolean => {
                self.out.push(u8::from(v));
                Ok(())
            }
            _ => Err(Unsupported),
        }
    }

    fn serialize_i8(self, v: i8) -> std::result::Result<(), Unsupported> {
        self.integer(v)
    }

    fn serialize_i16(self, v: i16) -> std::result::Result<(), Unsupported> {
        self.integer(v)
    }

    #[inline]
    fn serialize_i32(self, v: i32) -> std::result::Result<(), Unsupported> {
        self.integer(v)
    }

    #[inline]
    fn serialize_i64(self, v: i64) -> std::result::Result<(), Unsupported> {
        self.integer(v)
    }

    fn serialize_u8(self, v: u8) -> std::result::Result<(), Unsupported> {
        self.integer(v)
    }

    fn serialize_u16(self, v: u16) -> std::result::Result<(), Unsupported> {
        self.integer(v)
    }

    fn serialize_u32(self, v: u32) -> std::result::Result<(), Unsupported> {
        self.integer(v)
    }

    fn serialize_u64(self, v: u64) -> std::result::Result<(), Unsupported> {
        self.integer(v)
    }

    fn serialize_f32(self, v: f32) -> std::result::Result<(), Unsupported> {
        match self.node() {
            Node::Float => self.out.extend_from_slice(&v.to_le_bytes()),
            _ => return Err(Unsupported),
        }
        Ok(())
    }

    fn serialize_f64(self, v: f64) -> std::result::Result<(), Unsupported> {
        match self.node() {
            Node::Double => self.out.extend_from_slice(&v.to_le_bytes()),
            #[allow(clippy::cast_possible_truncation)] // as serde_avro_fast does
            Node::Float => self.out.extend_from_slice(&(v as f32).to_le_bytes()),
            _ => return Err(Unsupported),
        }
        Ok(())
    }

    fn serialize_char(self, _: char) -> std::result::Result<(), Unsupported> {
        Err(Unsupported)
    }

    #[inline]
    fn serialize_str(self, v: &str) -> std::result::Result<(), Unsupported> {
        match self.node() {
            Node::String | Node::Bytes => write_bytes(self.out, v.as_bytes()),
            Node::Enum(_) => return self.symbol(v),
            &Node::Decimal { scale, size } => return write_decimal(self.out, v, scale, size),
            _ => return Err(Unsupported),
        }
        Ok(())
    }

    fn serialize_bytes(self, v: &[u8]) -> std::result::Result<(), Unsupported> {
        match self.node() {
            Node::Bytes | Node::String => write_bytes(self.out, v),
            &Node::Fixed(size) if size == v.len() => self.out.extend_from_slice(v),
            _ => return Err(Unsupported),
        }
        Ok(())
    }

    fn serialize_none(self) -> std::result::Result<(), Unsupported> {
        self.serialize_unit()
    }

    fn serialize_some<T: ser::Serialize + ?Sized>(
        mut self,
        value: &T,
    ) -> std::result::Result<(), Unsupported> {
        match *self.node() {
            Node::Nullable { null, some } => {
                write_long(self.out, 1 - null);
                value.serialize(self.at(some))
            }
            // serde_avro_fast writes an option's value as the value itself outside unions.
            _ => value.serialize(self),
        }
    }

    fn serialize_unit(self) -> std::result::Result<(), Unsupported> {
        match *self.node() {
            Node::Null => Ok(()),
            Node::Nullable { null, .. } => {
                write_long(self.out, null);
                Ok(())
            }
            _ => Err(Unsupported),
        }
    }

    fn serialize_unit_struct(self, _: &'static str) -> std::result::Result<(), Unsupported> {
        Err(Unsupported)
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> std::result::Result<(), Unsupported> {
        self.symbol(variant)
    }

    fn serialize_newtype_struct<T: ser::Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> std::result::Result<(), Unsupported> {
        match self.node() {
            // serde_avro_fast picks a union's branch by the newtype's name.
            Node::Nullable { .. } => Err(Unsupported),
            _ => value.serialize(self),
        }
    }

    fn serialize_newtype_variant<T: ser::Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> std::result::Result<(), Unsupported> {
        Err(Unsupported)
    }

    fn serialize_seq(self, len: Option<usize>) -> std::result::Result<ItemWriter<'a>, Unsupported> {
        match *self.node() {
            Node::Array(item) => Ok(ItemWriter::new(self, item, len)),
            _ => Err(Unsupported),
        }
    }

    fn serialize_tuple(self, _: usize) -> std::result::Result<Refused, Unsupported> {
        Err(Unsupported)
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Refused, Unsupported> {
        Err(Unsupported)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Refused, Unsupported> {
        Err(Unsupported)
    }

    fn serialize_map(self, len: Option<usize>) -> std::result::Result<ItemWriter<'a>, Unsupported> {
        match *self.node() {
            Node::Map(value) => Ok(ItemWriter::new(self, value, len)),
            _ => Err(Unsupported),
        }
    }

    #[inline]
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<FieldWriter<'a>, Unsupported> {
        match self.node() {
            Node::Record(record) => Ok(FieldWriter {
                out: self.out,
                nodes: self.nodes,
                fields: &record.fields,
                next: 0,
            }),
            _ => Err(Unsupported),
        }
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> std::result::Result<Refused, Unsupported> {
        Err(Unsupported)
    }
}

/// An array's items or a map's entries, in blocks as `serde_avro_fast` writes them: one block
/// of the announced length, then blocks of one for any item beyond it.
struct ItemWriter<'a> {
    out: &'a mut Vec<u8>,
    nodes: &'a [Node],
    item: usize,
    /// Items left in the current block.
    left: usize,
}

impl<'a> ItemWriter<'a> {
    fn new(writer: Writer<'a>, item: usize, len: Option<usize>) -> Self {
        let left = len.unwrap_or(0);
        if left > 0 {
            write_long(writer.out, left as i64);
        }
        ItemWriter {
            out: writer.out,
            nodes: writer.nodes,
            item,
            left,
        }
    }

    fn next(&mut self) {
        match self.left.checked_sub(1) {
            Some(left) => self.left = left,
            None => write_long(self.out, 1),
        }
    }

    fn value(&mut self) -> Writer<'_> {
        Writer {
            out: self.out,
            nodes: self.nodes,
            node: self.item,
        }
    }

    fn finish(self) -> std::result::Result<(), Unsupported> {
        if self.left != 0 {
            return Err(Unsupported);
        }
        write_long(self.out, 0);
        Ok(())
    }
}

impl ser::SerializeSeq for ItemWriter<'_> {
    type Ok = ();
    type Error = Unsupported;

    fn serialize_element<T: ser::Serialize + ?Sized>(
        &mut self,
        value: &T,
    ) -> std::result::Result<(), Unsupported> {
        self.next();
        value.serialize(self.value())
    }

    fn end(self) -> std::result::Result<(), Unsupported> {
        self.finish()
    }
}

impl ser::SerializeMap for ItemWriter<'_> {
    type Ok = ();
    type Error = Unsupported;

    fn serialize_key<T: ser::Serialize + ?Sized>(
        &mut self,
        key: &T,
    ) -> std::result::Result<(), Unsupported> {
        self.next();
        // Map keys are strings: written as a string node would be.
        key.serialize(Writer {
            out: self.out,
            nodes: &[Node::String],
            node: 0,
        })
    }

    fn serialize_value<T: ser::Serialize + ?Sized>(
        &mut self,
        value: &T,
    ) -> std::result::Result<(), Unsupported> {
        value.serialize(self.value())
    }

    fn end(self) -> std::result::Result<(), Unsupported> {
        self.finish()
    }
}

/// A record's fields, which must come in schema order, each once.
struct FieldWriter<'a> {
    out: &'a mut Vec<u8>,
    nodes: &'a [Node],
    fields: &'a [(String, usize)],
    next: usize,
}

impl ser::SerializeStruct for FieldWriter<'_> {
    type Ok = ();
    type Error = Unsupported;

    #[inline]
    fn serialize_field<T: ser::Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> std::result::Result<(), Unsupported> {
        match self.fields.get(self.next) {
            Some((name, node)) if name == key => {
                self.next += 1;
                value.serialize(Writer {
                    out: self.out,
                    nodes: self.nodes,
                    node: *node,
                })
            }
            _ => Err(Unsupported),
        }
    }

    fn end(self) -> std::result::Result<(), Unsupported> {
        if self.next == self.fields.len() {
            Ok(())
        } else {
            Err(Unsupported)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rust_decimal::Decimal;
    use serde::Serialize;

    use super::*;
    use crate::avro::program::fixtures::{
        Everything, SCHEMA, Shuffled, compiled, encode, everything,
    };

    /// Ours, or `None` where the compiled encoder leaves the value to serde_avro_fast.
    fn encoded_by_program<T: Serialize>(program: &Program, value: &T) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        program.encode(value, &mut out).ok().map(|()| out)
    }

    #[test]
    fn every_type_encodes_to_the_bytes_serde_avro_fast_writes() {
        let (program, fast) = compiled(SCHEMA);
        let mut values = vec![everything()];
        // Decimals around every byte boundary and sign, rounded to the scale, in both layouts.
        for (price, fixed) in [
            (Decimal::ZERO, Decimal::ZERO),
            (Decimal::new(1, 2), Decimal::new(-1, 3)),
            (Decimal::new(127, 2), Decimal::new(128, 3)),
            (Decimal::new(-128, 2), Decimal::new(-129, 3)),
            (Decimal::new(32_767, 2), Decimal::new(-32_768, 3)),
            (Decimal::new(123_456_789, 5), Decimal::new(-5, 4)),
            (
                Decimal::MAX / Decimal::new(1_000, 0),
                Decimal::new(-999_999_999_999, 3),
            ),
        ] {
            values.push(Everything {
                price,
                fixed_price: fixed,
                ..everything()
            });
        }
        // Nulls the other way round, empty collections, no child.
        values.push(Everything {
            note: None,
            later: Some("soon".into()),
            tags: Vec::new(),
            counts: BTreeMap::new(),
            child: None,
            ..everything()
        });
        for value in &values {
            assert_eq!(
                encoded_by_program(&program, value).as_deref(),
                Some(encode(value, &fast).as_slice()),
                "{value:?}"
            );
        }
        // What is written decodes back.
        let bytes = encoded_by_program(&program, &everything()).expect("encodes");
        assert_eq!(
            program.decode::<Everything>(&bytes).ok(),
            Some(everything())
        );
    }

    #[test]
    fn sequences_of_unknown_length_are_written_in_blocks_as_serde_avro_fast_writes_them() {
        /// A sequence that does not say its length up front.
        struct Unsized(Vec<i64>);
        impl Serialize for Unsized {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().filter(|_| true))
            }
        }
        let (program, fast) = compiled(r#"{"type": "array", "items": "long"}"#);
        for items in [vec![], vec![7], vec![1, -2, 300_000]] {
            let value = Unsized(items);
            assert_eq!(
                encoded_by_program(&program, &value),
                Some(encode(&value, &fast))
            );
        }
    }

    #[test]
    fn values_the_encoder_does_not_write_are_left_to_serde_avro_fast() {
        let (program, fast) = compiled(SCHEMA);
        // Fields out of schema order: serde_avro_fast reorders them.
        let shuffled: Shuffled = program
            .decode(&encode(&everything(), &fast))
            .expect("decodes");
        assert_eq!(encoded_by_program(&program, &shuffled), None);
        assert_eq!(encode(&shuffled, &fast), encode(&everything(), &fast));

        // Values that do not fit: serde_avro_fast gives the error.
        let (int, int_fast) = compiled(r#""int""#);
        assert_eq!(encoded_by_program(&int, &(1_i64 << 40)), None);
        let mut config = serde_avro_fast::ser::SerializerConfig::new(&int_fast);
        assert!(serde_avro_fast::to_datum_vec(&(1_i64 << 40), &mut config).is_err());
        assert_eq!(
            encoded_by_program(&int, &-5_i64),
            Some(encode(&-5_i32, &int_fast))
        );
        let (fixed, _) = compiled(
            r#"{"type": "fixed", "name": "F", "size": 2, "logicalType": "decimal",
                "precision": 4, "scale": 2}"#,
        );
        assert_eq!(encoded_by_program(&fixed, &Decimal::new(40_000, 2)), None);
        assert_eq!(encoded_by_program(&fixed, &"not a number"), None);
        // A record given as a map, a missing field.
        let (child, _) = compiled(
            r#"{"type": "record", "name": "Child", "fields": [
                {"name": "name", "type": "string"}, {"name": "age", "type": "int"}]}"#,
        );
        assert_eq!(
            encoded_by_program(&child, &BTreeMap::from([("name", "x")])),
            None
        );
        #[derive(Serialize)]
        struct NameOnly {
            name: String,
        }
        assert_eq!(
            encoded_by_program(&child, &NameOnly { name: "x".into() }),
            None
        );
    }
}

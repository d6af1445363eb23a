//! The serde deserializer a compiled [`Program`] decodes Avro binary datums with.
//!
//! `serde_avro_fast` hands every record to the reader's type as a map of field names, so a
//! derived `Deserialize` compares each name against its own, on every record of every event.
//! Here a record whose fields are, in order, the fields the Rust type declares is handed over as a
//! sequence instead (serde's derived code then takes the fields by position); whether they match
//! is checked once per Rust type and record, then remembered. Everything else follows
//! `serde_avro_fast`'s mapping of Avro onto serde, so both decoders give a type the same value:
//! enum symbols by name, decimals as their decimal text, `["null", T]` unions as options, logical
//! types as their underlying type. A schema with any other union or with the duration or
//! big-decimal logical type is not compiled ([`Program::compile`] returns `None`) and the codec
//! decodes it with `serde_avro_fast`.

use serde::de::value::StrDeserializer;
use serde::de::{self, DeserializeSeed, IntoDeserializer as _, Visitor};

use crate::avro::input::{DatumError, Input, MAX_DEPTH, Result, fail};
use crate::avro::program::{Node, Program, Record};

impl Program {
    /// Decodes one datum, which must fill `input` exactly, into `T`.
    ///
    /// # Errors
    ///
    /// When the bytes are truncated or malformed, or do not fit `T`.
    pub fn decode<'de, T: de::Deserialize<'de>>(&self, input: &'de [u8]) -> Result<T> {
        let mut state = State {
            input: Input::new(input),
            depth: 0,
        };
        let value = T::deserialize(Datum {
            state: &mut state,
            nodes: &self.nodes,
            node: 0,
        })?;
        match state.input.remaining() {
            0 => Ok(value),
            left => fail(format!("{left} bytes remain after the datum")),
        }
    }
}

struct State<'de> {
    input: Input<'de>,
    depth: usize,
}

impl State<'_> {
    #[inline]
    fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return fail(format!("the datum nests deeper than {MAX_DEPTH} levels"));
        }
        Ok(())
    }

    /// The index of the symbol or union branch that comes next, checked against `len`.
    fn index(&mut self, len: usize, of: &str) -> Result<usize> {
        let index = self.input.long()?;
        usize::try_from(index)
            .ok()
            .filter(|i| *i < len)
            .map_or_else(|| fail(format!("{of} index {index} does not exist")), Ok)
    }
}

/// One datum of one schema node, as a serde deserializer.
struct Datum<'s, 'de, 'p> {
    state: &'s mut State<'de>,
    nodes: &'p [Node],
    node: usize,
}

impl<'s, 'de, 'p> Datum<'s, 'de, 'p> {
    #[inline]
    fn node(&self) -> &'p Node {
        // Indexes come from the schema the program was compiled from, which serde_avro_fast
        // checked; an out-of-range one decodes as an error rather than a panic all the same.
        self.nodes.get(self.node).unwrap_or(&Node::Null)
    }

    #[inline]
    fn at(&mut self, node: usize) -> Datum<'_, 'de, 'p> {
        Datum {
            state: self.state,
            nodes: self.nodes,
            node,
        }
    }

    /// A nullable union's branch, read: `None` for null.
    #[inline]
    fn branch(&mut self, null: i64, some: usize) -> Result<Option<usize>> {
        match self.state.input.long()? {
            i if i == null => Ok(None),
            i if i == 1 - null => Ok(Some(some)),
            i => fail(format!("union branch {i} does not exist")),
        }
    }

    fn decimal(&mut self, scale: u32, size: Option<usize>) -> Result<rust_decimal::Decimal> {
        let bytes = match size {
            Some(size) => self.state.input.take(size)?,
            None => self.state.input.bytes()?,
        };
        if bytes.len() > 16 {
            return fail(format!(
                "a decimal of {} bytes is larger than 16",
                bytes.len()
            ));
        }
        // Two's complement, big-endian: sign-extend to 16 bytes.
        let fill = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
            0xff
        } else {
            0
        };
        let mut buf = [fill; 16];
        buf[16 - bytes.len()..].copy_from_slice(bytes);
        rust_decimal::Decimal::try_from_i128_with_scale(i128::from_be_bytes(buf), scale)
            .map_err(|e| DatumError(format!("a decimal out of range: {e}")))
    }

    #[inline]
    fn nested<V: Visitor<'de>>(
        mut self,
        visit: impl FnOnce(&mut Self) -> Result<V::Value>,
    ) -> Result<V::Value> {
        self.state.enter()?;
        let value = visit(&mut self);
        self.state.depth -= 1;
        value
    }

    #[inline]
    fn blocks(&mut self, item: usize) -> Blocks<'_, 'de, 'p> {
        Blocks {
            datum: Datum {
                state: self.state,
                nodes: self.nodes,
                node: item,
            },
            left: 0,
            done: false,
        }
    }

    #[inline]
    fn fields(&mut self, record: &'p Record) -> Fields<'_, 'de, 'p> {
        Fields {
            state: self.state,
            nodes: self.nodes,
            fields: record.fields.iter(),
        }
    }
}

macro_rules! forward_to_any {
    ($($method:ident)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
                self.deserialize_any(visitor)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for Datum<'_, 'de, '_> {
    type Error = DatumError;

    fn deserialize_any<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value> {
        match self.node() {
            Node::Null => visitor.visit_unit(),
            Node::Boolean => visitor.visit_bool(self.state.input.boolean()?),
            Node::Int => visitor.visit_i32(self.state.input.int()?),
            Node::Long => visitor.visit_i64(self.state.input.long()?),
            Node::Float => visitor.visit_f32(self.state.input.float()?),
            Node::Double => visitor.visit_f64(self.state.input.double()?),
            Node::Bytes => visitor.visit_borrowed_bytes(self.state.input.bytes()?),
            Node::String => visitor.visit_borrowed_str(self.state.input.str()?),
            Node::Fixed(size) => visitor.visit_borrowed_bytes(self.state.input.take(*size)?),
            Node::Array(item) => {
                let item = *item;
                self.nested::<V>(|datum| visitor.visit_seq(datum.blocks(item)))
            }
            Node::Map(item) => {
                let item = *item;
                self.nested::<V>(|datum| visitor.visit_map(datum.blocks(item)))
            }
            Node::Record(record) => {
                self.nested::<V>(|datum| visitor.visit_map(datum.fields(record)))
            }
            Node::Nullable { null, some } => match self.branch(*null, *some)? {
                None => visitor.visit_unit(),
                Some(some) => self.at(some).deserialize_any(visitor),
            },
            Node::Enum(symbols) => {
                let index = self.state.index(symbols.len(), "enum symbol")?;
                visitor.visit_str(&symbols[index])
            }
            Node::Decimal { scale, size } => {
                let decimal = self.decimal(*scale, *size)?;
                visitor.visit_str(&decimal.to_string())
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value> {
        match self.node() {
            Node::Null => visitor.visit_none(),
            Node::Nullable { null, some } => match self.branch(*null, *some)? {
                None => visitor.visit_none(),
                Some(some) => visitor.visit_some(self.at(some)),
            },
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        mut self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        match self.node() {
            Node::Record(record) if record.is_positional(fields) => {
                self.nested::<V>(|datum| visitor.visit_seq(datum.fields(record)))
            }
            Node::Nullable { null, some } => match self.branch(*null, *some)? {
                None => visitor.visit_unit(),
                Some(some) => self.at(some).deserialize_struct(name, fields, visitor),
            },
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        mut self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        match self.node() {
            Node::Enum(symbols) => {
                let index = self.state.index(symbols.len(), "enum symbol")?;
                visitor.visit_enum(symbols[index].as_str().into_deserializer())
            }
            Node::Nullable { null, some } => match self.branch(*null, *some)? {
                None => visitor.visit_unit(),
                Some(some) => self.at(some).deserialize_enum(name, variants, visitor),
            },
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_f64<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value> {
        // As serde_avro_fast: a decimal read as a float is converted, not handed over as text.
        match self.node() {
            Node::Decimal { scale, size } => {
                let decimal = self.decimal(*scale, *size)?;
                match rust_decimal::prelude::ToPrimitive::to_f64(&decimal) {
                    Some(float) => visitor.visit_f64(float),
                    None => fail(format!("the decimal {decimal} does not fit a double")),
                }
            }
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_any(de::IgnoredAny)?;
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_any(visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        self.deserialize_any(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_any(visitor)
    }

    // The types a field usually has get a small function of their own that serde's derived
    // code can inline; anything else goes through `deserialize_any`.
    #[inline]
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.node() {
            Node::String => visitor.visit_borrowed_str(self.state.input.str()?),
            _ => self.deserialize_any(visitor),
        }
    }

    #[inline]
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    #[inline]
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.node() {
            Node::Int => visitor.visit_i32(self.state.input.int()?),
            _ => self.deserialize_any(visitor),
        }
    }

    #[inline]
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.node() {
            Node::Long => visitor.visit_i64(self.state.input.long()?),
            _ => self.deserialize_any(visitor),
        }
    }

    forward_to_any! {
        deserialize_bool deserialize_i8 deserialize_i16
        deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_u128 deserialize_f32 deserialize_char
        deserialize_bytes deserialize_byte_buf deserialize_unit deserialize_seq deserialize_map
        deserialize_identifier
    }
}

/// The items of an array or the entries of a map, block by block.
struct Blocks<'s, 'de, 'p> {
    datum: Datum<'s, 'de, 'p>,
    left: u64,
    done: bool,
}

impl<'de> Blocks<'_, 'de, '_> {
    /// Whether another item follows, reading the next block's count when this one is used up.
    fn next(&mut self) -> Result<bool> {
        while self.left == 0 {
            if self.done {
                return Ok(false);
            }
            let count = self.datum.state.input.block_count()?;
            if count == 0 {
                self.done = true;
                return Ok(false);
            }
            self.left = count;
        }
        self.left -= 1;
        Ok(true)
    }
}

impl<'de> de::SeqAccess<'de> for Blocks<'_, 'de, '_> {
    type Error = DatumError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if !self.next()? {
            return Ok(None);
        }
        let item = self.datum.node;
        seed.deserialize(self.datum.at(item)).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        // The current block's count, already checked against the bytes left.
        usize::try_from(self.left).ok()
    }
}

impl<'de> de::MapAccess<'de> for Blocks<'_, 'de, '_> {
    type Error = DatumError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if !self.next()? {
            return Ok(None);
        }
        let key = self.datum.state.input.str()?;
        seed.deserialize(de::value::BorrowedStrDeserializer::new(key))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        let item = self.datum.node;
        seed.deserialize(self.datum.at(item))
    }

    fn size_hint(&self) -> Option<usize> {
        usize::try_from(self.left).ok()
    }
}

/// A record's fields: by position (as a sequence) or by name (as a map).
struct Fields<'s, 'de, 'p> {
    state: &'s mut State<'de>,
    nodes: &'p [Node],
    fields: std::slice::Iter<'p, (String, usize)>,
}

impl<'de> de::SeqAccess<'de> for Fields<'_, 'de, '_> {
    type Error = DatumError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        let Some((_, node)) = self.fields.next() else {
            return Ok(None);
        };
        seed.deserialize(Datum {
            state: self.state,
            nodes: self.nodes,
            node: *node,
        })
        .map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.fields.len())
    }
}

impl<'de> de::MapAccess<'de> for Fields<'_, 'de, '_> {
    type Error = DatumError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        match self.fields.as_slice().first() {
            None => Ok(None),
            Some((name, _)) => seed
                .deserialize(StrDeserializer::<DatumError>::new(name))
                .map(Some),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        match self.fields.next() {
            Some((_, node)) => seed.deserialize(Datum {
                state: self.state,
                nodes: self.nodes,
                node: *node,
            }),
            None => fail("a value asked for after the record's last field"),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.fields.len())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::Ordering;

    use serde::Deserialize;

    use super::*;
    use crate::avro::program::fixtures::{
        Everything, SCHEMA, Shuffled, compiled, encode, everything,
    };

    /// A few of the fields: the rest are skipped, whatever their type.
    #[derive(Debug, Clone, PartialEq, Deserialize)]
    struct Some3 {
        counts: BTreeMap<String, i64>,
        precise: f64,
        fixed_price: f64,
    }

    fn root_record(program: &Program) -> &Record {
        match &program.nodes[0] {
            Node::Record(record) => record,
            other => panic!("the root is {other:?}"),
        }
    }

    #[test]
    fn every_type_decodes_as_serde_avro_fast_decodes_it() {
        let (program, fast) = compiled(SCHEMA);
        let bytes = encode(&everything(), &fast);

        let ours: Everything = program.decode(&bytes).expect("decodes");
        assert_eq!(ours, everything());
        let theirs: Everything = serde_avro_fast::from_datum_slice(&bytes, &fast).expect("decodes");
        assert_eq!(ours, theirs);
        assert_ne!(root_record(&program).positional.load(Ordering::Relaxed), 0);

        let shuffled: Shuffled = program.decode(&bytes).expect("decodes by name");
        let theirs: Shuffled = serde_avro_fast::from_datum_slice(&bytes, &fast).expect("decodes");
        assert_eq!(shuffled, theirs);
        assert_eq!(shuffled.price, everything().price);
        assert_eq!(shuffled.child, everything().child);
        assert_ne!(root_record(&program).by_name.load(Ordering::Relaxed), 0);

        let some: Some3 = program.decode(&bytes).expect("skips the rest");
        let theirs: Some3 = serde_avro_fast::from_datum_slice(&bytes, &fast).expect("decodes");
        assert_eq!(some, theirs);
        assert_eq!(some.fixed_price, 99_999.999);

        // A second decode takes the remembered paths and gives the same values.
        assert_eq!(
            program.decode::<Everything>(&bytes).ok(),
            Some(everything())
        );
        assert_eq!(program.decode::<Shuffled>(&bytes).ok(), Some(shuffled));
    }

    #[test]
    fn generic_targets_see_records_as_maps_and_enums_and_decimals_as_text() {
        let (program, fast) = compiled(
            r#"{"type": "record", "name": "Money", "fields": [
                {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal",
                    "precision": 9, "scale": 2}},
                {"name": "currency", "type": {"type": "enum", "name": "Currency",
                    "symbols": ["EUR", "USD"]}},
                {"name": "note", "type": ["null", "string"]}]}"#,
        );
        let bytes = encode(
            &serde_json::json!({"amount": "-0.05", "currency": "USD", "note": null}),
            &fast,
        );
        let ours: serde_json::Value = program.decode(&bytes).expect("decodes");
        assert_eq!(
            ours,
            serde_json::json!({"amount": "-0.05", "currency": "USD", "note": null})
        );
        let theirs: serde_json::Value =
            serde_avro_fast::from_datum_slice(&bytes, &fast).expect("decodes");
        assert_eq!(ours, theirs);
    }

    #[test]
    fn malformed_datums_are_errors_and_never_panics() {
        let (program, fast) = compiled(SCHEMA);
        let bytes = encode(&everything(), &fast);
        for end in 0..bytes.len() {
            assert!(
                program.decode::<Everything>(&bytes[..end]).is_err(),
                "a datum cut at {end} of {} bytes decoded",
                bytes.len()
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        let error = program
            .decode::<Everything>(&longer)
            .expect_err("trailing byte");
        assert!(error.0.contains("1 bytes remain"), "{error}");

        // Any byte changed to any of these values: an error or a value, never a panic.
        for at in 0..bytes.len() {
            for value in [0x00, 0x01, 0x02, 0x7f, 0x80, 0xc0, 0xfe, 0xff] {
                let mut changed = bytes.clone();
                changed[at] = value;
                let _ = program.decode::<Everything>(&changed);
                let _ = program.decode::<serde_json::Value>(&changed);
            }
        }
    }
}

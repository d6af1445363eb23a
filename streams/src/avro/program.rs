//! Avro binary datums: a bounds-checked reader, and a schema compiled once into the serde
//! deserializer and serializer that are the codec's hot paths.
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
//!
//! The serializer writes the bytes `serde_avro_fast` writes, without its per-field dispatch:
//! records whose fields come in schema order (as derived code gives them), nullable unions,
//! enums, decimals, arrays and maps. Any other value is handed back ([`Unsupported`]) and the
//! codec encodes it with `serde_avro_fast`, which also reports what does not fit the schema.
//!
//! Malformed input is an error, never a panic: every read is bounds-checked, nesting is limited,
//! block counts are checked against the bytes left and the whole datum must be consumed.

use std::sync::atomic::{AtomicUsize, Ordering};

use serde::de::value::StrDeserializer;
use serde::de::{self, DeserializeSeed, IntoDeserializer as _, Visitor};
use serde::ser;
use serde_avro_fast::schema::{LogicalType, RegularType, SchemaMut};

/// Deeper nesting than this is refused rather than risking the stack on hostile input.
pub(crate) const MAX_DEPTH: usize = 128;

/// Items of zero bytes (nulls, empty records) are legal in arrays and maps, but not a billion of
/// them from a few bytes of input: a datum may claim this many items beyond one per byte left.
const ZERO_SIZE_ITEMS: u64 = 65_536;

/// Why a datum could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DatumError(pub String);

impl de::Error for DatumError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        DatumError(msg.to_string())
    }
}

type Result<T> = std::result::Result<T, DatumError>;

pub(crate) fn fail<T>(reason: impl Into<String>) -> Result<T> {
    Err(DatumError(reason.into()))
}

/// Reads Avro's binary encoding from a slice; every read is bounds-checked.
pub(crate) struct Input<'a> {
    bytes: &'a [u8],
    at: usize,
    /// What is left of [`ZERO_SIZE_ITEMS`].
    zero_size_items: u64,
}

impl<'a> Input<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Input {
            bytes,
            at: 0,
            zero_size_items: ZERO_SIZE_ITEMS,
        }
    }

    #[inline]
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    #[inline]
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        match self.bytes.get(self.at..).and_then(|rest| rest.get(..n)) {
            Some(slice) => {
                self.at += n;
                Ok(slice)
            }
            None => Err(self.ends_early(n)),
        }
    }

    // Errors are built out of line, so the hot paths stay small enough to inline.
    #[cold]
    #[inline(never)]
    fn ends_early(&self, n: usize) -> DatumError {
        DatumError(format!(
            "the datum ends early: {n} bytes wanted, {} left",
            self.remaining()
        ))
    }

    #[inline]
    pub(crate) fn long(&mut self) -> Result<i64> {
        // Most integers (lengths, indexes, small counts) fit one byte.
        if let Some(&byte) = self.bytes.get(self.at)
            && byte & 0x80 == 0
        {
            self.at += 1;
            return Ok(i64::from(byte >> 1) ^ -i64::from(byte & 1));
        }
        self.long_slow()
    }

    #[inline(never)]
    fn long_slow(&mut self) -> Result<i64> {
        let rest = self.bytes.get(self.at..).unwrap_or_default();
        let mut value: u64 = 0;
        let mut i = 0;
        // A plain loop: `step_by` over the shifts cost twice the instructions.
        while i < 10 {
            let Some(&byte) = rest.get(i) else {
                return fail("the datum ends inside a variable-length integer");
            };
            value |= u64::from(byte & 0x7f) << (7 * i);
            i += 1;
            if byte & 0x80 == 0 {
                self.at += i;
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        fail("a variable-length integer is longer than 10 bytes")
    }

    #[inline]
    pub(crate) fn int(&mut self) -> Result<i32> {
        let value = self.long()?;
        i32::try_from(value).map_or_else(|_| fail(format!("{value} does not fit an int")), Ok)
    }

    #[inline]
    pub(crate) fn length(&mut self) -> Result<usize> {
        let n = self.long()?;
        usize::try_from(n).map_or_else(|_| fail(format!("negative length {n}")), Ok)
    }

    #[inline]
    pub(crate) fn float(&mut self) -> Result<f32> {
        let b = self.take(4)?;
        Ok(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    #[inline]
    pub(crate) fn double(&mut self) -> Result<f64> {
        let b = self.take(8)?;
        Ok(f64::from_le_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]))
    }

    #[inline]
    fn boolean(&mut self) -> Result<bool> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            other => fail(format!("{other} is not a boolean (0 or 1)")),
        }
    }

    #[inline]
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = self.length()?;
        self.take(len)
    }

    #[inline]
    fn str(&mut self) -> Result<&'a str> {
        let bytes = self.bytes()?;
        if bytes.is_ascii() {
            // SAFETY: ASCII is valid UTF-8. `is_ascii` looks at a word at a time, where the
            // full validation goes byte by byte over strings this short: it was a sixth of a
            // booking event's decode, most of whose strings are ids.
            #[allow(unsafe_code)]
            return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
        }
        std::str::from_utf8(bytes).map_err(|e| DatumError(format!("a string {e}")))
    }

    /// The item count of the next block of an array or map; 0 ends it. A negative count is
    /// followed by the block's size in bytes, which is not needed here. Refused when the
    /// bytes left cannot hold that many items (bar the allowance for items of zero bytes).
    #[inline]
    pub(crate) fn block_count(&mut self) -> Result<u64> {
        let count = self.long()?;
        let count = if count >= 0 {
            count as u64
        } else {
            self.long()?;
            count.unsigned_abs()
        };
        let left = self.remaining() as u64;
        if count > left {
            let extra = count - left;
            if extra > self.zero_size_items {
                return fail(format!(
                    "a block claims {count} items with {left} bytes left"
                ));
            }
            self.zero_size_items -= extra;
        }
        Ok(count)
    }
}

/// A schema node, compiled; children are indexes into [`Program::nodes`], the same indexes as
/// in the `serde_avro_fast` schema it was compiled from.
#[derive(Debug)]
enum Node {
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
struct Record {
    fields: Box<[(String, usize)]>,
    /// The address of a Rust type's field list known to be this record's fields in order, and
    /// of one known not to be: the check costs a comparison of every name, the memo one load.
    positional: AtomicUsize,
    by_name: AtomicUsize,
}

impl Record {
    #[inline]
    fn is_positional(&self, fields: &'static [&'static str]) -> bool {
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
    nodes: Vec<Node>,
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
pub(crate) fn write_long(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Appends a length and the bytes.
#[inline]
pub(crate) fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
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
    use serde::{Deserialize, Serialize};

    use super::*;

    const SCHEMA: &str = r#"{"type": "record", "name": "t.Everything", "fields": [
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
    struct Raw(Vec<u8>);

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
    enum Status {
        #[serde(rename = "OPEN")]
        Open,
        #[serde(rename = "CLOSED")]
        Closed,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Child {
        name: String,
        child: Option<Box<Child>>,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Everything {
        id: String,
        flag: bool,
        small: i32,
        big: i64,
        ratio: f32,
        precise: f64,
        raw: Raw,
        day: i32,
        at: i64,
        price: Decimal,
        fixed_price: Decimal,
        digest: Raw,
        status: Status,
        note: Option<String>,
        later: Option<String>,
        tags: Vec<String>,
        counts: BTreeMap<String, i64>,
        child: Option<Child>,
    }

    /// The same fields in another order: decoded by name.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Shuffled {
        child: Option<Child>,
        counts: BTreeMap<String, i64>,
        price: Decimal,
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

    /// A few of the fields: the rest are skipped, whatever their type.
    #[derive(Debug, Clone, PartialEq, Deserialize)]
    struct Some3 {
        counts: BTreeMap<String, i64>,
        precise: f64,
        fixed_price: f64,
    }

    fn everything() -> Everything {
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

    fn compiled(text: &str) -> (Program, serde_avro_fast::Schema) {
        let safe: SchemaMut = text.parse().expect("schema");
        let program = Program::compile(&safe).expect("compiles");
        (program, safe.freeze().expect("schema"))
    }

    fn encode<T: Serialize>(value: &T, schema: &serde_avro_fast::Schema) -> Vec<u8> {
        let mut config = serde_avro_fast::ser::SerializerConfig::new(schema);
        serde_avro_fast::to_datum_vec(value, &mut config).expect("encodes")
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

    #[test]
    fn strings_are_checked_as_utf8_beyond_ascii() {
        let (text, _) = compiled(r#""string""#);
        assert_eq!(
            text.decode::<String>(&[4, b'o', b'k']).ok(),
            Some("ok".into())
        );
        assert_eq!(
            text.decode::<String>(&[4, 0xc3, 0xbc]).ok(),
            Some("ü".into())
        );
        let error = text
            .decode::<String>(&[4, 0xc3, 0x28])
            .expect_err("not UTF-8");
        assert!(error.0.contains("utf-8"), "{error}");
        assert!(text.decode::<String>(&[2, 0xff]).is_err());
    }

    #[test]
    fn block_counts_and_nesting_are_bounded() {
        let (nulls, _) = compiled(r#"{"type": "array", "items": "null"}"#);
        // A block of 10^12 nulls in 7 bytes.
        let mut huge = Vec::new();
        let mut n: u64 = 2 * 1_000_000_000_000;
        while n >= 0x80 {
            huge.push((n as u8) | 0x80);
            n >>= 7;
        }
        huge.push(n as u8);
        huge.push(0);
        let error = nulls.decode::<Vec<()>>(&huge).expect_err("refused");
        assert!(error.0.contains("claims 1000000000000 items"), "{error}");
        // A negative count (with a byte size) of three nulls is fine.
        let three: Vec<()> = nulls.decode(&[5, 0, 0]).expect("decodes");
        assert_eq!(three.len(), 3);

        let (list, fast) = compiled(
            r#"{"type": "record", "name": "Node", "fields": [
                {"name": "next", "type": ["null", "Node"]}]}"#,
        );
        // 200 levels deep: branch 1 two hundred times, then null.
        let mut deep = vec![2u8; 200];
        deep.push(0);
        let error = list
            .decode::<serde_json::Value>(&deep)
            .expect_err("too deep");
        assert!(error.0.contains("deeper than 128"), "{error}");
        let shallow = [2u8, 2, 0];
        let ours: serde_json::Value = list.decode(&shallow).expect("decodes");
        let theirs: serde_json::Value =
            serde_avro_fast::from_datum_slice(&shallow, &fast).expect("decodes");
        assert_eq!(ours, theirs);
    }

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

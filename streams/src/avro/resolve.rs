//! Avro schema resolution on binary data: bytes written with one version become bytes of
//! another, so old events decode into new code with the reader's defaults.
//!
//! It works on the encoded form directly (no generic value tree) and follows the same matching
//! rules as [`crate::avro::compat`]: fields by name or alias, defaults for fields the writer lacks,
//! writer-only fields skipped, enum symbols by name (or the reader's enum default), union
//! branches by type, and Avro's promotions. Malformed input is an error, never a panic: every
//! read is bounds-checked, nesting is limited and block counts are checked against the input.

use serde_json::Value;

use crate::avro::input::{DatumError, Input, MAX_DEPTH, fail};
use crate::avro::schema::{NamedKind, Schema, Type};
use crate::avro::ser::{write_bytes, write_long};

type Result<T> = std::result::Result<T, DatumError>;

/// Rewrites `input`, a datum written with `writer`, as a datum of `reader`.
///
/// # Errors
///
/// When the input is truncated or malformed, or holds a value the reader cannot take (a union
/// branch or enum symbol it lacks, a field it requires without a default).
pub fn transcode(writer: &Schema, reader: &Schema, input: &[u8]) -> Result<Vec<u8>> {
    let mut resolver = Resolver {
        writer,
        reader,
        input: Input::new(input),
        depth: 0,
    };
    let mut out = Vec::with_capacity(input.len() + 16);
    resolver.resolve(writer.root(), reader.root(), &mut out)?;
    match resolver.input.remaining() {
        0 => Ok(out),
        left => fail(format!("{left} bytes remain after the datum")),
    }
}

struct Resolver<'a> {
    writer: &'a Schema,
    reader: &'a Schema,
    input: Input<'a>,
    depth: usize,
}

impl Resolver<'_> {
    fn resolve(&mut self, w: &Type, r: &Type, out: &mut Vec<u8>) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return fail(format!("the datum nests deeper than {MAX_DEPTH} levels"));
        }
        let result = self.resolve_inner(w, r, out);
        self.depth -= 1;
        result
    }

    fn resolve_inner(&mut self, w: &Type, r: &Type, out: &mut Vec<u8>) -> Result<()> {
        if let Type::Union(branches) = w {
            let index = self.input.long()?;
            let branch = usize::try_from(index)
                .ok()
                .and_then(|i| branches.get(i))
                .ok_or_else(|| DatumError(format!("union branch {index} does not exist")))?;
            return self.resolve(branch, r, out);
        }
        if let Type::Union(branches) = r {
            let Some(index) = self.pick_branch(w, branches) else {
                return fail(format!(
                    "the reader's {} has no branch for the writer's {}",
                    self.reader.describe(r),
                    self.writer.describe(w)
                ));
            };
            write_long(out, index as i64);
            return self.resolve(w, &branches[index], out);
        }
        match (w, r) {
            (Type::Null, Type::Null) => Ok(()),
            (Type::Boolean, Type::Boolean) => {
                let b = self.input.take(1)?[0];
                if b > 1 {
                    return fail(format!("{b} is not a boolean"));
                }
                out.push(b);
                Ok(())
            }
            (Type::Int, Type::Int) => {
                let v = self.input.int()?;
                write_long(out, i64::from(v));
                Ok(())
            }
            (Type::Int | Type::Long, Type::Long) => {
                let v = self.input.long()?;
                write_long(out, v);
                Ok(())
            }
            (Type::Int | Type::Long, Type::Float) => {
                let v = self.input.long()?;
                out.extend_from_slice(&(v as f32).to_le_bytes());
                Ok(())
            }
            (Type::Int | Type::Long, Type::Double) => {
                let v = self.input.long()?;
                out.extend_from_slice(&(v as f64).to_le_bytes());
                Ok(())
            }
            (Type::Float, Type::Float) => {
                let v = self.input.float()?;
                out.extend_from_slice(&v.to_le_bytes());
                Ok(())
            }
            (Type::Float, Type::Double) => {
                let v = self.input.float()?;
                out.extend_from_slice(&f64::from(v).to_le_bytes());
                Ok(())
            }
            (Type::Double, Type::Double) => {
                let v = self.input.double()?;
                out.extend_from_slice(&v.to_le_bytes());
                Ok(())
            }
            (Type::String | Type::Bytes, Type::String | Type::Bytes) => {
                let n = self.input.length()?;
                let bytes = self.input.take(n)?;
                if matches!(r, Type::String) && std::str::from_utf8(bytes).is_err() {
                    return fail("a string is not valid UTF-8");
                }
                write_bytes(out, bytes);
                Ok(())
            }
            (Type::Array(wi), Type::Array(ri)) => {
                self.blocks(out, |this, out| this.resolve(wi, ri, out))
            }
            (Type::Map(wv), Type::Map(rv)) => self.blocks(out, |this, out| {
                let n = this.input.length()?;
                let key = this.input.take(n)?;
                write_bytes(out, key);
                this.resolve(wv, rv, out)
            }),
            (Type::Named(wi), Type::Named(ri)) => self.named(*wi, *ri, out),
            _ => fail(format!(
                "the writer's {} cannot be read as the reader's {}",
                self.writer.describe(w),
                self.reader.describe(r)
            )),
        }
    }

    /// Arrays and maps: blocks of `count` items until a zero count; a negative count is
    /// followed by the block's size in bytes. Written back as plain positive-count blocks.
    fn blocks(
        &mut self,
        out: &mut Vec<u8>,
        mut item: impl FnMut(&mut Self, &mut Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        loop {
            let count = self.input.block_count()?;
            if count == 0 {
                out.push(0);
                return Ok(());
            }
            write_long(out, count as i64);
            for _ in 0..count {
                item(self, out)?;
            }
        }
    }

    fn pick_branch(&self, w: &Type, branches: &[Type]) -> Option<usize> {
        let same = branches.iter().position(|b| match (w, b) {
            (Type::Named(wi), Type::Named(ri)) => self.same_named(*wi, *ri),
            (Type::Array(_), Type::Array(_)) | (Type::Map(_), Type::Map(_)) => true,
            (w, b) => w == b,
        });
        same.or_else(|| {
            branches.iter().position(|b| {
                matches!(
                    (w, b),
                    (Type::Int, Type::Long | Type::Float | Type::Double)
                        | (Type::Long, Type::Float | Type::Double)
                        | (Type::Float, Type::Double)
                        | (Type::String, Type::Bytes)
                        | (Type::Bytes, Type::String)
                )
            })
        })
    }

    fn same_named(&self, wi: usize, ri: usize) -> bool {
        let (w, r) = (self.writer.named(wi), self.reader.named(ri));
        r.same_kind(w) && r.reads_name_of(w)
    }

    fn named(&mut self, wi: usize, ri: usize, out: &mut Vec<u8>) -> Result<()> {
        let writer = self.writer;
        let reader = self.reader;
        let (w, r) = (writer.named(wi), reader.named(ri));
        match (&w.kind, &r.kind) {
            (NamedKind::Fixed { size: ws }, NamedKind::Fixed { size: rs }) if ws == rs => {
                let n = usize::try_from(*ws).map_or_else(|_| fail("fixed size too large"), Ok)?;
                out.extend_from_slice(self.input.take(n)?);
                Ok(())
            }
            (
                NamedKind::Enum { symbols: wsyms, .. },
                NamedKind::Enum {
                    symbols: rsyms,
                    default,
                },
            ) => {
                let index = self.input.long()?;
                let symbol = usize::try_from(index)
                    .ok()
                    .and_then(|i| wsyms.get(i))
                    .ok_or_else(|| {
                        DatumError(format!("enum index {index} does not exist in {}", w.name))
                    })?;
                let target = rsyms
                    .iter()
                    .position(|s| s == symbol)
                    .or_else(|| {
                        default
                            .as_ref()
                            .and_then(|d| rsyms.iter().position(|s| s == d))
                    })
                    .ok_or_else(|| {
                        DatumError(format!(
                            "the reader's enum {} has no symbol {symbol} and no default",
                            r.name
                        ))
                    })?;
                write_long(out, target as i64);
                Ok(())
            }
            (NamedKind::Record { fields: wfields }, NamedKind::Record { fields: rfields }) => {
                let mut values: Vec<Option<Vec<u8>>> = vec![None; rfields.len()];
                for wf in wfields {
                    let target = rfields
                        .iter()
                        .position(|rf| rf.name == wf.name)
                        .or_else(|| rfields.iter().position(|rf| rf.aliases.contains(&wf.name)));
                    match target {
                        Some(i) => {
                            let mut buffer = Vec::new();
                            self.resolve(&wf.ty, &rfields[i].ty, &mut buffer)?;
                            values[i] = Some(buffer);
                        }
                        None => self.skip(&wf.ty)?,
                    }
                }
                for (rf, value) in rfields.iter().zip(values) {
                    match (value, &rf.default) {
                        (Some(bytes), _) => out.extend_from_slice(&bytes),
                        (None, Some(default)) => encode_default(reader, &rf.ty, default, out, 0)?,
                        (None, None) => {
                            return fail(format!(
                                "the reader's field '{}' of {} has no default and the writer did not write it",
                                rf.name, r.name
                            ));
                        }
                    }
                }
                Ok(())
            }
            _ => fail(format!(
                "the writer's {} cannot be read as the reader's {}",
                writer.describe(&Type::Named(wi)),
                reader.describe(&Type::Named(ri))
            )),
        }
    }

    /// Reads past a value the reader does not want.
    fn skip(&mut self, w: &Type) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return fail(format!("the datum nests deeper than {MAX_DEPTH} levels"));
        }
        let result = self.skip_inner(w);
        self.depth -= 1;
        result
    }

    fn skip_inner(&mut self, w: &Type) -> Result<()> {
        let writer = self.writer;
        match w {
            Type::Null => Ok(()),
            Type::Boolean => self.input.take(1).map(drop),
            Type::Int | Type::Long => self.input.long().map(drop),
            Type::Float => self.input.take(4).map(drop),
            Type::Double => self.input.take(8).map(drop),
            Type::Bytes | Type::String => {
                let n = self.input.length()?;
                self.input.take(n).map(drop)
            }
            Type::Union(branches) => {
                let index = self.input.long()?;
                let branch = usize::try_from(index)
                    .ok()
                    .and_then(|i| branches.get(i))
                    .ok_or_else(|| DatumError(format!("union branch {index} does not exist")))?;
                self.skip(branch)
            }
            Type::Array(items) => {
                let mut sink = Vec::new();
                self.blocks(&mut sink, |this, _| this.skip(items))
            }
            Type::Map(values) => {
                let mut sink = Vec::new();
                self.blocks(&mut sink, |this, _| {
                    let n = this.input.length()?;
                    this.input.take(n)?;
                    this.skip(values)
                })
            }
            Type::Named(i) => match &writer.named(*i).kind {
                NamedKind::Fixed { size } => {
                    let n =
                        usize::try_from(*size).map_or_else(|_| fail("fixed size too large"), Ok)?;
                    self.input.take(n).map(drop)
                }
                NamedKind::Enum { .. } => self.input.long().map(drop),
                NamedKind::Record { fields } => {
                    fields.iter().try_for_each(|field| self.skip(&field.ty))
                }
            },
        }
    }
}

/// Encodes a field default (JSON, as in the schema) as a datum of its type.
fn encode_default(
    schema: &Schema,
    ty: &Type,
    value: &Value,
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return fail("a default nests too deep");
    }
    let bad = || {
        DatumError(format!(
            "the default {value} does not fit {}",
            schema.describe(ty)
        ))
    };
    match (ty, value) {
        (Type::Null, Value::Null) => Ok(()),
        (Type::Boolean, Value::Bool(b)) => {
            out.push(u8::from(*b));
            Ok(())
        }
        (Type::Int | Type::Long, Value::Number(n)) => {
            write_long(out, n.as_i64().ok_or_else(bad)?);
            Ok(())
        }
        (Type::Float, Value::Number(n)) => {
            out.extend_from_slice(&(n.as_f64().ok_or_else(bad)? as f32).to_le_bytes());
            Ok(())
        }
        (Type::Double, Value::Number(n)) => {
            out.extend_from_slice(&n.as_f64().ok_or_else(bad)?.to_le_bytes());
            Ok(())
        }
        (Type::String, Value::String(s)) => {
            write_bytes(out, s.as_bytes());
            Ok(())
        }
        // Avro writes bytes and fixed defaults as strings of code points 0-255.
        (Type::Bytes, Value::String(s)) => {
            let bytes: Vec<u8> = s
                .chars()
                .map(|c| u8::try_from(u32::from(c)).map_err(|_| bad()))
                .collect::<Result<_>>()?;
            write_bytes(out, &bytes);
            Ok(())
        }
        (Type::Array(items), Value::Array(values)) => {
            if !values.is_empty() {
                write_long(out, values.len() as i64);
                for v in values {
                    encode_default(schema, items, v, out, depth + 1)?;
                }
            }
            out.push(0);
            Ok(())
        }
        (Type::Map(vt), Value::Object(entries)) => {
            if !entries.is_empty() {
                write_long(out, entries.len() as i64);
                for (k, v) in entries {
                    write_bytes(out, k.as_bytes());
                    encode_default(schema, vt, v, out, depth + 1)?;
                }
            }
            out.push(0);
            Ok(())
        }
        (Type::Union(branches), _) => {
            let first = branches.first().ok_or_else(bad)?;
            write_long(out, 0);
            encode_default(schema, first, value, out, depth + 1)
        }
        (Type::Named(i), _) => match (&schema.named(*i).kind, value) {
            (NamedKind::Enum { symbols, .. }, Value::String(s)) => {
                write_long(
                    out,
                    symbols.iter().position(|x| x == s).ok_or_else(bad)? as i64,
                );
                Ok(())
            }
            (NamedKind::Fixed { size }, Value::String(s)) => {
                let bytes: Vec<u8> = s
                    .chars()
                    .map(|c| u8::try_from(u32::from(c)).map_err(|_| bad()))
                    .collect::<Result<_>>()?;
                if bytes.len() as u64 != *size {
                    return Err(bad());
                }
                out.extend_from_slice(&bytes);
                Ok(())
            }
            (NamedKind::Record { fields }, Value::Object(entries)) => {
                for field in fields {
                    let v = entries
                        .get(&field.name)
                        .or(field.default.as_ref())
                        .ok_or_else(bad)?;
                    encode_default(schema, &field.ty, v, out, depth + 1)?;
                }
                Ok(())
            }
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(text: &str) -> Schema {
        Schema::parse(text).expect("valid")
    }

    #[test]
    fn ints_widen_and_missing_fields_take_the_readers_default() {
        let writer = schema(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"gone","type":"string"}]}"#,
        );
        let reader = schema(
            r#"{"type":"record","name":"R","fields":[{"name":"b","type":"string","default":"hi"},{"name":"a","type":"double"}]}"#,
        );
        // a = -2 (zigzag 3), gone = "xy"
        let out = transcode(&writer, &reader, &[3, 4, b'x', b'y']).expect("resolves");
        let mut expected = vec![4, b'h', b'i'];
        expected.extend_from_slice(&(-2.0f64).to_le_bytes());
        assert_eq!(out, expected);
    }

    #[test]
    fn hostile_input_is_an_error() {
        let s = schema(r#"{"type":"array","items":"null"}"#);
        assert!(transcode(&s, &s, &[0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        let nested =
            schema(r#"{"type":"record","name":"N","fields":[{"name":"n","type":["null","N"]}]}"#);
        let deep = vec![2u8; 10_000];
        assert!(transcode(&nested, &nested, &deep).is_err());
        assert!(transcode(&nested, &nested, &[9]).is_err());
        let string = schema(r#""string""#);
        assert!(transcode(&string, &string, &[4, 0xff, 0xfe]).is_err());
        assert!(
            transcode(&string, &string, &[2, b'a', b'b']).is_err(),
            "trailing bytes"
        );
    }
}

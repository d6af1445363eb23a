//! Avro schemas: parsing with located errors, the named-type graph, and a stable text form.
//!
//! The runtime keeps its own model of a schema instead of walking `apache-avro`'s, for two
//! reasons: every rejection must name its location (`/fields/3/type/items`), which
//! `apache-avro`'s parser does not report, and the compatibility checker needs the raw facts
//! (aliases, defaults, enum defaults) in one stable shape. Every schema accepted here is also
//! parsed by `apache-avro`, so the codec can never be handed one it cannot use.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde_json::{Map, Value};

/// An invalid schema: where in the document, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// The file or subject the schema came from, when known.
    pub source: Option<String>,
    /// A JSON-pointer-like path into the schema document (`/fields/3/type`), or `line L, column
    /// C` for text that is not JSON.
    pub location: String,
    /// A plain-English reason.
    pub reason: String,
}

impl SchemaError {
    fn at(location: &str, reason: impl Into<String>) -> Self {
        SchemaError {
            source: None,
            location: if location.is_empty() {
                "/".to_owned()
            } else {
                location.to_owned()
            },
            reason: reason.into(),
        }
    }

    /// The same error, attributed to a file or subject.
    #[must_use]
    pub fn in_source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(source) = &self.source {
            write!(f, "{source}: ")?;
        }
        write!(
            f,
            "invalid Avro schema at {}: {}",
            self.location, self.reason
        )
    }
}

impl std::error::Error for SchemaError {}

impl From<SchemaError> for crate::Error {
    fn from(error: SchemaError) -> Self {
        crate::Error::Schema(Box::new(error))
    }
}

/// A type in a schema. Named types live in [`Schema::named`] so that recursive types are finite.
#[derive(Debug, Clone, PartialEq)]
pub enum Type {
    /// `null`
    Null,
    /// `boolean`
    Boolean,
    /// `int` (also under the logical types date and time-millis)
    Int,
    /// `long` (also under the timestamp logical types)
    Long,
    /// `float`
    Float,
    /// `double`
    Double,
    /// `bytes` (also under decimal)
    Bytes,
    /// `string` (also under uuid)
    String,
    /// `{"type": "array", "items": ...}`
    Array(Box<Type>),
    /// `{"type": "map", "values": ...}`
    Map(Box<Type>),
    /// A union's branches, in order.
    Union(Vec<Type>),
    /// A record, enum or fixed: an index into [`Schema::named`].
    Named(usize),
}

/// A record, enum or fixed type.
#[derive(Debug, Clone, PartialEq)]
pub struct Named {
    /// The full name, namespace included.
    pub name: String,
    /// Full names this type was known by before.
    pub aliases: Vec<String>,
    /// What kind of named type it is.
    pub kind: NamedKind,
}

impl Named {
    /// The name without its namespace.
    pub fn simple_name(&self) -> &str {
        self.name.rsplit('.').next().unwrap_or(&self.name)
    }

    /// Whether both are records, both enums or both fixed.
    pub fn same_kind(&self, other: &Named) -> bool {
        matches!(
            (&self.kind, &other.kind),
            (NamedKind::Record { .. }, NamedKind::Record { .. })
                | (NamedKind::Enum { .. }, NamedKind::Enum { .. })
                | (NamedKind::Fixed { .. }, NamedKind::Fixed { .. })
        )
    }

    /// Whether this type, as a reader, answers to the writer's name: the same unqualified name
    /// (as Avro and the Confluent registry compare them) or one of this type's aliases.
    pub fn reads_name_of(&self, writer: &Named) -> bool {
        self.simple_name() == writer.simple_name() || self.aliases.contains(&writer.name)
    }
}

/// The three kinds of named type.
#[derive(Debug, Clone, PartialEq)]
pub enum NamedKind {
    /// A record and its fields, in order.
    Record {
        /// The fields.
        fields: Vec<Field>,
    },
    /// An enum, its symbols and the symbol readers fall back to for unknown ones.
    Enum {
        /// The symbols, in order.
        symbols: Vec<String>,
        /// The fallback symbol, if any.
        default: Option<String>,
    },
    /// Fixed-size bytes.
    Fixed {
        /// The size in bytes.
        size: u64,
    },
}

/// A field of a record.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// The field name.
    pub name: String,
    /// Names this field was known by before.
    pub aliases: Vec<String>,
    /// The field's type.
    pub ty: Type,
    /// The default value, if the field has one.
    pub default: Option<Value>,
}

/// How deep types may nest, counting records, arrays, maps and unions on the way down (a
/// recursive type counts once round): readers and checkers recurse along the nesting, so a
/// chain of thousands of records, a few hundred kilobytes of schema, would overflow a thread's
/// stack. The contract's schemas nest 4 deep.
pub const MAX_NESTING: usize = 64;

/// A parsed, validated Avro schema.
#[derive(Debug, Clone)]
pub struct Schema {
    root: Type,
    named: Vec<Named>,
    canonical: String,
}

impl PartialEq for Schema {
    fn eq(&self, other: &Self) -> bool {
        self.canonical == other.canonical
    }
}

impl Eq for Schema {}

impl Schema {
    /// Parses and validates a schema document.
    ///
    /// # Errors
    ///
    /// A [`SchemaError`] naming the location and the reason when the text is not JSON, not a
    /// valid Avro schema, or not accepted by `apache-avro`.
    pub fn parse(text: &str) -> Result<Schema, SchemaError> {
        Self::from_json(&json_of(text)?)
    }

    /// As [`Schema::parse`], without the checks added once schemas were already stored: a
    /// record that can never end, an enum without symbols, a decimal's precision and scale, a
    /// field's `order`. A store that accepted a schema keeps reading it the same way (the
    /// registry's log replays to the same ids); new schemas are checked in full with
    /// [`Schema::parse`] where they arrive.
    ///
    /// # Errors
    ///
    /// As [`Schema::parse`], less those checks.
    pub fn parse_stored(text: &str) -> Result<Schema, SchemaError> {
        Self::from_json_with(&json_of(text)?, Checks::Stored)
    }

    /// Validates a schema document that is already JSON.
    ///
    /// # Errors
    ///
    /// As [`Schema::parse`].
    pub fn from_json(json: &Value) -> Result<Schema, SchemaError> {
        Self::from_json_with(json, Checks::All)
    }

    fn from_json_with(json: &Value, checks: Checks) -> Result<Schema, SchemaError> {
        let mut parser = Parser {
            checks,
            ..Parser::default()
        };
        let root = parser.parse_type(json, "", None)?;
        if parser.checks == Checks::All {
            parser.check_records_end()?;
            parser.check_nesting(&root)?;
        }
        let canonical = json.to_string();
        // A second opinion: the codec uses apache-avro, so a schema it rejects is unusable
        // however valid it looks to us.
        apache_avro::Schema::parse_str(&canonical)
            .map_err(|e| SchemaError::at("", format!("rejected by the Avro library: {e}")))?;
        Ok(Schema {
            root,
            named: parser.named,
            canonical,
        })
    }

    /// The top-level type.
    pub fn root(&self) -> &Type {
        &self.root
    }

    /// The named type behind [`Type::Named`].
    ///
    /// # Panics
    ///
    /// Never for a `Type` taken from this schema: the parser only creates indexes it has filled.
    pub fn named(&self, index: usize) -> &Named {
        &self.named[index]
    }

    /// The schema as compact JSON, keys in their original order. Two documents that differ only
    /// in white space have the same canonical text; this is the schema's identity in the registry.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// The full name of the top-level type, when it is named.
    pub fn full_name(&self) -> Option<&str> {
        match self.root {
            Type::Named(i) => Some(&self.named[i].name),
            _ => None,
        }
    }

    /// A short human name for a type: `int`, `array<string>`, `record a.B`.
    pub fn describe(&self, ty: &Type) -> String {
        match ty {
            Type::Null => "null".into(),
            Type::Boolean => "boolean".into(),
            Type::Int => "int".into(),
            Type::Long => "long".into(),
            Type::Float => "float".into(),
            Type::Double => "double".into(),
            Type::Bytes => "bytes".into(),
            Type::String => "string".into(),
            Type::Array(items) => format!("array<{}>", self.describe(items)),
            Type::Map(values) => format!("map<{}>", self.describe(values)),
            Type::Union(branches) => {
                let names: Vec<String> = branches.iter().map(|b| self.describe(b)).collect();
                format!("union[{}]", names.join(", "))
            }
            Type::Named(i) => {
                let named = &self.named[*i];
                match &named.kind {
                    NamedKind::Record { .. } => format!("record {}", named.name),
                    NamedKind::Enum { .. } => format!("enum {}", named.name),
                    NamedKind::Fixed { size } => format!("fixed {}({size})", named.name),
                }
            }
        }
    }
}

fn json_of(text: &str) -> Result<Value, SchemaError> {
    serde_json::from_str(text).map_err(|e| {
        SchemaError::at(
            &format!("line {}, column {}", e.line(), e.column()),
            format!("not valid JSON: {}", json_reason(&e)),
        )
    })
}

fn json_reason(e: &serde_json::Error) -> String {
    // serde_json appends " at line L column C"; the location already says that.
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    }
}

/// Which checks a parse makes (see [`Schema::parse_stored`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Checks {
    /// Every check: for schemas that arrive.
    #[default]
    All,
    /// Those a stored schema already passed when it was stored.
    Stored,
}

#[derive(Default)]
struct Parser {
    checks: Checks,
    named: Vec<Named>,
    by_name: HashMap<String, usize>,
    /// Each record's location in the document, by its index in `named`, for errors found once
    /// the whole schema is known.
    record_at: HashMap<usize, String>,
    /// Each enum's symbols as a set, by its index in `named`, so that defaults are checked
    /// without a scan per value.
    enum_symbols: HashMap<usize, HashSet<String>>,
}

/// What a field's type needs so that a value of it can be written in full.
enum Needs {
    /// Nothing: the type has a finite value of its own (a primitive, enum, fixed, array, map,
    /// or a union with such a branch).
    Nothing,
    /// One of these records must have a finite value.
    AnyOf(Vec<usize>),
}

impl Parser {
    fn parse_type(
        &mut self,
        json: &Value,
        at: &str,
        namespace: Option<&str>,
    ) -> Result<Type, SchemaError> {
        match json {
            Value::String(name) => self.resolve(name, at, namespace),
            Value::Array(branches) => self.parse_union(branches, at, namespace),
            Value::Object(object) => self.parse_object(object, at, namespace),
            other => Err(SchemaError::at(
                at,
                format!(
                    "a type must be a name, an object or a union array, not {}",
                    kind_of(other)
                ),
            )),
        }
    }

    fn resolve(&self, name: &str, at: &str, namespace: Option<&str>) -> Result<Type, SchemaError> {
        if let Some(primitive) = primitive(name) {
            return Ok(primitive);
        }
        let mut tried = Vec::new();
        if !name.contains('.')
            && let Some(ns) = namespace.filter(|ns| !ns.is_empty())
        {
            let full = format!("{ns}.{name}");
            if let Some(&i) = self.by_name.get(&full) {
                return Ok(Type::Named(i));
            }
            tried.push(full);
        }
        if let Some(&i) = self.by_name.get(name) {
            return Ok(Type::Named(i));
        }
        tried.push(name.to_owned());
        let reason = if name.is_empty() {
            "empty type name".to_owned()
        } else if tried.len() > 1 {
            format!(
                "unknown type name '{name}' (looked for {}); a named type must be defined before it is used",
                tried.join(" and ")
            )
        } else {
            format!("unknown type name '{name}'; a named type must be defined before it is used")
        };
        Err(SchemaError::at(at, reason))
    }

    fn parse_union(
        &mut self,
        branches: &[Value],
        at: &str,
        namespace: Option<&str>,
    ) -> Result<Type, SchemaError> {
        if branches.is_empty() {
            return Err(SchemaError::at(at, "a union needs at least one branch"));
        }
        let mut parsed = Vec::with_capacity(branches.len());
        let mut seen: HashSet<String> = HashSet::with_capacity(branches.len());
        for (i, branch) in branches.iter().enumerate() {
            let here = format!("{at}/{i}");
            let ty = self.parse_type(branch, &here, namespace)?;
            let key = match &ty {
                Type::Union(_) => {
                    return Err(SchemaError::at(
                        &here,
                        "a union may not directly contain another union",
                    ));
                }
                Type::Named(n) => self.named[*n].name.clone(),
                Type::Array(_) => "array".into(),
                Type::Map(_) => "map".into(),
                other => format!("{other:?}").to_lowercase(),
            };
            if seen.contains(&key) {
                return Err(SchemaError::at(
                    &here,
                    format!(
                        "the union already has a branch of type {key}; each type may appear once"
                    ),
                ));
            }
            seen.insert(key);
            parsed.push(ty);
        }
        Ok(Type::Union(parsed))
    }

    fn parse_object(
        &mut self,
        object: &Map<String, Value>,
        at: &str,
        namespace: Option<&str>,
    ) -> Result<Type, SchemaError> {
        let type_at = format!("{at}/type");
        let Some(ty) = object.get("type") else {
            return Err(SchemaError::at(at, "missing the \"type\" attribute"));
        };
        let name = match ty {
            Value::String(name) => name.as_str(),
            // {"type": {...}} and {"type": [...]} wrap a type; Avro allows it.
            Value::Object(_) | Value::Array(_) => return self.parse_type(ty, &type_at, namespace),
            other => {
                return Err(SchemaError::at(
                    &type_at,
                    format!("\"type\" must be a string, not {}", kind_of(other)),
                ));
            }
        };
        match name {
            "record" | "error" => self.parse_record(object, at, namespace),
            "enum" => self.parse_enum(object, at, namespace),
            "fixed" => self.parse_fixed(object, at, namespace),
            "array" => {
                let items = object
                    .get("items")
                    .ok_or_else(|| SchemaError::at(at, "an array needs \"items\""))?;
                let items = self.parse_type(items, &format!("{at}/items"), namespace)?;
                Ok(Type::Array(Box::new(items)))
            }
            "map" => {
                let values = object
                    .get("values")
                    .ok_or_else(|| SchemaError::at(at, "a map needs \"values\""))?;
                let values = self.parse_type(values, &format!("{at}/values"), namespace)?;
                Ok(Type::Map(Box::new(values)))
            }
            // Logical types annotate a primitive; resolution works on the primitive.
            other => {
                let ty = self.resolve(other, &type_at, namespace)?;
                if ty == Type::Bytes && self.checks == Checks::All {
                    check_decimal(object, at, None)?;
                }
                Ok(ty)
            }
        }
    }

    fn define(
        &mut self,
        object: &Map<String, Value>,
        at: &str,
        enclosing: Option<&str>,
        kind: NamedKind,
    ) -> Result<(usize, Option<String>), SchemaError> {
        let name_at = format!("{at}/name");
        let name = match object.get("name") {
            Some(Value::String(name)) => name.as_str(),
            Some(other) => {
                return Err(SchemaError::at(
                    &name_at,
                    format!("\"name\" must be a string, not {}", kind_of(other)),
                ));
            }
            None => return Err(SchemaError::at(at, "a named type needs a \"name\"")),
        };
        let namespace = match object.get("namespace") {
            Some(Value::String(ns)) => Some(ns.as_str()),
            Some(Value::Null) | None => enclosing,
            Some(other) => {
                return Err(SchemaError::at(
                    &format!("{at}/namespace"),
                    format!("\"namespace\" must be a string, not {}", kind_of(other)),
                ));
            }
        };
        let full = qualify(name, namespace);
        check_full_name(&full).map_err(|reason| SchemaError::at(&name_at, reason))?;
        if primitive(full.as_str()).is_some() || primitive(name).is_some() {
            return Err(SchemaError::at(
                &name_at,
                format!("'{name}' is a primitive type and cannot name a new type"),
            ));
        }
        if self.by_name.contains_key(&full) {
            return Err(SchemaError::at(
                &name_at,
                format!("the type {full} is defined twice"),
            ));
        }
        let own_namespace = full.rsplit_once('.').map(|(ns, _)| ns.to_owned());
        let aliases = parse_aliases(object, at, own_namespace.as_deref(), true)?;
        let index = self.named.len();
        self.named.push(Named {
            name: full.clone(),
            aliases,
            kind,
        });
        self.by_name.insert(full, index);
        Ok((index, own_namespace))
    }

    fn parse_record(
        &mut self,
        object: &Map<String, Value>,
        at: &str,
        namespace: Option<&str>,
    ) -> Result<Type, SchemaError> {
        // Defined before its fields are parsed, so a field may refer to the record itself.
        let (index, own_ns) = self.define(
            object,
            at,
            namespace,
            NamedKind::Record { fields: Vec::new() },
        )?;
        let fields_at = format!("{at}/fields");
        let raw_fields = match object.get("fields") {
            Some(Value::Array(fields)) => fields,
            Some(other) => {
                return Err(SchemaError::at(
                    &fields_at,
                    format!("\"fields\" must be an array, not {}", kind_of(other)),
                ));
            }
            None => return Err(SchemaError::at(at, "a record needs \"fields\"")),
        };
        self.record_at.insert(index, at.to_owned());
        let mut fields: Vec<Field> = Vec::with_capacity(raw_fields.len());
        let mut names: HashSet<&str> = HashSet::with_capacity(raw_fields.len());
        for (i, raw) in raw_fields.iter().enumerate() {
            let field_at = format!("{fields_at}/{i}");
            let Value::Object(raw) = raw else {
                return Err(SchemaError::at(&field_at, "a field must be an object"));
            };
            let name = match raw.get("name") {
                Some(Value::String(name)) => name.as_str(),
                Some(_) => {
                    return Err(SchemaError::at(
                        &format!("{field_at}/name"),
                        "a field name must be a string",
                    ));
                }
                None => return Err(SchemaError::at(&field_at, "a field needs a \"name\"")),
            };
            check_simple_name(name).map_err(|r| SchemaError::at(&format!("{field_at}/name"), r))?;
            if !names.insert(name) {
                return Err(SchemaError::at(
                    &format!("{field_at}/name"),
                    format!("the field '{name}' appears twice"),
                ));
            }
            if self.checks == Checks::All {
                check_order(raw, &field_at)?;
            }
            let raw_type = raw.get("type").ok_or_else(|| {
                SchemaError::at(&field_at, format!("the field '{name}' needs a \"type\""))
            })?;
            let ty = self.parse_type(raw_type, &format!("{field_at}/type"), own_ns.as_deref())?;
            let default = raw.get("default").cloned();
            if let Some(value) = &default {
                self.check_default(&ty, value, &format!("{field_at}/default"))?;
            }
            let aliases = parse_aliases(raw, &field_at, None, false)?;
            fields.push(Field {
                name: name.to_owned(),
                aliases,
                ty,
                default,
            });
        }
        self.named[index].kind = NamedKind::Record { fields };
        Ok(Type::Named(index))
    }

    fn parse_enum(
        &mut self,
        object: &Map<String, Value>,
        at: &str,
        namespace: Option<&str>,
    ) -> Result<Type, SchemaError> {
        let symbols_at = format!("{at}/symbols");
        let Some(Value::Array(raw)) = object.get("symbols") else {
            return Err(SchemaError::at(
                at,
                "an enum needs \"symbols\", an array of names",
            ));
        };
        if raw.is_empty() && self.checks == Checks::All {
            // A value of an enum is one of its symbols: with none, it could never be written.
            return Err(SchemaError::at(
                &symbols_at,
                "an enum needs at least one symbol",
            ));
        }
        let mut symbols: Vec<String> = Vec::with_capacity(raw.len());
        let mut set: HashSet<String> = HashSet::with_capacity(raw.len());
        for (i, symbol) in raw.iter().enumerate() {
            let here = format!("{symbols_at}/{i}");
            let Value::String(symbol) = symbol else {
                return Err(SchemaError::at(&here, "an enum symbol must be a string"));
            };
            check_simple_name(symbol).map_err(|r| SchemaError::at(&here, r))?;
            if !set.insert(symbol.clone()) {
                return Err(SchemaError::at(
                    &here,
                    format!("the symbol {symbol} appears twice"),
                ));
            }
            symbols.push(symbol.clone());
        }
        let default = match object.get("default") {
            None | Some(Value::Null) => None,
            Some(Value::String(d)) if set.contains(d) => Some(d.clone()),
            Some(other) => {
                return Err(SchemaError::at(
                    &format!("{at}/default"),
                    format!("the enum default {other} is not one of its symbols"),
                ));
            }
        };
        let (index, _) =
            self.define(object, at, namespace, NamedKind::Enum { symbols, default })?;
        self.enum_symbols.insert(index, set);
        Ok(Type::Named(index))
    }

    fn parse_fixed(
        &mut self,
        object: &Map<String, Value>,
        at: &str,
        namespace: Option<&str>,
    ) -> Result<Type, SchemaError> {
        let size = match object.get("size") {
            Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64().unwrap_or_default(),
            Some(other) => {
                return Err(SchemaError::at(
                    &format!("{at}/size"),
                    format!("a fixed size must be a whole number of bytes, not {other}"),
                ));
            }
            None => return Err(SchemaError::at(at, "a fixed type needs a \"size\"")),
        };
        if self.checks == Checks::All {
            check_decimal(object, at, Some(size))?;
        }
        let (index, _) = self.define(object, at, namespace, NamedKind::Fixed { size })?;
        Ok(Type::Named(index))
    }

    fn check_default(&self, ty: &Type, value: &Value, at: &str) -> Result<(), SchemaError> {
        let bad = |expected: &str| {
            SchemaError::at(
                at,
                format!(
                    "the default {} does not fit the field's type: expected {expected}",
                    short(value)
                ),
            )
        };
        match (ty, value) {
            (Type::Null, Value::Null) | (Type::Boolean, Value::Bool(_)) => Ok(()),
            (Type::Int, Value::Number(n))
                if n.as_i64().is_some_and(|v| i32::try_from(v).is_ok()) =>
            {
                Ok(())
            }
            (Type::Long, Value::Number(n)) if n.as_i64().is_some() => Ok(()),
            (Type::Float | Type::Double, Value::Number(_)) => Ok(()),
            (Type::Bytes | Type::String, Value::String(_)) => Ok(()),
            (Type::Array(items), Value::Array(values)) => {
                for (i, v) in values.iter().enumerate() {
                    self.check_default(items, v, &format!("{at}/{i}"))?;
                }
                Ok(())
            }
            (Type::Map(values), Value::Object(entries)) => {
                for (k, v) in entries {
                    self.check_default(values, v, &format!("{at}/{k}"))?;
                }
                Ok(())
            }
            (Type::Union(branches), _) => {
                // Avro: a union's default must be a value of its first branch.
                let first = branches.first().ok_or_else(|| bad("a union branch"))?;
                self.check_default(first, value, at).map_err(|_| {
                    SchemaError::at(
                        at,
                        format!(
                            "the default {} does not fit the union's first branch; Avro requires a union's default to be of its first type",
                            short(value)
                        ),
                    )
                })
            }
            (Type::Named(i), _) => match (&self.named[*i].kind, value) {
                (NamedKind::Enum { .. }, Value::String(s))
                    if self.enum_symbols.get(i).is_some_and(|set| set.contains(s)) =>
                {
                    Ok(())
                }
                (NamedKind::Enum { .. }, _) => Err(bad("one of the enum's symbols")),
                (NamedKind::Fixed { .. }, Value::String(_)) => Ok(()),
                (NamedKind::Fixed { .. }, _) => Err(bad("a string of bytes")),
                (NamedKind::Record { fields }, Value::Object(entries)) => {
                    for field in fields {
                        match entries.get(&field.name) {
                            Some(v) => {
                                self.check_default(&field.ty, v, &format!("{at}/{}", field.name))?
                            }
                            None if field.default.is_some() => {}
                            None => {
                                return Err(SchemaError::at(
                                    at,
                                    format!(
                                        "the default lacks the field '{}', which has no default of its own",
                                        field.name
                                    ),
                                ));
                            }
                        }
                    }
                    Ok(())
                }
                (NamedKind::Record { .. }, _) => Err(bad("an object")),
            },
            (Type::Null, _) => Err(bad("null")),
            (Type::Boolean, _) => Err(bad("true or false")),
            (Type::Int, _) => Err(bad("a 32-bit integer")),
            (Type::Long, _) => Err(bad("a 64-bit integer")),
            (Type::Float | Type::Double, _) => Err(bad("a number")),
            (Type::Bytes | Type::String, _) => Err(bad("a string")),
            (Type::Array(_), _) => Err(bad("an array")),
            (Type::Map(_), _) => Err(bad("an object")),
        }
    }

    /// What a value of `ty` needs from records before it can be written in full.
    fn needs(&self, ty: &Type) -> Needs {
        match ty {
            Type::Named(i) if matches!(self.named[*i].kind, NamedKind::Record { .. }) => {
                Needs::AnyOf(vec![*i])
            }
            Type::Union(branches) => {
                let mut any = Vec::new();
                for branch in branches {
                    match self.needs(branch) {
                        Needs::Nothing => return Needs::Nothing,
                        Needs::AnyOf(records) => any.extend(records),
                    }
                }
                Needs::AnyOf(any)
            }
            // Arrays and maps may be empty; primitives, enums and fixed are values themselves.
            _ => Needs::Nothing,
        }
    }

    /// Refuses a record that has no finite value: every value of it contains another value of
    /// it, through fields with no null branch, array or map on the way (`{"name": "R",
    /// "fields": [{"name": "next", "type": "R"}]}`). No writer could write one and a reader
    /// would recurse until it ran out of input or stack.
    ///
    /// A record ends when each of its fields' types needs nothing or needs a record that ends
    /// (for a union: any of its records). This is the least fixed point of those rules, found
    /// in one pass over the fields with a count of unmet fields per record, so it is linear in
    /// the schema's size whatever the shape of the recursion.
    fn check_records_end(&self) -> Result<(), SchemaError> {
        // For each record, how many of its fields still wait for a record that ends.
        let mut waiting: HashMap<usize, usize> = HashMap::new();
        // For each record, the (record, field) pairs that would be met once it ends.
        let mut wakes: HashMap<usize, Vec<(usize, usize)>> = HashMap::new();
        let mut met: HashSet<(usize, usize)> = HashSet::new();
        let mut ends: HashSet<usize> = HashSet::new();
        let mut ready: Vec<usize> = Vec::new();
        for (index, named) in self.named.iter().enumerate() {
            let NamedKind::Record { fields } = &named.kind else {
                continue;
            };
            let mut count = 0;
            for (f, field) in fields.iter().enumerate() {
                if let Needs::AnyOf(records) = self.needs(&field.ty) {
                    count += 1;
                    for record in records {
                        wakes.entry(record).or_default().push((index, f));
                    }
                }
            }
            waiting.insert(index, count);
            if count == 0 {
                ends.insert(index);
                ready.push(index);
            }
        }
        while let Some(record) = ready.pop() {
            for &(owner, field) in wakes.get(&record).into_iter().flatten() {
                if !met.insert((owner, field)) {
                    continue;
                }
                let left = waiting.entry(owner).or_default();
                *left = left.saturating_sub(1);
                if *left == 0 && ends.insert(owner) {
                    ready.push(owner);
                }
            }
        }
        // The first record in the document that never ends, at its first field that waits.
        let Some((index, NamedKind::Record { fields })) = self
            .named
            .iter()
            .enumerate()
            .map(|(i, named)| (i, &named.kind))
            .find(|(i, _)| waiting.contains_key(i) && !ends.contains(i))
        else {
            return Ok(());
        };
        let record = &self.named[index];
        let at = self.record_at.get(&index).map_or("", String::as_str);
        // A record that does not end has a field that waits, so this always finds one.
        let Some((f, field)) = fields.iter().enumerate().find(|(f, field)| {
            !met.contains(&(index, *f)) && matches!(self.needs(&field.ty), Needs::AnyOf(_))
        }) else {
            return Err(SchemaError::at(
                at,
                format!("the record {} can never end", record.name),
            ));
        };
        Err(SchemaError::at(
            &format!("{at}/fields/{f}/type"),
            format!(
                "the record {} can never end: its field '{}' always holds another record, and such fields lead round in a circle; put a \"null\" branch, an array or a map on the way",
                record.name, field.name
            ),
        ))
    }
}

impl Parser {
    /// Refuses types nested deeper than [`MAX_NESTING`].
    fn check_nesting(&self, root: &Type) -> Result<(), SchemaError> {
        let mut heights = HashMap::new();
        let mut open = HashSet::new();
        self.height(root, 0, &mut heights, &mut open).map(|_| ())
    }

    /// How deep `ty`, met `level` deep, nests below itself; a named type already open on the
    /// way down (recursion) counts as a leaf. Stops at [`MAX_NESTING`], so its own recursion
    /// is bounded too.
    fn height(
        &self,
        ty: &Type,
        level: usize,
        heights: &mut HashMap<usize, usize>,
        open: &mut HashSet<usize>,
    ) -> Result<usize, SchemaError> {
        let too_deep = || {
            SchemaError::at(
                "",
                format!(
                    "types nest more than {MAX_NESTING} deep (records, arrays, maps and unions inside each other); readers would recurse that deep"
                ),
            )
        };
        if level > MAX_NESTING {
            return Err(too_deep());
        }
        let below = match ty {
            Type::Array(inner) | Type::Map(inner) => {
                self.height(inner, level + 1, heights, open)?
            }
            Type::Union(branches) => {
                let mut most = 0;
                for branch in branches {
                    most = most.max(self.height(branch, level + 1, heights, open)?);
                }
                most
            }
            Type::Named(i) => {
                if let Some(&known) = heights.get(i) {
                    if level + known > MAX_NESTING {
                        return Err(too_deep());
                    }
                    return Ok(known);
                }
                if !open.insert(*i) {
                    return Ok(0);
                }
                let mut most = 0;
                if let NamedKind::Record { fields } = &self.named[*i].kind {
                    for field in fields {
                        most = most.max(self.height(&field.ty, level + 1, heights, open)?);
                    }
                }
                open.remove(i);
                heights.insert(*i, most + 1);
                return Ok(most + 1);
            }
            _ => return Ok(0),
        };
        Ok(below + 1)
    }
}

/// Refuses a field `order` other than the three Avro defines (it decides how records sort).
fn check_order(field: &Map<String, Value>, at: &str) -> Result<(), SchemaError> {
    match field.get("order") {
        None => Ok(()),
        Some(Value::String(order))
            if matches!(order.as_str(), "ascending" | "descending" | "ignore") =>
        {
            Ok(())
        }
        Some(other) => Err(SchemaError::at(
            &format!("{at}/order"),
            format!(
                "a field's order must be \"ascending\", \"descending\" or \"ignore\", not {}",
                short(other)
            ),
        )),
    }
}

/// Checks a decimal logical type on `bytes` (`size` is `None`) or on a fixed of `size` bytes,
/// as Avro's Java library does: a precision of at least one digit, a scale from zero to the
/// precision, and for a fixed, no more digits than its bytes can hold.
fn check_decimal(
    object: &Map<String, Value>,
    at: &str,
    size: Option<u64>,
) -> Result<(), SchemaError> {
    if object.get("logicalType").and_then(Value::as_str) != Some("decimal") {
        return Ok(());
    }
    let precision = match object.get("precision") {
        Some(Value::Number(n)) if n.as_u64().is_some_and(|p| p >= 1) => n.as_u64().unwrap_or(1),
        Some(other) => {
            return Err(SchemaError::at(
                &format!("{at}/precision"),
                format!(
                    "a decimal's precision must be a whole number of digits, at least 1, not {}",
                    short(other)
                ),
            ));
        }
        None => return Err(SchemaError::at(at, "a decimal needs a \"precision\"")),
    };
    let scale = match object.get("scale") {
        None => 0,
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64().unwrap_or(0),
        Some(other) => {
            return Err(SchemaError::at(
                &format!("{at}/scale"),
                format!(
                    "a decimal's scale must be a whole number of digits, not {}",
                    short(other)
                ),
            ));
        }
    };
    if scale > precision {
        return Err(SchemaError::at(
            &format!("{at}/scale"),
            format!("a decimal's scale ({scale}) may not exceed its precision ({precision})"),
        ));
    }
    if let Some(size) = size {
        // The largest number of decimal digits a signed two's-complement value of `size` bytes
        // always holds: floor(log10(2^(8 size - 1) - 1)), computed as Avro's Java library does.
        let bits = size.saturating_mul(8).saturating_sub(1);
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let digits = (bits as f64 * std::f64::consts::LOG10_2).floor() as u64;
        if precision > digits {
            return Err(SchemaError::at(
                &format!("{at}/precision"),
                format!(
                    "a fixed of {size} bytes holds at most {digits} decimal digits, not a precision of {precision}"
                ),
            ));
        }
    }
    Ok(())
}

fn parse_aliases(
    object: &Map<String, Value>,
    at: &str,
    namespace: Option<&str>,
    qualified: bool,
) -> Result<Vec<String>, SchemaError> {
    let here = format!("{at}/aliases");
    match object.get("aliases") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(raw)) => raw
            .iter()
            .enumerate()
            .map(|(i, alias)| {
                let alias_at = format!("{here}/{i}");
                let Value::String(alias) = alias else {
                    return Err(SchemaError::at(&alias_at, "an alias must be a string"));
                };
                if qualified {
                    let full = qualify(alias, namespace);
                    check_full_name(&full).map_err(|r| SchemaError::at(&alias_at, r))?;
                    Ok(full)
                } else {
                    check_simple_name(alias).map_err(|r| SchemaError::at(&alias_at, r))?;
                    Ok(alias.clone())
                }
            })
            .collect(),
        Some(_) => Err(SchemaError::at(
            &here,
            "\"aliases\" must be an array of names",
        )),
    }
}

fn qualify(name: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if !name.contains('.') && !ns.is_empty() => format!("{ns}.{name}"),
        _ => name.to_owned(),
    }
}

fn check_simple_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not a valid Avro name: it must start with a letter or _ and contain only letters, digits and _"
        ))
    }
}

fn check_full_name(name: &str) -> Result<(), String> {
    name.split('.')
        .try_for_each(check_simple_name)
        .map_err(|_| format!("'{name}' is not a valid Avro name: each dot-separated part must start with a letter or _ and contain only letters, digits and _"))
}

fn primitive(name: &str) -> Option<Type> {
    Some(match name {
        "null" => Type::Null,
        "boolean" => Type::Boolean,
        "int" => Type::Int,
        "long" => Type::Long,
        "float" => Type::Float,
        "double" => Type::Double,
        "bytes" => Type::Bytes,
        "string" => Type::String,
        _ => return None,
    })
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.len() > 40 {
        let cut = text.char_indices().nth(37).map_or(text.len(), |(i, _)| i);
        format!("{}...", &text[..cut])
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> SchemaError {
        match Schema::parse(text) {
            Ok(_) => panic!("expected {text} to be rejected"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_valid_record_with_nested_and_recursive_types_parses() {
        let schema = Schema::parse(
            r#"{"type":"record","name":"Node","namespace":"t","fields":[
                {"name":"value","type":{"type":"bytes","logicalType":"decimal","precision":9,"scale":2}},
                {"name":"next","type":["null","Node"],"default":null},
                {"name":"tags","type":{"type":"map","values":{"type":"array","items":"string"}},"default":{}}
            ]}"#,
        )
        .expect("valid schema");
        assert_eq!(schema.full_name(), Some("t.Node"));
        assert_eq!(schema.describe(schema.root()), "record t.Node");
    }

    #[test]
    fn white_space_does_not_change_the_canonical_text() {
        let a = Schema::parse(r#"{"type": "enum", "name": "E", "symbols": ["A", "B"]}"#)
            .expect("valid");
        let b = Schema::parse("{\"type\":\"enum\",\n\"name\":\"E\",\"symbols\":[\"A\",\"B\"]}")
            .expect("valid");
        assert_eq!(a.canonical(), b.canonical());
    }

    #[test]
    fn text_that_is_not_json_names_line_and_column() {
        let e = error("{\"type\": \"record\",\n  \"name\": }");
        assert_eq!(e.location, "line 2, column 11");
        assert!(e.reason.starts_with("not valid JSON"), "{}", e.reason);
    }

    #[test]
    fn an_unknown_type_name_is_located() {
        let e = error(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"b","type":{"type":"array","items":"Missing"}}]}"#,
        );
        assert_eq!(e.location, "/fields/1/type/items");
        assert!(
            e.reason.contains("unknown type name 'Missing'"),
            "{}",
            e.reason
        );
    }

    #[test]
    fn a_default_that_does_not_fit_is_rejected() {
        let e = error(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":["string","null"],"default":null}]}"#,
        );
        assert_eq!(e.location, "/fields/0/default");
        assert!(e.reason.contains("first branch"), "{}", e.reason);
        let e = error(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int","default":3000000000}]}"#,
        );
        assert!(e.reason.contains("32-bit"), "{}", e.reason);
    }

    #[test]
    fn structural_mistakes_are_rejected_with_reasons() {
        assert_eq!(
            error(r#"{"name":"R"}"#).reason,
            "missing the \"type\" attribute"
        );
        assert_eq!(
            error(r#"{"type":"record","name":"R"}"#).reason,
            "a record needs \"fields\""
        );
        assert_eq!(
            error(r#"{"type":"enum","name":"E","symbols":["A","A"]}"#).location,
            "/symbols/1"
        );
        assert_eq!(
            error(r#"{"type":"fixed","name":"F","size":-1}"#).location,
            "/size"
        );
        assert_eq!(error(r#"["int","int"]"#).location, "/1");
        assert_eq!(error(r#"["int",["null"]]"#).location, "/1");
        assert_eq!(
            error(r#"{"type":"record","name":"9R","fields":[]}"#).location,
            "/name"
        );
        assert_eq!(
            error(r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"a","type":"int"}]}"#).location,
            "/fields/1/name"
        );
        assert_eq!(
            error("42").reason,
            "a type must be a name, an object or a union array, not a number"
        );
        assert!(
            error(r#"{"type":"enum","name":"E","symbols":["A"],"default":"B"}"#)
                .reason
                .contains("not one of its symbols")
        );
    }

    #[test]
    fn a_record_that_always_contains_itself_is_refused_where_it_recurses() {
        let e = error(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"next","type":"R"}]}"#,
        );
        assert_eq!(e.location, "/fields/1/type");
        assert!(
            e.reason.contains("the record R can never end"),
            "{}",
            e.reason
        );
        // Through another record, and through a union with no branch that ends.
        let e = error(
            r#"{"type":"record","name":"A","fields":[{"name":"b","type":{"type":"record","name":"B","fields":[
                {"name":"x","type":"string"},{"name":"a","type":["A"]}]}}]}"#,
        );
        assert_eq!(e.location, "/fields/0/type");
        assert!(
            e.reason.contains("the record A can never end"),
            "{}",
            e.reason
        );
        let e = error(
            r#"["null",{"type":"record","name":"T","fields":[{"name":"left","type":"T"},{"name":"right","type":["T",
                {"type":"record","name":"U","fields":[{"name":"t","type":"T"}]}]}]}]"#,
        );
        assert_eq!(e.location, "/1/fields/0/type");
    }

    #[test]
    fn a_recursive_record_with_a_way_out_is_accepted() {
        for text in [
            r#"{"type":"record","name":"R","fields":[{"name":"next","type":["null","R"]}]}"#,
            r#"{"type":"record","name":"R","fields":[{"name":"children","type":{"type":"array","items":"R"}}]}"#,
            r#"{"type":"record","name":"R","fields":[{"name":"children","type":{"type":"map","values":"R"}}]}"#,
            // B ends through its string branch, so A, which always holds a B, ends too.
            r#"{"type":"record","name":"A","fields":[{"name":"b","type":{"type":"record","name":"B","fields":[
                {"name":"a","type":["A","string"]}]}},{"name":"again","type":"B"}]}"#,
        ] {
            Schema::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        }
    }

    #[test]
    fn an_enum_without_symbols_is_refused() {
        let e = error(
            r#"{"type":"record","name":"R","fields":[{"name":"e","type":{"type":"enum","name":"E","symbols":[]}}]}"#,
        );
        assert_eq!(e.location, "/fields/0/type/symbols");
        assert_eq!(e.reason, "an enum needs at least one symbol");
    }

    #[test]
    fn a_decimal_needs_a_precision_of_at_least_one_and_a_scale_within_it() {
        let decimal = |attrs: &str| {
            format!(
                r#"{{"type":"record","name":"R","fields":[{{"name":"d","type":{{"type":"bytes","logicalType":"decimal"{attrs}}}}}]}}"#
            )
        };
        let e = error(&decimal(r#","precision":0"#));
        assert_eq!(e.location, "/fields/0/type/precision");
        assert!(e.reason.contains("at least 1"), "{}", e.reason);
        let e = error(&decimal(r#","precision":4,"scale":5"#));
        assert_eq!(e.location, "/fields/0/type/scale");
        assert!(
            e.reason.contains("may not exceed its precision"),
            "{}",
            e.reason
        );
        assert_eq!(
            error(&decimal(r#","precision":4,"scale":-1"#)).location,
            "/fields/0/type/scale"
        );
        assert_eq!(error(&decimal("")).location, "/fields/0/type");
        let e =
            error(r#"{"type":"fixed","name":"F","size":2,"logicalType":"decimal","precision":5}"#);
        assert_eq!(e.location, "/precision");
        assert!(
            e.reason.contains("at most 4 decimal digits"),
            "{}",
            e.reason
        );
        Schema::parse(&decimal(r#","precision":4,"scale":4"#)).expect("scale may equal precision");
        Schema::parse(
            r#"{"type":"fixed","name":"F","size":2,"logicalType":"decimal","precision":4}"#,
        )
        .expect("two bytes hold four digits");
    }

    #[test]
    fn a_field_order_other_than_the_three_avro_defines_is_refused() {
        let field = |order: &str| {
            format!(
                r#"{{"type":"record","name":"R","fields":[{{"name":"a","type":"int","order":{order}}}]}}"#
            )
        };
        let e = error(&field(r#""sideways""#));
        assert_eq!(e.location, "/fields/0/order");
        assert!(
            e.reason
                .contains("\"ascending\", \"descending\" or \"ignore\""),
            "{}",
            e.reason
        );
        assert_eq!(error(&field("1")).location, "/fields/0/order");
        for order in ["ascending", "descending", "ignore"] {
            Schema::parse(&field(&format!("\"{order}\""))).expect("a valid order");
        }
    }

    #[test]
    fn a_stored_schema_is_read_without_the_checks_added_since() {
        for text in [
            r#"{"type":"record","name":"R","fields":[{"name":"next","type":"R"}]}"#,
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int","order":"sideways"}]}"#,
            r#"{"type":"bytes","logicalType":"decimal","precision":0}"#,
        ] {
            assert!(Schema::parse(text).is_err(), "{text}");
            Schema::parse_stored(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        }
    }

    #[test]
    fn an_enum_default_in_a_large_array_default_is_checked_against_the_symbols() {
        let symbols: Vec<String> = (0..2_000).map(|i| format!("S{i}")).collect();
        let values: Vec<&String> = symbols.iter().rev().collect();
        let schema = serde_json::json!({"type": "record", "name": "R", "fields": [
            {"name": "e", "type": {"type": "array", "items": {"type": "enum", "name": "E", "symbols": symbols}},
             "default": values}]});
        Schema::from_json(&schema).expect("every default is a symbol");
        let mut wrong = values.clone();
        let unknown = "Nope".to_owned();
        wrong[1_500] = &unknown;
        let schema = serde_json::json!({"type": "record", "name": "R", "fields": [
            {"name": "e", "type": {"type": "array", "items": {"type": "enum", "name": "E", "symbols": symbols}},
             "default": wrong}]});
        let e = Schema::from_json(&schema).expect_err("an unknown symbol");
        assert_eq!(e.location, "/fields/0/default/1500");
    }

    #[test]
    fn names_resolve_against_the_enclosing_namespace() {
        let schema = Schema::parse(
            r#"{"type":"record","name":"Outer","namespace":"a.b","fields":[
                {"name":"x","type":{"type":"fixed","name":"Id","size":16}},
                {"name":"y","type":"Id"},
                {"name":"z","type":"a.b.Id"}]}"#,
        )
        .expect("valid");
        let NamedKind::Record { fields } = &schema.named(0).kind else {
            panic!("root is a record")
        };
        assert_eq!(schema.describe(&fields[1].ty), "fixed a.b.Id(16)");
        assert_eq!(fields[1].ty, fields[2].ty);
    }
}

//! One object between protobuf and its Kubernetes JSON, driven by the message
//! descriptors of the vendored `generated.proto` files: [`to_json`] walks a decoded
//! [`DynamicMessage`], [`to_wire`] writes the wire bytes straight from the JSON in
//! field-number order with sorted map keys, as Go's generated marshalers do.
//!
//! Kubernetes' JSON field names are the proto field names; the types whose JSON is not
//! a plain object (`IntOrString`, `Quantity`, `Time`, `MicroTime`, `Duration`,
//! `RawExtension`, `FieldsV1`, apiextensions' `JSON` and `JSONSchemaProps*`, the
//! user-info `ExtraValue`) are
//! converted by hand here, as their Go `MarshalJSON` methods do.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};

use base64::Engine;
use prost::encoding::{WireType, encode_key, encode_varint};
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, ReflectMessage, Value,
};
use serde_json::{Map, Number, Value as Json, json};

const META: &str = "k8s.io.apimachinery.pkg.apis.meta.v1";
const EXT: &str = "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// What went wrong converting one object; the message names the field.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("unknown field number {number} in {message}")]
    UnknownField { message: String, number: u32 },
    #[error("{field}: {problem}")]
    Field { field: String, problem: String },
}

fn bad(field: &str, problem: impl Into<String>) -> ConvertError {
    ConvertError::Field {
        field: field.to_owned(),
        problem: problem.into(),
    }
}

/// Embedded Go structs whose JSON is inlined into the parent (`json:",inline"`): the
/// proto has a field of that type, JSON has its fields one level up.
const INLINE: &[&str] = &[
    "k8s.io.api.core.v1.LocalObjectReference",
    "k8s.io.api.core.v1.VolumeSource",
    "k8s.io.api.core.v1.PersistentVolumeSource",
    "k8s.io.api.core.v1.EphemeralContainerCommon",
    "k8s.io.api.networking.v1.IngressRuleValue",
];

/// Facts about the Go field behind a proto field (`go-fields.txt`, written by `cargo
/// xtask vendor-proto` from the Go sources of the same tag): Go's marshaler writes a
/// non-pointer field even at its zero value, and its JSON drops a zero non-pointer
/// field only under `omitempty`.
#[derive(Debug, Clone, Copy)]
pub(super) struct GoField {
    pub pointer: bool,
    pub omitempty: bool,
}

static GO_FIELDS_TXT: &str = include_str!("../../../proto/go-fields.txt");

type GoFields = HashMap<&'static str, HashMap<u32, GoField>>;

static GO_FIELDS: LazyLock<GoFields> = LazyLock::new(|| {
    let mut table: GoFields = HashMap::new();
    for line in GO_FIELDS_TXT.lines().filter(|l| !l.starts_with('#')) {
        let mut parts = line.split_whitespace();
        let (Some(message), Some(number), Some(kind), Some(omit)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(number) = number.parse() else { continue };
        table.entry(message).or_default().insert(
            number,
            GoField {
                pointer: kind == "p",
                omitempty: omit == "o",
            },
        );
    }
    table
});

/// Each message's field numbers in Go declaration order (the table's line order).
static GO_ORDER: LazyLock<HashMap<&'static str, Vec<u32>>> = LazyLock::new(|| {
    let mut order: HashMap<&'static str, Vec<u32>> = HashMap::new();
    for line in GO_FIELDS_TXT.lines().filter(|l| !l.starts_with('#')) {
        let mut parts = line.split_whitespace();
        if let (Some(message), Some(Ok(number))) = (parts.next(), parts.next().map(str::parse)) {
            order.entry(message).or_default().push(number);
        }
    }
    order
});

/// How a field's JSON value is written: as it is, or as a (list or map of) message(s)
/// whose own fields have a Go order.
#[derive(Debug, Clone)]
pub enum Shape {
    Plain,
    Message(MessageDescriptor),
    List(MessageDescriptor),
    Map(MessageDescriptor),
}

/// One JSON field of a message, in Go struct order.
#[derive(Debug, Clone)]
pub struct JsonField {
    pub name: String,
    pub shape: Shape,
}

/// Messages whose JSON is not an object of their fields (written as they are).
fn is_special(desc: &MessageDescriptor) -> bool {
    let full = desc.full_name();
    full.starts_with("k8s.io.apimachinery.pkg.util.intstr.")
        || full.starts_with("k8s.io.apimachinery.pkg.api.resource.")
        || full.starts_with("k8s.io.apimachinery.pkg.runtime.")
        || full
            .strip_prefix(META)
            .is_some_and(|m| matches!(m, ".Time" | ".MicroTime" | ".Duration" | ".FieldsV1"))
        || full
            .strip_prefix(EXT)
            .is_some_and(|m| m.starts_with(".JSONSchemaPropsOr") || m == ".JSON")
}

/// A message's JSON fields in Go order, and where each name is among them.
#[derive(Debug)]
pub struct JsonFields {
    list: Vec<JsonField>,
    place: HashMap<String, usize>,
}

impl JsonFields {
    fn new(list: Vec<JsonField>) -> Self {
        let mut place = HashMap::with_capacity(list.len());
        for (i, field) in list.iter().enumerate() {
            place.entry(field.name.clone()).or_insert(i);
        }
        Self { list, place }
    }

    /// The fields, in Go order.
    pub fn list(&self) -> &[JsonField] {
        &self.list
    }

    /// Where field `name` is in [`JsonFields::list`].
    pub fn place(&self, name: &str) -> Option<usize> {
        self.place.get(name).copied()
    }
}

static JSON_FIELDS: LazyLock<std::sync::RwLock<HashMap<String, Arc<JsonFields>>>> =
    LazyLock::new(Default::default);

/// The JSON fields of `desc` in the order Go's `encoding/json` writes them: struct
/// declaration order (from `go-fields.txt`; fields it lacks after, by number), with
/// inlined embedded structs' fields in the embedded field's place. Cached per message.
pub fn json_fields(desc: &MessageDescriptor) -> Arc<JsonFields> {
    if let Some(hit) = JSON_FIELDS
        .read()
        .ok()
        .and_then(|c| c.get(desc.full_name()).cloned())
    {
        return hit;
    }
    let mut out = Vec::new();
    push_json_fields(desc, &mut out);
    let fields = Arc::new(JsonFields::new(out));
    if let Ok(mut cache) = JSON_FIELDS.write() {
        cache.insert(desc.full_name().to_owned(), fields.clone());
    }
    fields
}

fn push_json_fields(desc: &MessageDescriptor, out: &mut Vec<JsonField>) {
    let mut fields: Vec<FieldDescriptor> = desc.fields().collect();
    let order = GO_ORDER.get(desc.full_name());
    fields.sort_by_key(|f| {
        let go = order.and_then(|o| o.iter().position(|n| *n == f.number()));
        (go.unwrap_or(usize::MAX), f.number())
    });
    for field in fields {
        if is_inline(&field)
            && let Kind::Message(inner) = field.kind()
        {
            push_json_fields(&inner, out);
            continue;
        }
        let message = match field.kind() {
            Kind::Message(m) if field.is_map() => match m.map_entry_value_field().kind() {
                Kind::Message(v) if !is_special(&v) => Some(Shape::Map(v)),
                _ => None,
            },
            Kind::Message(m) if is_special(&m) => None,
            Kind::Message(m) if field.is_list() => Some(Shape::List(m)),
            Kind::Message(m) => Some(Shape::Message(m)),
            _ => None,
        };
        out.push(JsonField {
            name: json_name(desc, &field),
            shape: message.unwrap_or(Shape::Plain),
        });
    }
}

/// The Go facts of `field` in `msg`, if the table has them.
pub(super) fn go_field(msg: &MessageDescriptor, field: &FieldDescriptor) -> Option<GoField> {
    GO_FIELDS
        .get(msg.full_name())?
        .get(&field.number())
        .copied()
}

fn is_zero_scalar(value: &Value) -> bool {
    match value {
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::I32(n) | Value::EnumNumber(n) => *n == 0,
        Value::I64(n) => *n == 0,
        Value::U32(n) => *n == 0,
        Value::U64(n) => *n == 0,
        _ => false,
    }
}

/// Whether `field` is an embedded struct inlined into its parent's JSON.
pub(super) fn is_inline(field: &FieldDescriptor) -> bool {
    let Kind::Message(m) = field.kind() else {
        return false;
    };
    !field.is_list()
        && INLINE.contains(&m.full_name())
        && field.name().eq_ignore_ascii_case(m.name())
}

/// The JSON name of a proto field (JSONSchemaProps spells a few as JSON Schema does).
pub(super) fn json_name(msg: &MessageDescriptor, field: &FieldDescriptor) -> String {
    let name = field.name();
    if msg.full_name().strip_prefix(EXT) == Some(".JSONSchemaProps") {
        match name {
            "ref" => return "$ref".into(),
            "schema" => return "$schema".into(),
            _ => {}
        }
        if let Some(rest) = name.strip_prefix("xKubernetes") {
            let mut out = String::from("x-kubernetes");
            for c in rest.chars() {
                if c.is_ascii_uppercase() {
                    out.push('-');
                    out.push(c.to_ascii_lowercase());
                } else {
                    out.push(c);
                }
            }
            return out;
        }
    }
    name.to_owned()
}

// ---------------------------------------------------------------- protobuf → JSON

/// The JSON of a decoded message. Fields not on the wire are absent; singular strings
/// that Go wrote empty (its marshalers write every non-pointer scalar) are dropped, as
/// `omitempty` does; numbers and booleans on the wire are kept.
pub fn to_json(msg: &DynamicMessage) -> Result<Json, ConvertError> {
    let desc = msg.descriptor();
    if let Some(unknown) = msg.unknown_fields().next() {
        return Err(ConvertError::UnknownField {
            message: desc.full_name().to_owned(),
            number: unknown.number(),
        });
    }
    if let Some(special) = special_to_json(msg)? {
        return Ok(special);
    }
    let mut out = Map::new();
    for (field, value) in msg.fields() {
        if is_inline(&field)
            && let Value::Message(inner) = value
            && let Json::Object(inner) = to_json(inner)?
        {
            out.extend(inner);
            continue;
        }
        let name = json_name(&desc, &field);
        let v = if field.is_map() {
            map_to_json(&field, value)?
        } else if field.is_list() {
            let items = value.as_list().unwrap_or_default();
            let mut list = Vec::with_capacity(items.len());
            for item in items {
                match value_to_json(&field.kind(), item)? {
                    Some(v) => list.push(v),
                    None => list.push(Json::Null),
                }
            }
            Json::Array(list)
        } else {
            // As Go's JSON: a zero non-pointer field is left out under `omitempty`
            // only; a pointer on the wire is kept whatever it holds. Without the
            // facts, an empty string is left out (most are `omitempty`).
            let drop = match go_field(&desc, &field) {
                Some(go) => !go.pointer && go.omitempty && is_zero_scalar(value),
                None => matches!(value, Value::String(s) if s.is_empty()),
            };
            if drop {
                continue;
            }
            match value_to_json(&field.kind(), value)? {
                Some(v) => v,
                None => continue,
            }
        };
        out.insert(name, v);
    }
    Ok(Json::Object(out))
}

fn map_to_json(field: &FieldDescriptor, value: &Value) -> Result<Json, ConvertError> {
    let Kind::Message(entry) = field.kind() else {
        return Err(bad(field.name(), "a map without an entry message"));
    };
    let value_kind = entry.map_entry_value_field().kind();
    let mut sorted = BTreeMap::new();
    for (k, v) in value.as_map().into_iter().flatten() {
        let key = match k {
            MapKey::String(s) => s.clone(),
            MapKey::Bool(b) => b.to_string(),
            MapKey::I32(n) => n.to_string(),
            MapKey::I64(n) => n.to_string(),
            MapKey::U32(n) => n.to_string(),
            MapKey::U64(n) => n.to_string(),
        };
        let v = value_to_json(&value_kind, v)?.unwrap_or(Json::Null);
        sorted.insert(key, v);
    }
    Ok(Json::Object(sorted.into_iter().collect()))
}

/// One scalar or message value; `None` when the JSON leaves it out (a zero `Time`).
fn value_to_json(kind: &Kind, value: &Value) -> Result<Option<Json>, ConvertError> {
    Ok(Some(match value {
        Value::Bool(b) => json!(b),
        Value::I32(n) => json!(n),
        Value::I64(n) => json!(n),
        Value::U32(n) => json!(n),
        Value::U64(n) => json!(n),
        Value::F32(f) => Number::from_f64(f64::from(*f)).map_or(Json::Null, Json::Number),
        Value::F64(f) => Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::String(s) => json!(s),
        Value::Bytes(b) => json!(B64.encode(b)),
        Value::EnumNumber(n) => json!(n),
        Value::Message(m) => {
            if is_time(kind) && m.fields().next().is_none() {
                // Go writes a zero metav1.Time as an empty message; its JSON is null.
                return Ok(None);
            }
            to_json(m)?
        }
        Value::List(_) | Value::Map(_) => {
            return Err(bad("value", "a nested list or map outside a field"));
        }
    }))
}

fn is_time(kind: &Kind) -> bool {
    matches!(kind, Kind::Message(m) if matches!(
        m.full_name().strip_prefix(META),
        Some(".Time" | ".MicroTime")
    ))
}

fn int_field(msg: &DynamicMessage, number: u32) -> i64 {
    match msg.get_field_by_number(number).as_deref() {
        Some(Value::I64(n)) => *n,
        Some(Value::I32(n)) => i64::from(*n),
        _ => 0,
    }
}

fn string_field(msg: &DynamicMessage, number: u32) -> String {
    match msg.get_field_by_number(number).as_deref() {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

fn bytes_field(msg: &DynamicMessage, number: u32) -> Vec<u8> {
    match msg.get_field_by_number(number).as_deref() {
        Some(Value::Bytes(b)) => b.to_vec(),
        _ => Vec::new(),
    }
}

fn embedded_json(name: &str, raw: &[u8]) -> Result<Json, ConvertError> {
    if raw.is_empty() {
        return Ok(Json::Null);
    }
    if raw.starts_with(super::MAGIC) {
        return super::decode_object(raw).map_err(|e| bad(name, e.message));
    }
    serde_json::from_slice(raw).map_err(|e| bad(name, format!("the embedded JSON: {e}")))
}

fn special_to_json(msg: &DynamicMessage) -> Result<Option<Json>, ConvertError> {
    let full = msg.descriptor().full_name().to_owned();
    if is_extra_value(&full) {
        // `type ExtraValue []string`: a list in JSON, `{items}` on the wire.
        let list = msg.get_field_by_number(1);
        let strings: Vec<Json> = list
            .as_deref()
            .and_then(Value::as_list)
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v.as_str().map(|s| json!(s)))
            .collect();
        return Ok(Some(Json::Array(strings)));
    }
    let Some(short) = full
        .strip_prefix("k8s.io.apimachinery.pkg.")
        .or_else(|| full.strip_prefix("k8s.io.apiextensions_apiserver.pkg.apis."))
    else {
        return Ok(None);
    };
    let some = |v: Json| Ok(Some(v));
    match short {
        "util.intstr.IntOrString" => {
            if int_field(msg, 1) == 1 {
                some(json!(string_field(msg, 3)))
            } else {
                some(json!(int_field(msg, 2)))
            }
        }
        "api.resource.Quantity" => some(json!(string_field(msg, 1))),
        "apis.meta.v1.Time" => some(json!(format_time(int_field(msg, 1), 0, false)?)),
        "apis.meta.v1.MicroTime" => some(json!(format_time(
            int_field(msg, 1),
            int_field(msg, 2),
            true
        )?)),
        "apis.meta.v1.Duration" => some(json!(format_duration(int_field(msg, 1)))),
        "runtime.RawExtension" | "apis.meta.v1.FieldsV1" | "apiextensions.v1.JSON" => {
            some(embedded_json(&full, &bytes_field(msg, 1))?)
        }
        "apiextensions.v1.JSONSchemaPropsOrArray" => {
            let items = msg.get_field_by_number(2);
            match items.as_deref() {
                Some(Value::List(l)) if !l.is_empty() => {
                    let mut out = Vec::new();
                    for item in l {
                        if let Value::Message(m) = item {
                            out.push(to_json(m)?);
                        }
                    }
                    some(Json::Array(out))
                }
                _ => match msg.get_field_by_number(1).as_deref() {
                    Some(Value::Message(m)) if msg.has_field_by_number(1) => some(to_json(m)?),
                    _ => some(Json::Null),
                },
            }
        }
        "apiextensions.v1.JSONSchemaPropsOrBool" => match msg.get_field_by_number(2).as_deref() {
            Some(Value::Message(m)) if msg.has_field_by_number(2) => some(to_json(m)?),
            _ => some(json!(matches!(
                msg.get_field_by_number(1).as_deref(),
                Some(Value::Bool(true))
            ))),
        },
        "apiextensions.v1.JSONSchemaPropsOrStringArray" => {
            match msg.get_field_by_number(1).as_deref() {
                Some(Value::Message(m)) if msg.has_field_by_number(1) => some(to_json(m)?),
                _ => {
                    let list = msg.get_field_by_number(2);
                    let strings: Vec<Json> = list
                        .as_deref()
                        .and_then(Value::as_list)
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|v| v.as_str().map(|s| json!(s)))
                        .collect();
                    some(Json::Array(strings))
                }
            }
        }
        _ => Ok(None),
    }
}

/// The user-info `extra` values of authentication and authorization (`[]string` in
/// Go, a message with `repeated string items` on the wire).
fn is_extra_value(full: &str) -> bool {
    matches!(
        full,
        "k8s.io.api.authentication.v1.ExtraValue"
            | "k8s.io.api.authorization.v1.ExtraValue"
            | "k8s.io.api.certificates.v1.ExtraValue"
    )
}

/// RFC 3339 in UTC: seconds precision for `Time`, microseconds for `MicroTime`.
fn format_time(seconds: i64, nanos: i64, micro: bool) -> Result<String, ConvertError> {
    let ts = jiff::Timestamp::new(seconds, i32::try_from(nanos).unwrap_or(0))
        .map_err(|e| bad("time", e.to_string()))?;
    let fmt = if micro {
        "%Y-%m-%dT%H:%M:%S%.6fZ"
    } else {
        "%Y-%m-%dT%H:%M:%SZ"
    };
    Ok(ts.strftime(fmt).to_string())
}

fn parse_time(field: &str, text: &str) -> Result<(i64, i32), ConvertError> {
    let ts: jiff::Timestamp = text
        .parse()
        .map_err(|e| bad(field, format!("{text:?} is not an RFC 3339 time: {e}")))?;
    Ok((ts.as_second(), ts.subsec_nanosecond()))
}

/// Go's `time.Duration.String()`: `1h2m3.5s`, `1.5ms`, `0s`.
pub fn format_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    let frac = |value: u64, unit: u64| -> String {
        let whole = value / unit;
        let rest = value % unit;
        if rest == 0 {
            return whole.to_string();
        }
        let width = unit.ilog10() as usize;
        let digits = format!("{rest:0width$}");
        format!("{whole}.{}", digits.trim_end_matches('0'))
    };
    if n < 1_000 {
        return format!("{sign}{n}ns");
    }
    if n < 1_000_000 {
        return format!("{sign}{}µs", frac(n, 1_000));
    }
    if n < 1_000_000_000 {
        return format!("{sign}{}ms", frac(n, 1_000_000));
    }
    let secs = n / 1_000_000_000;
    let sub = n % 1_000_000_000;
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let mut out = String::from(sign);
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&frac(s * 1_000_000_000 + sub, 1_000_000_000));
    out.push('s');
    out
}

/// Go's `time.ParseDuration` for the units Kubernetes writes.
pub fn parse_duration(text: &str) -> Option<i64> {
    let (neg, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Some(0);
    }
    let mut total: f64 = 0.0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += number * scale;
    }
    let total = total.round() as i64;
    Some(if neg { -total } else { total })
}

// ---------------------------------------------------------------- JSON → protobuf

/// Writes `value` (the JSON of a `desc` message) as that message's wire bytes.
pub fn to_wire(
    desc: &MessageDescriptor,
    value: &Json,
    out: &mut Vec<u8>,
) -> Result<(), ConvertError> {
    if special_to_wire(desc, value, out)? {
        return Ok(());
    }
    let obj = value
        .as_object()
        .ok_or_else(|| bad(desc.name(), "expected a JSON object"))?;
    let mut fields: Vec<FieldDescriptor> = desc.fields().collect();
    fields.sort_by_key(FieldDescriptor::number);
    for field in fields {
        if is_inline(&field) {
            scalar_to_wire(&field, value, out)?;
            continue;
        }
        let v = match obj.get(&json_name(desc, &field)) {
            Some(v) if !v.is_null() => v,
            _ => {
                // Go writes a non-pointer field even when it is zero.
                if !field.is_list()
                    && !field.is_map()
                    && go_field(desc, &field).is_some_and(|go| !go.pointer)
                {
                    zero_to_wire(&field, out);
                }
                continue;
            }
        };
        let number = field.number();
        if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                continue;
            };
            let map = v
                .as_object()
                .ok_or_else(|| bad(field.name(), "expected a JSON object (a map)"))?;
            let key_field = entry.map_entry_key_field();
            let value_field = entry.map_entry_value_field();
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            for key in keys {
                let mut buf = Vec::new();
                scalar_to_wire(&key_field, &json!(key), &mut buf)?;
                if let Some(item) = map.get(key).filter(|v| !v.is_null()) {
                    scalar_to_wire(&value_field, item, &mut buf)?;
                }
                encode_key(number, WireType::LengthDelimited, out);
                encode_varint(buf.len() as u64, out);
                out.extend_from_slice(&buf);
            }
        } else if field.is_list() {
            let items = v
                .as_array()
                .ok_or_else(|| bad(field.name(), "expected a JSON array"))?;
            for item in items {
                scalar_to_wire(&field, item, out)?;
            }
        } else {
            scalar_to_wire(&field, v, out)?;
        }
    }
    Ok(())
}

/// One occurrence of `field` (a list item counts as one) with its key.
fn scalar_to_wire(
    field: &FieldDescriptor,
    v: &Json,
    out: &mut Vec<u8>,
) -> Result<(), ConvertError> {
    let number = field.number();
    let name = field.name();
    let int = |v: &Json| -> Result<i64, ConvertError> {
        v.as_i64()
            .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .ok_or_else(|| bad(name, format!("expected an integer, got {v}")))
    };
    match field.kind() {
        Kind::Bool => {
            let b = v
                .as_bool()
                .ok_or_else(|| bad(name, format!("expected a boolean, got {v}")))?;
            encode_key(number, WireType::Varint, out);
            encode_varint(u64::from(b), out);
        }
        Kind::Int32 | Kind::Int64 | Kind::Uint32 | Kind::Uint64 | Kind::Enum(_) => {
            encode_key(number, WireType::Varint, out);
            encode_varint(int(v)? as u64, out);
        }
        Kind::Double => {
            let f = v
                .as_f64()
                .ok_or_else(|| bad(name, format!("expected a number, got {v}")))?;
            encode_key(number, WireType::SixtyFourBit, out);
            out.extend_from_slice(&f.to_le_bytes());
        }
        Kind::Float => {
            let f = v
                .as_f64()
                .ok_or_else(|| bad(name, format!("expected a number, got {v}")))?;
            encode_key(number, WireType::ThirtyTwoBit, out);
            out.extend_from_slice(&(f as f32).to_le_bytes());
        }
        Kind::String => {
            let s = v
                .as_str()
                .ok_or_else(|| bad(name, format!("expected a string, got {v}")))?;
            length_delimited(number, s.as_bytes(), out);
        }
        Kind::Bytes => {
            let s = v
                .as_str()
                .ok_or_else(|| bad(name, "expected a base64 string"))?;
            let bytes = B64
                .decode(s)
                .map_err(|e| bad(name, format!("not base64: {e}")))?;
            length_delimited(number, &bytes, out);
        }
        Kind::Message(m) => {
            let mut buf = Vec::new();
            to_wire(&m, v, &mut buf).map_err(|e| match e {
                ConvertError::Field { field, problem } => bad(&format!("{name}.{field}"), problem),
                other => other,
            })?;
            length_delimited(number, &buf, out);
        }
        Kind::Sint32
        | Kind::Sint64
        | Kind::Fixed32
        | Kind::Fixed64
        | Kind::Sfixed32
        | Kind::Sfixed64 => {
            return Err(bad(name, "a field type Kubernetes does not use"));
        }
    }
    Ok(())
}

/// A non-pointer field at its zero value, as Go's marshaler writes it (a nil `[]byte`
/// is not written).
fn zero_to_wire(field: &FieldDescriptor, out: &mut Vec<u8>) {
    let number = field.number();
    match field.kind() {
        Kind::Bool | Kind::Int32 | Kind::Int64 | Kind::Uint32 | Kind::Uint64 | Kind::Enum(_) => {
            varint_field(number, 0, out)
        }
        Kind::String => length_delimited(number, b"", out),
        Kind::Double => {
            encode_key(number, WireType::SixtyFourBit, out);
            out.extend_from_slice(&0f64.to_le_bytes());
        }
        Kind::Float => {
            encode_key(number, WireType::ThirtyTwoBit, out);
            out.extend_from_slice(&0f32.to_le_bytes());
        }
        Kind::Message(m) => {
            let mut buf = Vec::new();
            zero_message(&m, &mut buf);
            length_delimited(number, &buf, out);
        }
        _ => {}
    }
}

/// The body of a zero struct: its non-pointer fields at their zero values, or what the
/// special types' marshalers write for their zero.
fn zero_message(desc: &MessageDescriptor, out: &mut Vec<u8>) {
    let full = desc.full_name();
    match full.strip_prefix("k8s.io.apimachinery.pkg.") {
        Some("util.intstr.IntOrString") => {
            varint_field(1, 0, out);
            varint_field(2, 0, out);
            length_delimited(3, b"", out);
            return;
        }
        Some("api.resource.Quantity") => {
            length_delimited(1, b"0", out);
            return;
        }
        Some("apis.meta.v1.Duration") => {
            varint_field(1, 0, out);
            return;
        }
        // A zero time and nil raw bytes write nothing.
        Some("apis.meta.v1.Time" | "apis.meta.v1.MicroTime" | "runtime.RawExtension")
        | Some("apis.meta.v1.FieldsV1") => return,
        _ => {}
    }
    let mut fields: Vec<FieldDescriptor> = desc.fields().collect();
    fields.sort_by_key(FieldDescriptor::number);
    for field in fields {
        if !field.is_list() && !field.is_map() && go_field(desc, &field).is_some_and(|g| !g.pointer)
        {
            zero_to_wire(&field, out);
        }
    }
}

fn length_delimited(number: u32, bytes: &[u8], out: &mut Vec<u8>) {
    encode_key(number, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn varint_field(number: u32, n: i64, out: &mut Vec<u8>) {
    encode_key(number, WireType::Varint, out);
    encode_varint(n as u64, out);
}

/// The types with their own JSON; `true` when `desc` was one of them.
fn special_to_wire(
    desc: &MessageDescriptor,
    v: &Json,
    out: &mut Vec<u8>,
) -> Result<bool, ConvertError> {
    let full = desc.full_name();
    if is_extra_value(full) {
        let items = v
            .as_array()
            .ok_or_else(|| bad(full, format!("expected a list of strings, got {v}")))?;
        for item in items {
            let s = item
                .as_str()
                .ok_or_else(|| bad(full, format!("expected a string, got {item}")))?;
            length_delimited(1, s.as_bytes(), out);
        }
        return Ok(true);
    }
    let Some(short) = full
        .strip_prefix("k8s.io.apimachinery.pkg.")
        .or_else(|| full.strip_prefix("k8s.io.apiextensions_apiserver.pkg.apis."))
    else {
        return Ok(false);
    };
    match short {
        "util.intstr.IntOrString" => match v {
            // Go writes all three fields of the struct.
            Json::String(s) => {
                varint_field(1, 1, out);
                varint_field(2, 0, out);
                length_delimited(3, s.as_bytes(), out);
            }
            Json::Number(n) => {
                let n = n
                    .as_i64()
                    .ok_or_else(|| bad(full, format!("{n} is not an integer")))?;
                varint_field(1, 0, out);
                varint_field(2, i64::from(n as i32), out);
                length_delimited(3, b"", out);
            }
            other => {
                return Err(bad(
                    full,
                    format!("expected an int or a string, got {other}"),
                ));
            }
        },
        "api.resource.Quantity" => {
            let s = match v {
                Json::String(s) => s.clone(),
                Json::Number(n) => n.to_string(),
                other => return Err(bad(full, format!("expected a quantity, got {other}"))),
            };
            length_delimited(1, s.as_bytes(), out);
        }
        "apis.meta.v1.Time" | "apis.meta.v1.MicroTime" => {
            let s = v
                .as_str()
                .ok_or_else(|| bad(full, format!("expected an RFC 3339 string, got {v}")))?;
            let (secs, nanos) = parse_time(full, s)?;
            varint_field(1, secs, out);
            let nanos = if short == "apis.meta.v1.Time" {
                0
            } else {
                nanos
            };
            varint_field(2, i64::from(nanos), out);
        }
        "apis.meta.v1.Duration" => {
            let s = v
                .as_str()
                .ok_or_else(|| bad(full, format!("expected a duration string, got {v}")))?;
            let n =
                parse_duration(s).ok_or_else(|| bad(full, format!("{s:?} is not a duration")))?;
            varint_field(1, n, out);
        }
        "runtime.RawExtension" | "apis.meta.v1.FieldsV1" | "apiextensions.v1.JSON" => {
            let raw = serde_json::to_vec(v).map_err(|e| bad(full, e.to_string()))?;
            length_delimited(1, &raw, out);
        }
        "apiextensions.v1.JSONSchemaPropsOrArray" => {
            let props = schema_props(desc)?;
            match v {
                Json::Array(items) => {
                    for item in items {
                        let mut buf = Vec::new();
                        to_wire(&props, item, &mut buf)?;
                        length_delimited(2, &buf, out);
                    }
                }
                other => {
                    let mut buf = Vec::new();
                    to_wire(&props, other, &mut buf)?;
                    length_delimited(1, &buf, out);
                }
            }
        }
        "apiextensions.v1.JSONSchemaPropsOrBool" => {
            let props = schema_props(desc)?;
            match v {
                Json::Bool(b) => varint_field(1, i64::from(*b), out),
                other => {
                    varint_field(1, 1, out);
                    let mut buf = Vec::new();
                    to_wire(&props, other, &mut buf)?;
                    length_delimited(2, &buf, out);
                }
            }
        }
        "apiextensions.v1.JSONSchemaPropsOrStringArray" => {
            let props = schema_props(desc)?;
            match v {
                Json::Array(items) => {
                    for item in items {
                        let s = item
                            .as_str()
                            .ok_or_else(|| bad(full, "expected a list of strings"))?;
                        length_delimited(2, s.as_bytes(), out);
                    }
                }
                other => {
                    let mut buf = Vec::new();
                    to_wire(&props, other, &mut buf)?;
                    length_delimited(1, &buf, out);
                }
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

fn schema_props(desc: &MessageDescriptor) -> Result<MessageDescriptor, ConvertError> {
    desc.parent_pool()
        .get_message_by_name(&format!("{EXT}.JSONSchemaProps"))
        .ok_or_else(|| {
            bad(
                desc.full_name(),
                "JSONSchemaProps is missing from the descriptors",
            )
        })
}

//! Kubernetes' protobuf encoding (`application/vnd.kubernetes.protobuf`) for every
//! built-in kind, in request bodies, responses and watch streams. A body is the `k8s\0`
//! magic and a `runtime.Unknown` envelope {typeMeta {apiVersion, kind}, raw,
//! contentEncoding, contentType} whose `raw` is the object in the field numbering of
//! its `generated.proto`.
//!
//! Nothing here is written per kind: the upstream `generated.proto` files of Kubernetes
//! 1.37 (tag `v0.37.0-beta.0` of `k8s.io/api`, `k8s.io/apimachinery` and
//! `k8s.io/apiextensions-apiserver`, the newest 1.37 tag published; APIService's from
//! `k8s.io/kube-aggregator`'s `v0.37.0-alpha.2`) are vendored under
//! `control-plane/proto/` and compiled by `build.rs` with `protoc --descriptor_set_out`
//! into one `FileDescriptorSet`, which [`pool`] loads with prost-reflect. protoc rather
//! than the pure-Rust `protox`: the workspace already needs protoc (`cargo xtask setup`
//! installs it), and it is one process at build time instead of a parser crate and its
//! dependency tree in every build. The envelope's (apiVersion, kind) names the message
//! (`k8s.io.api.<group>.<version>.<Kind>`, see [`message_for`]); [`json`] converts it
//! to and from the object's JSON, which is what the rest of the apiserver works on.
//!
//! Entry points: [`decode`] (request bodies), [`encode`] (responses), [`watch_frame`]
//! (watch events), [`accepts`] (content negotiation). Kinds without a message — custom
//! resources — answer 415 on input and JSON on output, as kube-apiserver does.

mod json;

use std::sync::LazyLock;

use axum::http::HeaderMap;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use serde_json::{Value, json};

use super::status::{ApiError, ApiResult};

pub use json::{JsonFields, Shape, format_duration, json_fields, parse_duration};

/// The protobuf media type.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
/// The media type of a protobuf watch stream.
pub const WATCH_CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf;stream=watch";

const MAGIC: &[u8] = b"k8s\0";
const META: &str = "k8s.io.apimachinery.pkg.apis.meta.v1";
const UNKNOWN: &str = "k8s.io.apimachinery.pkg.runtime.Unknown";

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/k8s.fds"));

static POOL: LazyLock<Result<DescriptorPool, String>> =
    LazyLock::new(|| DescriptorPool::decode(DESCRIPTORS).map_err(|e| e.to_string()));

/// The descriptors of every vendored `generated.proto`.
pub fn pool() -> ApiResult<&'static DescriptorPool> {
    POOL.as_ref()
        .map_err(|e| ApiError::internal(format!("protobuf descriptors: {e}")))
}

/// kube-apiserver's answer to a body in a media type the resource cannot decode.
fn unsupported() -> ApiError {
    ApiError::unsupported_media_type(
        "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml",
    )
}

/// The message of a top-level kind: `v1`/`Pod` → `k8s.io.api.core.v1.Pod`, `apps/v1`/
/// `Deployment` → `k8s.io.api.apps.v1.Deployment`, `rbac.authorization.k8s.io/v1` →
/// `k8s.io.api.rbac.v1`, apiextensions to its own package, and meta/v1's own kinds
/// (`Status`, `DeleteOptions`, `WatchEvent`, lists' `List`) under any version.
pub fn message_for(api_version: &str, kind: &str) -> Option<MessageDescriptor> {
    let pool = pool().ok()?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let package = match group {
        "" => Some("k8s.io.api.core".to_owned()),
        "apiextensions.k8s.io" => {
            Some("k8s.io.apiextensions_apiserver.pkg.apis.apiextensions".into())
        }
        "apiregistration.k8s.io" => Some("k8s.io.kube_aggregator.pkg.apis.apiregistration".into()),
        g if !g.contains('.') => Some(format!("k8s.io.api.{g}")),
        g => g
            .strip_suffix(".k8s.io")
            .and_then(|rest| rest.split('.').next())
            .map(|first| format!("k8s.io.api.{first}")),
    };
    let typed = package
        .and_then(|p| pool.get_message_by_name(&format!("{p}.{version}.{kind}")))
        // A top-level kind carries ObjectMeta or ListMeta; PodSpec & co. are not kinds.
        .filter(|m| m.get_field_by_name("metadata").is_some());
    typed.or_else(|| {
        matches!(group, "" | "meta.k8s.io")
            .then(|| pool.get_message_by_name(&format!("{META}.{kind}")))
            .flatten()
            .filter(|m| {
                matches!(
                    m.name(),
                    "Status" | "DeleteOptions" | "WatchEvent" | "List" | "APIResourceList"
                )
            })
    })
}

fn decode_error(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("protobuf: {what}: {e}"))
}

/// Decodes a `k8s\0`-enveloped object into its JSON; the error is the bare message.
fn decode_object(body: &[u8]) -> ApiResult<Value> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| ApiError::bad_request("protobuf: the body lacks the k8s\\0 prefix"))?;
    let pool = pool()?;
    let unknown = pool
        .get_message_by_name(UNKNOWN)
        .ok_or_else(|| ApiError::internal("protobuf: runtime.Unknown is missing"))?;
    let envelope = DynamicMessage::decode(unknown, rest)
        .map_err(|e| decode_error("the runtime.Unknown envelope", e))?;
    let text = |m: &DynamicMessage, n: u32| match m.get_field_by_number(n).as_deref() {
        Some(prost_reflect::Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    let (api_version, kind) = match envelope.get_field_by_number(1).as_deref() {
        Some(prost_reflect::Value::Message(tm)) => (text(tm, 1), text(tm, 2)),
        _ => (String::new(), String::new()),
    };
    let enc = text(&envelope, 3);
    if !enc.is_empty() {
        return Err(ApiError::bad_request(format!(
            "protobuf: content encoding {enc:?} is not supported"
        )));
    }
    let (api_version, kind) = (api_version.as_str(), kind.as_str());
    if kind.is_empty() {
        return Err(ApiError::bad_request(
            "protobuf: the envelope names no kind (typeMeta.kind is empty)",
        ));
    }
    let desc = message_for(api_version, kind).ok_or_else(unsupported)?;
    let raw = match envelope.get_field_by_number(2).as_deref() {
        Some(prost_reflect::Value::Bytes(b)) => b.clone(),
        _ => Default::default(),
    };
    let msg = DynamicMessage::decode(desc, raw)
        .map_err(|e| decode_error(&format!("{api_version} {kind}"), e))?;
    let mut obj =
        json::to_json(&msg).map_err(|e| decode_error(&format!("{api_version} {kind}"), e))?;
    if let Some(map) = obj.as_object_mut() {
        map.insert("apiVersion".into(), json!(api_version));
        map.insert("kind".into(), json!(kind));
    }
    Ok(obj)
}

/// Decodes a protobuf request body into the object's JSON: 400 naming the problem when
/// the bytes do not decode (or carry a field number the kind does not have), 415 when
/// the kind has no protobuf message (custom resources).
pub fn decode(body: &[u8]) -> ApiResult<Value> {
    decode_object(body)
}

/// Encodes an object (its JSON, with `apiVersion` and `kind`) as a `k8s\0`-enveloped
/// protobuf body; `None` when the kind has no message (custom resources, Tables).
pub fn encode(obj: &Value) -> Option<ApiResult<Vec<u8>>> {
    let api_version = obj.get("apiVersion").and_then(Value::as_str)?;
    let kind = obj.get("kind").and_then(Value::as_str)?;
    let desc = message_for(api_version, kind)?;
    Some(encode_with(&desc, api_version, kind, obj))
}

fn encode_with(
    desc: &MessageDescriptor,
    api_version: &str,
    kind: &str,
    obj: &Value,
) -> ApiResult<Vec<u8>> {
    let mut raw = Vec::new();
    json::to_wire(desc, obj, &mut raw)
        .map_err(|e| ApiError::internal(format!("protobuf: encoding {kind}: {e}")))?;
    Ok(envelope(api_version, kind, &raw))
}

/// The bare message bytes (no envelope) of a stored object's JSON, which carries its
/// `apiVersion` and `kind`; `None` when the kind has no message. The watch cache keeps
/// these per object, so an object is encoded once however often it is served.
pub fn message_bytes(raw_json: &[u8]) -> Option<ApiResult<Vec<u8>>> {
    let obj: Value = match serde_json::from_slice(raw_json) {
        Ok(v) => v,
        Err(e) => return Some(Err(ApiError::internal(format!("stored object: {e}")))),
    };
    let api_version = obj.get("apiVersion").and_then(Value::as_str)?;
    let kind = obj.get("kind").and_then(Value::as_str)?;
    let desc = message_for(api_version, kind)?;
    let mut out = Vec::with_capacity(raw_json.len() / 2);
    Some(
        json::to_wire(&desc, &obj, &mut out)
            .map(|()| out)
            .map_err(|e| ApiError::internal(format!("protobuf: encoding {kind}: {e}"))),
    )
}

fn put_bytes(number: u32, bytes: &[u8], out: &mut Vec<u8>) {
    use prost::encoding::{WireType, encode_key, encode_varint};
    encode_key(number, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// `k8s\0` + `runtime.Unknown` {typeMeta {apiVersion, kind}, raw, contentEncoding,
/// contentType} around a message's bytes, field for field as Go's marshaler writes it
/// (the empty strings included).
pub fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let mut type_meta = Vec::with_capacity(api_version.len() + kind.len() + 4);
    put_bytes(1, api_version.as_bytes(), &mut type_meta);
    put_bytes(2, kind.as_bytes(), &mut type_meta);
    let mut out = Vec::with_capacity(raw.len() + type_meta.len() + 16);
    out.extend_from_slice(MAGIC);
    put_bytes(1, &type_meta, &mut out);
    put_bytes(2, raw, &mut out);
    put_bytes(3, b"", &mut out);
    put_bytes(4, b"", &mut out);
    out
}

/// A `<Kind>List` from its `ListMeta` (JSON) and its items' message bytes (from
/// [`message_bytes`], concatenated, not re-encoded), enveloped; `None` when the list
/// kind has no message.
pub fn list<T: AsRef<[u8]>>(
    api_version: &str,
    list_kind: &str,
    meta: &Value,
    items: &[T],
) -> Option<ApiResult<Vec<u8>>> {
    let desc = message_for(api_version, list_kind)?;
    let (Some(meta_field), Some(items_field)) = (
        desc.get_field_by_name("metadata"),
        desc.get_field_by_name("items"),
    ) else {
        return Some(Err(ApiError::internal(format!(
            "protobuf: {list_kind} has no metadata or items"
        ))));
    };
    let prost_reflect::Kind::Message(meta_desc) = meta_field.kind() else {
        return Some(Err(ApiError::internal(
            "protobuf: ListMeta is not a message",
        )));
    };
    let mut list_meta = Vec::new();
    if let Err(e) = json::to_wire(&meta_desc, meta, &mut list_meta) {
        return Some(Err(ApiError::internal(format!("protobuf: ListMeta: {e}"))));
    }
    let size = items.iter().map(|i| i.as_ref().len() + 6).sum::<usize>();
    let mut raw = Vec::with_capacity(size + list_meta.len() + 8);
    put_bytes(meta_field.number(), &list_meta, &mut raw);
    for item in items {
        put_bytes(items_field.number(), item.as_ref(), &mut raw);
    }
    Some(Ok(envelope(api_version, list_kind, &raw)))
}

/// One watch event as a protobuf stream frame: a 4-byte big-endian length and a
/// `meta.v1.WatchEvent` {type, object: RawExtension holding the enveloped object}.
/// `None` when the object's kind has no message.
pub fn watch_frame(event_type: &str, obj: &Value) -> Option<ApiResult<Vec<u8>>> {
    let object = match encode(obj)? {
        Ok(bytes) => bytes,
        Err(e) => return Some(Err(e)),
    };
    Some(watch_frame_raw(event_type, &object))
}

/// A watch frame around an already enveloped object ([`envelope`]).
pub fn watch_frame_raw(event_type: &str, object: &[u8]) -> ApiResult<Vec<u8>> {
    use prost::encoding::{WireType, encode_key, encode_varint};
    let mut event = Vec::with_capacity(object.len() + 32);
    encode_key(1, WireType::LengthDelimited, &mut event);
    encode_varint(event_type.len() as u64, &mut event);
    event.extend_from_slice(event_type.as_bytes());
    let mut raw = Vec::with_capacity(object.len() + 8);
    encode_key(1, WireType::LengthDelimited, &mut raw);
    encode_varint(object.len() as u64, &mut raw);
    raw.extend_from_slice(object);
    encode_key(2, WireType::LengthDelimited, &mut event);
    encode_varint(raw.len() as u64, &mut event);
    event.extend_from_slice(&raw);
    let len = u32::try_from(event.len())
        .map_err(|_| ApiError::internal("protobuf: a watch event larger than 4 GiB"))?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(&event);
    Ok(out)
}

/// Whether the client's `Accept` prefers protobuf over JSON: the first listed media
/// type (client-go sends `application/vnd.kubernetes.protobuf, application/json`).
pub fn accepts(headers: &HeaderMap) -> bool {
    headers
        .get_all("accept")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|m| {
            m.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .find(|m| !m.is_empty())
        .is_some_and(|m| m == CONTENT_TYPE)
}

#[cfg(test)]
mod tests;

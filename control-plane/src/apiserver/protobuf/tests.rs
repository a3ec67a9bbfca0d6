use prost_reflect::{FieldDescriptor, Kind};

use super::*;
use crate::apiserver::registry::Registry;

fn field(n: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![((n << 3) | 2) as u8, payload.len() as u8];
    out.extend_from_slice(payload);
    out
}

fn envelope(api_version: &[u8], kind: &[u8], raw: &[u8]) -> Vec<u8> {
    let type_meta = [field(1, api_version), field(2, kind)].concat();
    [MAGIC.to_vec(), field(1, &type_meta), field(2, raw)].concat()
}

#[test]
fn decodes_int_or_string_fields_of_a_budget() {
    let meta = field(1, b"pdb");
    // minAvailable: {type 0, intVal 2}; maxUnavailable: {type 1, strVal "25%"}.
    let min = [0x08, 0x00, 0x10, 0x02];
    let max = [vec![0x08, 0x01], field(3, b"25%")].concat();
    let spec = [field(1, &min), field(3, &max)].concat();
    let pdb = [field(1, &meta), field(2, &spec)].concat();
    let obj = decode(&envelope(b"policy/v1", b"PodDisruptionBudget", &pdb)).expect("decodes");
    assert_eq!(
        obj["spec"],
        json!({"minAvailable": 2, "maxUnavailable": "25%"})
    );
}

#[test]
fn decodes_a_configmap() {
    let meta = field(1, b"c1");
    let entry = [field(1, b"a"), field(2, b"b")].concat();
    let cm = [field(1, &meta), field(2, &entry)].concat();
    let obj = decode(&envelope(b"v1", b"ConfigMap", &cm)).expect("decodes");
    assert_eq!(
        obj,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "c1"}, "data": {"a": "b"}})
    );
    assert!(decode(b"k8s\0\x0a\x05").is_err());
}

#[test]
fn decodes_an_eviction() {
    let meta = [field(1, b"web-1"), field(3, b"default")].concat();
    let pre = field(1, b"u-1");
    // gracePeriodSeconds 0 (a varint), preconditions, dryRun ["All"].
    let opts = [vec![0x08, 0x00], field(2, &pre), field(5, b"All")].concat();
    let ev = [field(1, &meta), field(2, &opts)].concat();
    let obj = decode(&envelope(b"policy/v1", b"Eviction", &ev)).expect("decodes");
    assert_eq!(
        obj,
        json!({"apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": "web-1", "namespace": "default"},
            "deleteOptions": {"gracePeriodSeconds": 0, "preconditions": {"uid": "u-1"},
                "dryRun": ["All"]}})
    );
}

#[test]
fn bad_input_is_a_400_naming_the_problem() {
    // Truncated: the envelope says 5 bytes follow, none do.
    let err = decode(b"k8s\0\x0a\x05").expect_err("truncated");
    assert_eq!(err.code, 400, "{err}");
    assert!(err.message.contains("protobuf"), "{err}");
    // No magic.
    assert_eq!(decode(b"{}").expect_err("no magic").code, 400);
    // An unknown field number in a ConfigMap (field 99).
    // Tag of field 99, wire type 2: varint 99 << 3 | 2 = 794.
    let cm = [field(1, &field(1, b"c1")), vec![0x9a, 0x06, 0x01, b'x']].concat();
    let err = decode(&envelope(b"v1", b"ConfigMap", &cm)).expect_err("unknown field");
    assert_eq!(err.code, 400);
    assert!(
        err.message.contains("unknown field number 99"),
        "{}",
        err.message
    );
    // Garbage in raw.
    let err = decode(&envelope(b"v1", b"ConfigMap", &[0xff, 0xff, 0xff])).expect_err("garbage");
    assert_eq!(err.code, 400, "{err}");
    // A custom resource: 415 with kube-apiserver's message.
    let err = decode(&envelope(b"example.com/v1", b"Widget", b"")).expect_err("CR");
    assert_eq!(err.code, 415);
    assert!(
        err.message
            .contains("accepted media types include: application/json")
    );
    // Not a kind.
    assert_eq!(
        decode(&envelope(b"v1", b"PodSpec", b""))
            .expect_err("PodSpec")
            .code,
        415
    );
}

#[test]
fn random_bytes_never_panic() {
    // A small xorshift fuzz loop: random bodies, random mutations of a valid one.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..20_000 {
        let mut body = if i % 2 == 0 {
            valid_service()
        } else {
            let len = (next() % 200) as usize;
            let mut b = MAGIC.to_vec();
            b.extend((0..len).map(|_| next() as u8));
            b
        };
        for _ in 0..(next() % 4) {
            if body.is_empty() {
                break;
            }
            let at = (next() as usize) % body.len();
            match next() % 3 {
                0 => body[at] = next() as u8,
                1 => body.truncate(at),
                _ => body.insert(at, next() as u8),
            }
        }
        if let Err(e) = decode(&body) {
            assert!(matches!(e.code, 400 | 415), "{e}");
        }
    }
}

#[test]
fn durations_are_go_strings() {
    for (nanos, text) in [
        (0, "0s"),
        (1_500_000_000, "1.5s"),
        (3_600_000_000_000, "1h0m0s"),
        (90_000_000_000, "1m30s"),
        (2_000_000, "2ms"),
        (1_500, "1.5µs"),
    ] {
        assert_eq!(format_duration(nanos), text);
        assert_eq!(parse_duration(text), Some(nanos), "{text}");
    }
}

/// A representative value for every field of `desc`: each string names its field,
/// maps and lists get two entries, and the special types get non-trivial values
/// (IntOrString alternates int and string), so the round trip covers every field of
/// every kind, not a hand-picked few.
fn sample(desc: &MessageDescriptor, depth: usize, seen: &mut Vec<String>) -> Value {
    let full = desc.full_name().to_owned();
    match full.as_str() {
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => {
            return if depth.is_multiple_of(2) {
                json!(8080)
            } else {
                json!("http")
            };
        }
        "k8s.io.apimachinery.pkg.api.resource.Quantity" => return json!("250m"),
        "k8s.io.apimachinery.pkg.apis.meta.v1.Time" => return json!("2024-05-06T07:08:09Z"),
        "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime" => {
            return json!("2024-05-06T07:08:09.123456Z");
        }
        "k8s.io.apimachinery.pkg.apis.meta.v1.Duration" => return json!("1m30s"),
        "k8s.io.apimachinery.pkg.runtime.RawExtension" => {
            return json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "b"}});
        }
        "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1" => {
            return json!({"f:metadata": {"f:labels": {".": {}}}});
        }
        "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1.JSON" => return json!({"x": [1]}),
        "k8s.io.api.authentication.v1.ExtraValue"
        | "k8s.io.api.authorization.v1.ExtraValue"
        | "k8s.io.api.certificates.v1.ExtraValue" => {
            return json!(["scope-a", "scope-b"]);
        }
        _ => {}
    }
    if depth > 14 || seen.contains(&full) {
        return json!({});
    }
    seen.push(full);
    let mut out = serde_json::Map::new();
    for f in desc.fields() {
        if let Some(v) = sample_field(desc, &f, depth, seen) {
            if json::is_inline(&f)
                && let Value::Object(inner) = v
            {
                out.extend(inner);
                continue;
            }
            out.insert(json::json_name(desc, &f), v);
        }
    }
    seen.pop();
    Value::Object(out)
}

fn sample_value(f: &FieldDescriptor, kind: &Kind, depth: usize, seen: &mut Vec<String>) -> Value {
    match kind {
        Kind::Bool => json!(true),
        Kind::Int32 | Kind::Int64 => json!(3 + f.number() as i64),
        Kind::Double | Kind::Float => json!(1.5),
        Kind::String => json!(format!("{}-v", f.name())),
        Kind::Bytes => json!("aGVsbG8="),
        Kind::Message(m) => sample(m, depth + 1, seen),
        _ => json!(0),
    }
}

fn sample_field(
    desc: &MessageDescriptor,
    f: &FieldDescriptor,
    depth: usize,
    seen: &mut Vec<String>,
) -> Option<Value> {
    let short = desc.name();
    // The schema wrappers have their own JSON (objects or lists); one form each.
    if short.starts_with("JSONSchemaPropsOr") {
        return None;
    }
    if f.is_map() {
        let Kind::Message(entry) = f.kind() else {
            return None;
        };
        let vf = entry.map_entry_value_field();
        let v = sample_value(&vf, &vf.kind(), depth, seen);
        return Some(json!({"k1": v.clone(), "k2": v}));
    }
    let v = sample_value(f, &f.kind(), depth, seen);
    if f.is_list() {
        let other = sample_value(f, &f.kind(), depth + 1, seen);
        return Some(json!([v, other]));
    }
    Some(v)
}

fn round_trip(obj: &Value) -> Value {
    let bytes = encode(obj)
        .expect("the kind has a message")
        .expect("encodes");
    decode(&bytes).expect("decodes what it encoded")
}

#[test]
fn every_builtin_kind_round_trips_through_protobuf() {
    let registry = Registry::builtin();
    let mut kinds = 0;
    // The metrics server's kinds are answered in JSON only: their messages live in
    // k8s.io/metrics, which is not vendored (docs/metrics-autoscaling.md).
    for def in registry.all().into_iter().filter(|d| !d.metrics) {
        let api_version = def.api_version();
        let desc = message_for(&api_version, &def.kind)
            .unwrap_or_else(|| panic!("no protobuf message for {api_version} {}", def.kind));
        let mut obj = sample(&desc, 0, &mut Vec::new());
        obj["apiVersion"] = json!(api_version);
        obj["kind"] = json!(def.kind);
        // Through the k8s-openapi type: proves the sample uses its field names and
        // values, and gives the object as berth stores it.
        let typed = def.typed.as_ref().expect("built-in kinds are typed");
        let normalized = (typed.normalize)(obj.clone())
            .unwrap_or_else(|e| panic!("{} is not a valid {}: {e}", obj, def.kind));
        // Through the k8s-openapi type again, as berth stores what it decodes: nested
        // objects (a StatefulSet's volumeClaimTemplates) carry no apiVersion/kind in
        // protobuf, and k8s-openapi writes them back.
        let back = (typed.normalize)(round_trip(&normalized))
            .unwrap_or_else(|e| panic!("decoded {} is not valid: {e}", def.kind));
        assert!(
            first_diff(&back, &normalized, "").is_none(),
            "decode(encode(x)) == x for {api_version} {}: {:?}",
            def.kind,
            first_diff(&back, &normalized, "")
        );
        kinds += 1;
        // The list kind, too (the review APIs have none).
        if def.create_only {
            continue;
        }
        let list = json!({"apiVersion": api_version, "kind": def.list_kind,
            "metadata": {"resourceVersion": "12", "continue": "c"},
            "items": [normalized.clone(), normalized]});
        // The list the watch cache serves (items' bytes encoded once, concatenated)
        // is byte for byte the list encoded whole.
        let item = serde_json::to_vec(&normalized).expect("json");
        let item = message_bytes(&item).expect("a message").expect("encodes");
        let assembled = super::list(
            &api_version,
            &def.list_kind,
            &list["metadata"],
            &[&item, &item],
        )
        .expect("the list kind has a message")
        .expect("encodes");
        assert!(
            assembled == encode(&list).expect("message").expect("encodes"),
            "{}: assembled list differs from the list encoded whole",
            def.list_kind
        );
        let mut back = round_trip(&list);
        // Items in a list carry no apiVersion/kind on the wire, as in Go.
        if let Some(items) = back["items"].as_array_mut() {
            for item in items {
                item["apiVersion"] = json!(api_version);
                item["kind"] = json!(def.kind);
                *item = (typed.normalize)(item.take()).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        assert!(
            first_diff(&back, &list, "").is_none(),
            "{} round trip: {:?}",
            def.list_kind,
            first_diff(&back, &list, "")
        );
    }
    assert!(kinds >= 39, "only {kinds} built-in kinds");
}

#[test]
fn subresource_kinds_round_trip() {
    for (api_version, kind) in [
        ("authentication.k8s.io/v1", "TokenRequest"),
        ("policy/v1", "Eviction"),
        ("v1", "Binding"),
        ("autoscaling/v1", "Scale"),
        ("meta.k8s.io/v1", "Status"),
        ("v1", "Status"),
    ] {
        let desc = message_for(api_version, kind).expect("a message");
        let mut obj = sample(&desc, 0, &mut Vec::new());
        obj["apiVersion"] = json!(api_version);
        obj["kind"] = json!(kind);
        assert_eq!(round_trip(&obj), obj, "{kind}");
    }
}

#[test]
fn watch_frames_are_length_prefixed_watch_events() {
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
    let frame = watch_frame("ADDED", &cm)
        .expect("a message")
        .expect("encodes");
    let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    assert_eq!(len, frame.len() - 4);
    let desc = pool()
        .expect("pool")
        .get_message_by_name(&format!("{META}.WatchEvent"))
        .expect("WatchEvent");
    let event = DynamicMessage::decode(desc, &frame[4..]).expect("a WatchEvent");
    let event = json::to_json(&event).expect("json");
    assert_eq!(event, json!({"type": "ADDED", "object": cm}));
}

#[test]
fn accept_prefers_the_first_media_type() {
    let mut h = HeaderMap::new();
    h.insert(
        "accept",
        "application/vnd.kubernetes.protobuf, application/json"
            .parse()
            .expect("header"),
    );
    assert!(accepts(&h));
    h.insert("accept", "application/json, */*".parse().expect("header"));
    assert!(!accepts(&h));
}

fn valid_service() -> Vec<u8> {
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"ports": [{"port": 80, "targetPort": 8080}], "selector": {"app": "web"}}});
    encode(&svc).expect("a message").expect("encodes")
}

/// Whether `v` is what Go's JSON writes for a zero non-pointer struct field the
/// sample left out (a `Quantity` is "0", a struct `{}` with zero fields).
fn is_go_zero(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty() || s == "0",
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Bool(b) => !b,
        Value::Object(m) => m.values().all(is_go_zero),
        _ => false,
    }
}

/// The first path where two JSON values differ, for readable failures. The decoded
/// side (`a`) may hold Go's zero where the sample (`b`) had nothing: Go's marshaler
/// writes every non-pointer field, so decode(encode(x)) carries them.
fn first_diff(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (zero, Value::Null) if is_go_zero(zero) => None,
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()) {
                let (l, r) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                if let Some(d) = first_diff(l, r, &format!("{path}.{k}")) {
                    return Some(d);
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (l, r))| first_diff(l, r, &format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!("{path}: {a} != {b}")),
    }
}

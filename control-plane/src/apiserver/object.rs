//! Objects as the apiserver stores and serves them: JSON with `metadata` first and
//! without `resourceVersion` in the store (the store's revision is the resourceVersion,
//! as in Kubernetes' etcd3 storage), with it spliced in on the way out, so a LIST or a
//! watch event is served from bytes without re-encoding the object.

use std::io::Read;
use std::sync::Mutex;

use serde_json::{Map, Value};

use crate::store::Revision;

/// Bytes for the store: `{"metadata":{…},…}` without `metadata.resourceVersion`.
/// Written field by field, without copying the object.
pub fn encode(object: &Value) -> Vec<u8> {
    let Some(map) = object.as_object() else {
        return serde_json::to_vec(object).unwrap_or_default();
    };
    let mut out = Vec::with_capacity(2048);
    out.push(b'{');
    let write = |out: &mut Vec<u8>, key: &str, value: &dyn erased::Json| {
        if out.len() > 1 {
            out.push(b',');
        }
        // Keys and values are plain JSON; writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, key);
        out.push(b':');
        value.write(out);
    };
    let empty = Map::new();
    let meta = map
        .get("metadata")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    write(
        &mut out,
        "metadata",
        &erased::WithoutKey(meta, "resourceVersion"),
    );
    for (key, value) in map {
        if key != "metadata" {
            write(&mut out, key, value);
        }
    }
    out.push(b'}');
    out
}

/// Writing a JSON value (or a map minus one key) into a buffer.
mod erased {
    use serde_json::{Map, Value};

    pub trait Json {
        fn write(&self, out: &mut Vec<u8>);
    }

    impl Json for Value {
        fn write(&self, out: &mut Vec<u8>) {
            let _ = serde_json::to_writer(out, self);
        }
    }

    /// A map serialized without one of its keys.
    pub struct WithoutKey<'a>(pub &'a Map<String, Value>, pub &'a str);

    impl Json for WithoutKey<'_> {
        fn write(&self, out: &mut Vec<u8>) {
            out.push(b'{');
            let mut first = true;
            for (k, v) in self.0 {
                if k == self.1 {
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                let _ = serde_json::to_writer(&mut *out, k);
                out.push(b':');
                let _ = serde_json::to_writer(&mut *out, v);
            }
            out.push(b'}');
        }
    }
}

const META_OPEN: &[u8] = b"{\"metadata\":{";

/// The stored bytes with `metadata.resourceVersion` set to `revision`.
pub fn with_revision(stored: &[u8], revision: Revision) -> Vec<u8> {
    let rv = format!("\"resourceVersion\":\"{revision}\"");
    if stored.starts_with(META_OPEN) {
        let mut out = Vec::with_capacity(stored.len() + rv.len() + 1);
        out.extend_from_slice(META_OPEN);
        out.extend_from_slice(rv.as_bytes());
        if stored.get(META_OPEN.len()) != Some(&b'}') {
            out.push(b',');
        }
        out.extend_from_slice(&stored[META_OPEN.len()..]);
        return out;
    }
    // Not written by `encode` (should not happen): decode and re-encode.
    match serde_json::from_slice::<Value>(stored) {
        Ok(mut v) => {
            set_resource_version(&mut v, revision);
            serde_json::to_vec(&v).unwrap_or_default()
        }
        Err(_) => stored.to_vec(),
    }
}

pub fn set_resource_version(object: &mut Value, revision: Revision) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert(
            "resourceVersion".into(),
            Value::String(revision.to_string()),
        );
    }
}

pub fn meta(object: &Value) -> Option<&Map<String, Value>> {
    object.get("metadata").and_then(Value::as_object)
}

/// The object's metadata map, made an (empty) object if missing; `None` if the object
/// itself is not a JSON object.
pub fn meta_mut(object: &mut Value) -> Option<&mut Map<String, Value>> {
    let map = object.as_object_mut()?;
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut()
}

pub fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    meta(object)?.get(field)?.as_str()
}

pub fn name(object: &Value) -> &str {
    meta_str(object, "name").unwrap_or_default()
}

/// RFC 3339 with seconds, UTC — the format of `metav1.Time`.
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A random (version 4) UUID.
pub fn new_uid() -> String {
    static URANDOM: Mutex<Option<std::fs::File>> = Mutex::new(None);
    let mut b = [0u8; 16];
    let filled = URANDOM.lock().ok().and_then(|mut guard| {
        if guard.is_none() {
            *guard = std::fs::File::open("/dev/urandom").ok();
        }
        guard.as_mut()?.read_exact(&mut b).ok()
    });
    if filled.is_none() {
        // Fall back to the clock and a counter: unique, if not unpredictable.
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let t = jiff::Timestamp::now().as_nanosecond() as u64;
        b[..8].copy_from_slice(&t.to_le_bytes());
        b[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Lowercase alphanumerics for `generateName` suffixes (Kubernetes uses 5).
pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    new_uid()
        .bytes()
        .filter(u8::is_ascii_hexdigit)
        .take(5)
        .map(|b| ALPHABET[(b as usize * 7) % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resource_version_is_spliced_after_metadata() {
        let obj = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a", "resourceVersion": "7"}, "spec": {"x": 1}});
        let stored = encode(&obj);
        assert!(!String::from_utf8_lossy(&stored).contains("\"7\""));
        let out: Value = serde_json::from_slice(&with_revision(&stored, 42)).expect("json");
        assert_eq!(out["metadata"]["resourceVersion"], "42");
        assert_eq!(out["metadata"]["name"], "a");
        assert_eq!(out["spec"]["x"], 1);
        assert_eq!(out["kind"], "Pod");
        let empty = encode(&json!({"metadata": {}}));
        let out: Value = serde_json::from_slice(&with_revision(&empty, 1)).expect("json");
        assert_eq!(out, json!({"metadata": {"resourceVersion": "1"}}));
    }

    #[test]
    fn uids_are_v4_and_distinct() {
        let (a, b) = (new_uid(), new_uid());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert_eq!(random_suffix().len(), 5);
    }
}

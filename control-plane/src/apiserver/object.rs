//! Objects as the apiserver stores and serves them: JSON in kube-apiserver's field
//! order (`kind`, `apiVersion`, `metadata`, …) and without `resourceVersion` in the store (the store's revision is the resourceVersion,
//! as in Kubernetes' etcd3 storage), with it spliced in on the way out, so a LIST or a
//! watch event is served from bytes without re-encoding the object.

use std::io::Read;
use std::sync::Mutex;

use serde_json::{Map, Value};

use super::field_order;
use crate::store::Revision;

/// Bytes for the store: the object in kube-apiserver's field order
/// ([`field_order`]), `{"kind":…,"apiVersion":…,"metadata":{…},…}`, without
/// `metadata.resourceVersion`.
pub fn encode(object: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(2048);
    field_order::write_object(&mut out, object, Some("resourceVersion"));
    out
}

/// The stored bytes with `metadata.resourceVersion` set to `revision`, spliced in at
/// its place in `ObjectMeta` order without re-encoding the object.
pub fn with_revision(stored: &[u8], revision: Revision) -> Vec<u8> {
    let rv = format!("\"resourceVersion\":\"{revision}\"");
    if let Some(at) = splice_point(stored) {
        let mut out = Vec::with_capacity(stored.len() + rv.len() + 1);
        out.extend_from_slice(&stored[..at.offset]);
        if at.comma_before {
            out.push(b',');
        }
        out.extend_from_slice(rv.as_bytes());
        if at.comma_after {
            out.push(b',');
        }
        out.extend_from_slice(&stored[at.offset..]);
        return out;
    }
    // Not written by `encode` (or by an older berth, with `metadata` first):
    // decode and re-encode.
    match serde_json::from_slice::<Value>(stored) {
        Ok(mut v) => {
            set_resource_version(&mut v, revision);
            field_order::to_vec(&v)
        }
        Err(_) => stored.to_vec(),
    }
}

/// Where `resourceVersion` goes in bytes written by [`encode`].
#[derive(Debug, PartialEq)]
struct Splice {
    offset: usize,
    comma_before: bool,
    comma_after: bool,
}

/// Scans `{"kind":"…","apiVersion":"…","metadata":{"name":"…",…,"uid":"…"` — only
/// string members, as `encode` writes them — to the place of `resourceVersion`.
/// `None` for anything else (an object without `kind` first, as older berths stored).
fn splice_point(b: &[u8]) -> Option<Splice> {
    let mut i = 0;
    let expect = |i: &mut usize, c: u8| -> Option<()> { (b.get(*i) == Some(&c)).then(|| *i += 1) };
    expect(&mut i, b'{')?;
    let first = string_end(b, i)?;
    if &b[i..first] != b"\"kind\"" {
        return None;
    }
    loop {
        let end = string_end(b, i)?;
        let key = &b[i + 1..end - 1];
        i = end;
        expect(&mut i, b':')?;
        if key == b"metadata" {
            break;
        }
        if key != b"kind" && key != b"apiVersion" {
            return None;
        }
        i = string_end(b, i)?;
        expect(&mut i, b',')?;
    }
    expect(&mut i, b'{')?;
    let mut members = false;
    loop {
        if b.get(i) == Some(&b'}') {
            return Some(Splice {
                offset: i,
                comma_before: members,
                comma_after: false,
            });
        }
        let end = string_end(b, i)?;
        let key = std::str::from_utf8(&b[i + 1..end - 1]).ok()?;
        if !field_order::BEFORE_RESOURCE_VERSION.contains(&key) {
            return Some(Splice {
                offset: i,
                comma_before: false,
                comma_after: true,
            });
        }
        i = end;
        expect(&mut i, b':')?;
        i = string_end(b, i)?;
        members = true;
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => {}
            _ => return None,
        }
    }
}

/// The index after the JSON string starting at `start` (`None` if none starts there).
fn string_end(b: &[u8], start: usize) -> Option<usize> {
    if b.get(start) != Some(&b'"') {
        return None;
    }
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
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
    /// Random bytes read from /dev/urandom a page at a time (one read per 256 UIDs).
    struct Pool {
        file: Option<std::fs::File>,
        bytes: [u8; 4096],
        used: usize,
    }
    static POOL: Mutex<Pool> = Mutex::new(Pool {
        file: None,
        bytes: [0; 4096],
        used: 4096,
    });
    let mut b = [0u8; 16];
    let filled = POOL.lock().ok().and_then(|mut pool| {
        if pool.used + b.len() > pool.bytes.len() {
            if pool.file.is_none() {
                pool.file = std::fs::File::open("/dev/urandom").ok();
            }
            let Pool { file, bytes, .. } = &mut *pool;
            file.as_mut()?.read_exact(bytes).ok()?;
            pool.used = 0;
        }
        let at = pool.used;
        b.copy_from_slice(&pool.bytes[at..at + 16]);
        pool.used += 16;
        Some(())
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
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(36);
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(HEX[usize::from(x >> 4)] as char);
        out.push(HEX[usize::from(x & 0x0f)] as char);
    }
    out
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

    fn served(obj: &Value, revision: Revision) -> String {
        String::from_utf8(with_revision(&encode(obj), revision)).expect("utf8")
    }

    #[test]
    fn stored_objects_are_served_in_upstream_order_with_the_revision_in_place() {
        let obj = json!({"spec": {"x": 1}, "metadata": {"labels": {"a": "b"}, "uid": "u",
            "name": "a\\\"q", "namespace": "ns", "resourceVersion": "7"},
            "kind": "Pod", "apiVersion": "v1"});
        assert_eq!(
            served(&obj, 42),
            r#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"a\\\"q","namespace":"ns","uid":"u","resourceVersion":"42","labels":{"a":"b"}},"spec":{"x":1}}"#
        );
        let only_name = json!({"kind": "Pod", "metadata": {"name": "a"}});
        assert_eq!(
            served(&only_name, 3),
            r#"{"kind":"Pod","metadata":{"name":"a","resourceVersion":"3"}}"#
        );
        let labels_only = json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"labels": {}}});
        assert_eq!(
            served(&labels_only, 3),
            r#"{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"3","labels":{}}}"#
        );
        let no_meta = json!({"kind": "Pod", "apiVersion": "v1", "metadata": {}});
        assert_eq!(
            served(&no_meta, 3),
            r#"{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"3"}}"#
        );
    }

    #[test]
    fn objects_stored_metadata_first_are_reordered() {
        let legacy = br#"{"metadata":{"name":"a"},"apiVersion":"v1","kind":"Pod","spec":{}}"#;
        assert_eq!(
            String::from_utf8(with_revision(legacy, 9)).expect("utf8"),
            r#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","resourceVersion":"9"},"spec":{}}"#
        );
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

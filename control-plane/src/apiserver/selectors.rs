//! Label and field selectors, parsed from `labelSelector` / `fieldSelector` with the
//! grammar of `k8s.io/apimachinery/pkg/labels` and `…/fields`: `a=b`, `a==b`, `a!=b`,
//! `a in (x,y)`, `a notin (x)`, `a`, `!a`, comma-separated (AND).
//!
//! Also which fields each kind lets clients select on (Kubernetes answers
//! `400 field label not supported` for the others) and how to read them.

use serde_json::Value;

use super::status::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

/// An object's labels, compact (sorted key/value pairs in boxed slices: the watch cache
/// holds one per object and per recent event).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(Box<[(Box<str>, Box<str>)]>);

impl Labels {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }
}

impl<K: Into<Box<str>>, V: Into<Box<str>>> FromIterator<(K, V)> for Labels {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut pairs: Vec<(Box<str>, Box<str>)> = iter
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs.dedup_by(|a, b| a.0 == b.0);
        Self(pairs.into_boxed_slice())
    }
}

/// An object's selectable field values (see [`field_values`]).
pub type Fields = Box<[(&'static str, Box<str>)]>;

/// A parsed label selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    reqs: Vec<Requirement>,
}

impl LabelSelector {
    pub fn parse(input: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for part in split_top_level(input) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            reqs.push(parse_requirement(part).map_err(|msg| {
                ApiError::bad_request(format!("unable to parse requirement: {msg}"))
            })?);
        }
        Ok(Self { reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.reqs.iter().all(|r| {
            let value = labels.get(&r.key);
            match &r.op {
                Op::Eq(v) => value == Some(v.as_str()),
                Op::NotEq(v) => value != Some(v.as_str()),
                Op::In(vs) => value.is_some_and(|x| vs.iter().any(|v| v == x)),
                Op::NotIn(vs) => !value.is_some_and(|x| vs.iter().any(|v| v == x)),
                Op::Exists => value.is_some(),
                Op::NotExists => value.is_none(),
            }
        })
    }
}

/// Splits on commas outside parentheses.
fn split_top_level(input: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&input[start..]);
    parts
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    if let Some(key) = part.strip_prefix('!') {
        let key = key.trim();
        validate_key(key)?;
        return Ok(Requirement {
            key: key.into(),
            op: Op::NotExists,
        });
    }
    for (token, make) in [
        ("!=", Op::NotEq as fn(String) -> Op),
        ("==", Op::Eq as fn(String) -> Op),
        ("=", Op::Eq as fn(String) -> Op),
    ] {
        if let Some((key, value)) = part.split_once(token) {
            let (key, value) = (key.trim(), value.trim());
            validate_key(key)?;
            validate_value(value)?;
            return Ok(Requirement {
                key: key.into(),
                op: make(value.into()),
            });
        }
    }
    let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
    if words.len() == 2 {
        let key = words[0].trim();
        let rest = words[1].trim();
        let (negate, list) = if let Some(l) = rest.strip_prefix("notin") {
            (true, l)
        } else if let Some(l) = rest.strip_prefix("in") {
            (false, l)
        } else {
            return Err(format!("found '{rest}', expected: in, notin, =, ==, !="));
        };
        let list = list.trim();
        let inner = list
            .strip_prefix('(')
            .and_then(|l| l.strip_suffix(')'))
            .ok_or_else(|| format!("found '{list}', expected: '(' … ')'"))?;
        validate_key(key)?;
        let values: Vec<String> = inner
            .split(',')
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect();
        for v in &values {
            validate_value(v)?;
        }
        return Ok(Requirement {
            key: key.into(),
            op: if negate {
                Op::NotIn(values)
            } else {
                Op::In(values)
            },
        });
    }
    validate_key(part)?;
    Ok(Requirement {
        key: part.into(),
        op: Op::Exists,
    })
}

fn validate_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("key is empty".into());
    }
    let name = key.rsplit('/').next().unwrap_or(key);
    if name.is_empty()
        || name.len() > 63
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!("invalid label key \"{key}\""));
    }
    Ok(())
}

fn validate_value(value: &str) -> Result<(), String> {
    if value.len() > 63
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!("invalid label value: \"{value}\""));
    }
    Ok(())
}

/// A parsed field selector.
#[derive(Debug, Clone, Default)]
pub struct FieldSelector {
    reqs: Vec<(String, bool, String)>,
}

impl FieldSelector {
    pub fn parse(input: &str, kind: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for part in input.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (field, eq, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            if !supported_fields(kind).contains(&field) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            reqs.push((field.to_owned(), eq, value.trim().to_owned()));
        }
        Ok(Self { reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    pub fn matches(&self, fields: &[(&'static str, Box<str>)]) -> bool {
        self.reqs.iter().all(|(field, eq, value)| {
            let actual = fields
                .iter()
                .find(|(f, _)| f == field)
                .map_or("", |(_, v)| &**v);
            (actual == value) == *eq
        })
    }
}

const COMMON: &[&str] = &["metadata.name", "metadata.namespace"];

/// Selectable fields per kind (Kubernetes' `GetAttrs`/field label conversion funcs).
pub fn supported_fields(kind: &str) -> Vec<&'static str> {
    let extra: &[&str] = match kind {
        "Pod" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "Event" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
        ],
        "Secret" => &["type"],
        "Namespace" => &["status.phase"],
        "Node" => &["spec.unschedulable"],
        "ReplicaSet" | "ReplicationController" => &["status.replicas"],
        "Job" => &["status.successful"],
        "CertificateSigningRequest" => &["spec.signerName"],
        _ => &[],
    };
    COMMON.iter().chain(extra).copied().collect()
}

fn lookup<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(object, |v, k| v.get(k))
}

/// The selectable field values of an object (for the watch cache).
pub fn field_values(object: &Value) -> Fields {
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    supported_fields(kind)
        .into_iter()
        .map(|field| {
            let value = match (kind, field) {
                // `source` selects on source.component.
                ("Event", "source") => lookup(object, "source.component"),
                _ => lookup(object, field),
            };
            let text = match value {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => match (kind, field) {
                    ("Node", "spec.unschedulable") | ("Pod", "spec.hostNetwork") => "false".into(),
                    ("ReplicaSet" | "ReplicationController", "status.replicas")
                    | ("Job", "status.successful") => "0".into(),
                    _ => String::new(),
                },
            };
            (field, text.into_boxed_str())
        })
        .collect()
}

/// A label selector (`{matchLabels, matchExpressions}`, or a plain map as
/// ReplicationControllers and nodeSelectors have) in selector syntax:
/// `app=web,tier in (a,b),!canary` — as `LabelSelectorAsSelector(…).String()` prints it.
pub fn format_selector(sel: &Value) -> String {
    let text = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let mut parts: Vec<String> = sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .or_else(|| {
            sel.as_object()
                .filter(|m| !m.contains_key("matchExpressions"))
        })
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some(format!("{k}={}", v.as_str()?)))
                .collect()
        })
        .unwrap_or_default();
    for e in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .map(|vs| vs.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let key = text(e, "key");
        parts.push(match text(e, "operator").as_str() {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key,
            _ => format!("!{key}"),
        });
    }
    parts.join(",")
}

/// The parts of an object selectors look at — kind, metadata name/namespace/labels
/// and the selectable fields of [`supported_fields`] — read from its JSON without
/// building the rest (container lists, data…): the watch cache does this on every write.
pub fn selectable(raw: &[u8]) -> Value {
    use serde::{Deserialize, Serialize};
    type Leaf = Option<Value>;
    #[derive(Deserialize, Serialize, Default)]
    #[serde(rename_all = "camelCase")]
    struct Meta {
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Leaf,
        #[serde(skip_serializing_if = "Option::is_none")]
        namespace: Leaf,
        #[serde(skip_serializing_if = "Option::is_none")]
        labels: Leaf,
    }
    #[derive(Deserialize, Serialize, Default)]
    #[serde(rename_all = "camelCase")]
    struct Spec {
        #[serde(skip_serializing_if = "Option::is_none")]
        node_name: Leaf,
        #[serde(skip_serializing_if = "Option::is_none")]
        restart_policy: Leaf,
        #[serde(skip_serializing_if = "Option::is_none")]
        scheduler_name: Leaf,
        #[serde(skip_serializing_if = "Option::is_none")]
        service_account_name: Leaf,
        #[serde(skip_serializing_if = "Option::is_none")]
        host_network: Leaf,
        #[serde(skip_serializing_if = "Option::is_none")]
        unschedulable: Leaf,
        #[serde(skip_serializing_if = "Option::is_none")]
        signer_name: Leaf,
    }
    #[derive(Deserialize, Serialize, Default)]
    #[serde(rename_all = "camelCase")]
    struct Status {
        #[serde(skip_serializing_if = "Option::is_none")]
        phase: Leaf,
        #[serde(rename = "podIP", skip_serializing_if = "Option::is_none")]
        pod_ip: Leaf,
        #[serde(skip_serializing_if = "Option::is_none")]
        nominated_node_name: Leaf,
        #[serde(skip_serializing_if = "Option::is_none")]
        replicas: Leaf,
        #[serde(skip_serializing_if = "Option::is_none")]
        successful: Leaf,
    }
    #[derive(Deserialize, Serialize, Default)]
    #[serde(rename_all = "camelCase")]
    struct Sparse {
        #[serde(skip_serializing_if = "Option::is_none")]
        kind: Leaf,
        #[serde(skip_serializing_if = "Option::is_none")]
        metadata: Option<Meta>,
        #[serde(skip_serializing_if = "Option::is_none")]
        spec: Option<Spec>,
        #[serde(skip_serializing_if = "Option::is_none")]
        status: Option<Status>,
        // Events (core and events.k8s.io) and Secrets.
        #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
        type_: Leaf,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Leaf,
        #[serde(skip_serializing_if = "Option::is_none")]
        reporting_component: Leaf,
        #[serde(skip_serializing_if = "Option::is_none")]
        source: Leaf,
        #[serde(skip_serializing_if = "Option::is_none")]
        involved_object: Leaf,
        #[serde(skip_serializing_if = "Option::is_none")]
        regarding: Leaf,
    }
    let sparse: Sparse = serde_json::from_slice(raw).unwrap_or_default();
    serde_json::to_value(&sparse).unwrap_or(Value::Null)
}

/// `metadata.labels`.
pub fn labels(object: &Value) -> Labels {
    object
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().copied().collect()
    }

    #[test]
    fn labels_are_found_by_key_whatever_their_order() {
        let labels = l(&[
            ("tier", "front"),
            ("app", "web"),
            ("app", "dup"),
            ("a/b", "1"),
        ]);
        assert_eq!(labels.get("app"), Some("web"));
        assert_eq!(labels.get("tier"), Some("front"));
        assert_eq!(labels.get("a/b"), Some("1"));
        assert_eq!(labels.get("missing"), None);
        assert_eq!(Labels::default().get("app"), None);
    }

    #[test]
    fn label_selector_operators() {
        let labels = l(&[("app", "web"), ("tier", "front"), ("example.com/x", "1")]);
        for (sel, want) in [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app in (web, db)", true),
            ("app notin (web)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("app=web,tier=back", false),
            ("app=web,example.com/x=1", true),
            ("missing!=x", true),
            ("missing notin (x)", true),
            ("", true),
        ] {
            let parsed = LabelSelector::parse(sel).expect("valid selector");
            assert_eq!(parsed.matches(&labels), want, "{sel}");
        }
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("a b c").is_err());
        assert!(LabelSelector::parse("=x").is_err());
    }

    #[test]
    fn the_sparse_view_has_what_selectors_read() {
        let pod = json!({"kind": "Pod", "metadata": {"name": "p", "namespace": "ns",
            "labels": {"app": "web"}, "annotations": {"big": "x"}},
            "spec": {"nodeName": "n1", "hostNetwork": true, "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1"}});
        let raw = serde_json::to_vec(&pod).expect("json");
        let sparse = selectable(&raw);
        assert_eq!(field_values(&sparse), field_values(&pod));
        assert_eq!(labels(&sparse), labels(&pod));
        assert!(sparse.pointer("/spec/containers").is_none());
        let event = json!({"kind": "Event", "metadata": {"name": "e"}, "type": "Normal",
            "source": {"component": "kubelet"}, "involvedObject": {"kind": "Pod", "name": "p"}});
        let raw = serde_json::to_vec(&event).expect("json");
        assert_eq!(field_values(&selectable(&raw)), field_values(&event));
    }

    #[test]
    fn field_selectors_by_kind() {
        let pod = json!({"kind": "Pod", "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let fields = field_values(&pod);
        let sel =
            FieldSelector::parse("spec.nodeName=n1,status.phase!=Pending", "Pod").expect("valid");
        assert!(sel.matches(&fields));
        let sel = FieldSelector::parse("spec.nodeName=", "Pod").expect("valid");
        assert!(!sel.matches(&fields));
        let err = FieldSelector::parse("spec.foo=x", "Pod").expect_err("unsupported");
        assert_eq!(err.code, 400);
        assert!(err.message.contains("field label not supported: spec.foo"));
        let node = json!({"kind": "Node", "metadata": {"name": "n"}});
        let sel = FieldSelector::parse("spec.unschedulable=false", "Node").expect("valid");
        assert!(sel.matches(&field_values(&node)));
    }
}

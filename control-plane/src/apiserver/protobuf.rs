//! Request bodies in Kubernetes' protobuf encoding (`application/vnd.kubernetes.protobuf`),
//! which kubectl's typed clients send for `kubectl create configmap|secret|namespace|
//! serviceaccount|deployment|job|cronjob|token` and `kubectl drain`'s evictions: the `k8s\0` magic, a `runtime.Unknown` envelope (typeMeta, raw) and
//! the object in the field numbering of `k8s.io/api`'s `generated.proto`. Decoded to
//! JSON here for the kinds in [`message`]; other kinds answer 415 with their name, and
//! responses are always JSON (clients accept it).

use base64::Engine;
use serde_json::{Map, Value, json};

use super::status::{ApiError, ApiResult};

const MAGIC: &[u8] = b"k8s\0";

/// How one field decodes.
#[derive(Debug, Clone, Copy)]
enum F {
    Str(&'static str),
    Bool(&'static str),
    Int(&'static str),
    StrList(&'static str),
    StrMap(&'static str),
    BytesMap(&'static str),
    /// `map<string, resource.Quantity>` (a Quantity is `{string = 1}`).
    QuantityMap(&'static str),
    Msg(&'static str, &'static str),
    MsgList(&'static str, &'static str),
    Time(&'static str),
    /// `intstr.IntOrString`: `{type = 1 (0 int, 1 string), intVal = 2, strVal = 3}`.
    IntOrStr(&'static str),
}

/// Field tables: (message, number, field).
fn message(name: &str) -> Option<&'static [(u64, F)]> {
    Some(match name {
        "ObjectMeta" => &[
            (1, F::Str("name")),
            (2, F::Str("generateName")),
            (3, F::Str("namespace")),
            (5, F::Str("uid")),
            (6, F::Str("resourceVersion")),
            (7, F::Int("generation")),
            (8, F::Time("creationTimestamp")),
            (11, F::StrMap("labels")),
            (12, F::StrMap("annotations")),
            (13, F::MsgList("ownerReferences", "OwnerReference")),
            (14, F::StrList("finalizers")),
        ],
        "OwnerReference" => &[
            (1, F::Str("kind")),
            (3, F::Str("name")),
            (4, F::Str("uid")),
            (5, F::Str("apiVersion")),
            (6, F::Bool("controller")),
            (7, F::Bool("blockOwnerDeletion")),
        ],
        "ConfigMap" => &[
            (1, F::Msg("metadata", "ObjectMeta")),
            (2, F::StrMap("data")),
            (3, F::BytesMap("binaryData")),
            (4, F::Bool("immutable")),
        ],
        "Secret" => &[
            (1, F::Msg("metadata", "ObjectMeta")),
            (2, F::BytesMap("data")),
            (3, F::Str("type")),
            (4, F::StrMap("stringData")),
            (5, F::Bool("immutable")),
        ],
        "Namespace" => &[
            (1, F::Msg("metadata", "ObjectMeta")),
            (2, F::Msg("spec", "NamespaceSpec")),
        ],
        "NamespaceSpec" => &[(1, F::StrList("finalizers"))],
        "ServiceAccount" => &[
            (1, F::Msg("metadata", "ObjectMeta")),
            (3, F::MsgList("imagePullSecrets", "LocalObjectReference")),
            (4, F::Bool("automountServiceAccountToken")),
        ],
        "LocalObjectReference" => &[(1, F::Str("name"))],
        // What `kubectl create token` sends.
        "TokenRequest" => &[
            (1, F::Msg("metadata", "ObjectMeta")),
            (2, F::Msg("spec", "TokenRequestSpec")),
        ],
        "TokenRequestSpec" => &[
            (1, F::StrList("audiences")),
            (3, F::Msg("boundObjectRef", "BoundObjectReference")),
            (4, F::Int("expirationSeconds")),
        ],
        // What `kubectl drain` sends (policy/v1 Eviction with a meta/v1 DeleteOptions).
        // What `kubectl create poddisruptionbudget` sends (policy/v1 generated.proto).
        "PodDisruptionBudget" => &[
            (1, F::Msg("metadata", "ObjectMeta")),
            (2, F::Msg("spec", "PodDisruptionBudgetSpec")),
        ],
        "PodDisruptionBudgetSpec" => &[
            (1, F::IntOrStr("minAvailable")),
            (2, F::Msg("selector", "LabelSelector")),
            (3, F::IntOrStr("maxUnavailable")),
            (4, F::Str("unhealthyPodEvictionPolicy")),
        ],
        "Eviction" => &[
            (1, F::Msg("metadata", "ObjectMeta")),
            (2, F::Msg("deleteOptions", "DeleteOptions")),
        ],
        "DeleteOptions" => &[
            (1, F::Int("gracePeriodSeconds")),
            (2, F::Msg("preconditions", "Preconditions")),
            (3, F::Bool("orphanDependents")),
            (4, F::Str("propagationPolicy")),
            (5, F::StrList("dryRun")),
        ],
        "Preconditions" => &[(1, F::Str("uid")), (2, F::Str("resourceVersion"))],
        "BoundObjectReference" => &[
            (1, F::Str("kind")),
            (2, F::Str("apiVersion")),
            (3, F::Str("name")),
            (4, F::Str("uid")),
        ],
        // What `kubectl create deployment` sends.
        "Deployment" => &[
            (1, F::Msg("metadata", "ObjectMeta")),
            (2, F::Msg("spec", "DeploymentSpec")),
        ],
        "DeploymentSpec" => &[
            (1, F::Int("replicas")),
            (2, F::Msg("selector", "LabelSelector")),
            (3, F::Msg("template", "PodTemplateSpec")),
            (4, F::Msg("strategy", "DeploymentStrategy")),
            (5, F::Int("minReadySeconds")),
            (6, F::Int("revisionHistoryLimit")),
            (7, F::Bool("paused")),
            (9, F::Int("progressDeadlineSeconds")),
        ],
        "DeploymentStrategy" => &[(1, F::Str("type"))],
        // What `kubectl create job [--from=cronjob/x]` sends (k8s.io/api batch/v1).
        "Job" => &[
            (1, F::Msg("metadata", "ObjectMeta")),
            (2, F::Msg("spec", "JobSpec")),
        ],
        "JobSpec" => &[
            (1, F::Int("parallelism")),
            (2, F::Int("completions")),
            (3, F::Int("activeDeadlineSeconds")),
            (4, F::Msg("selector", "LabelSelector")),
            (5, F::Bool("manualSelector")),
            (6, F::Msg("template", "PodTemplateSpec")),
            (7, F::Int("backoffLimit")),
            (8, F::Int("ttlSecondsAfterFinished")),
            (9, F::Str("completionMode")),
            (10, F::Bool("suspend")),
        ],
        // What `kubectl create cronjob` sends.
        "CronJob" => &[
            (1, F::Msg("metadata", "ObjectMeta")),
            (2, F::Msg("spec", "CronJobSpec")),
        ],
        "CronJobSpec" => &[
            (1, F::Str("schedule")),
            (2, F::Int("startingDeadlineSeconds")),
            (3, F::Str("concurrencyPolicy")),
            (4, F::Bool("suspend")),
            (5, F::Msg("jobTemplate", "JobTemplateSpec")),
            (6, F::Int("successfulJobsHistoryLimit")),
            (7, F::Int("failedJobsHistoryLimit")),
            (8, F::Str("timeZone")),
        ],
        "JobTemplateSpec" => &[
            (1, F::Msg("metadata", "ObjectMeta")),
            (2, F::Msg("spec", "JobSpec")),
        ],
        "LabelSelector" => &[
            (1, F::StrMap("matchLabels")),
            (
                2,
                F::MsgList("matchExpressions", "LabelSelectorRequirement"),
            ),
        ],
        "LabelSelectorRequirement" => &[
            (1, F::Str("key")),
            (2, F::Str("operator")),
            (3, F::StrList("values")),
        ],
        "PodTemplateSpec" => &[
            (1, F::Msg("metadata", "ObjectMeta")),
            (2, F::Msg("spec", "PodSpec")),
        ],
        "PodSpec" => &[
            (2, F::MsgList("containers", "Container")),
            (3, F::Str("restartPolicy")),
            (4, F::Int("terminationGracePeriodSeconds")),
            (6, F::Str("dnsPolicy")),
            (7, F::StrMap("nodeSelector")),
            (8, F::Str("serviceAccountName")),
            (10, F::Str("nodeName")),
            (19, F::Str("schedulerName")),
            (20, F::MsgList("initContainers", "Container")),
            (24, F::Str("priorityClassName")),
        ],
        "Container" => &[
            (1, F::Str("name")),
            (2, F::Str("image")),
            (3, F::StrList("command")),
            (4, F::StrList("args")),
            (5, F::Str("workingDir")),
            (6, F::MsgList("ports", "ContainerPort")),
            (7, F::MsgList("env", "EnvVar")),
            (8, F::Msg("resources", "ResourceRequirements")),
            (13, F::Str("terminationMessagePath")),
            (14, F::Str("imagePullPolicy")),
            (16, F::Bool("stdin")),
            (18, F::Bool("tty")),
            (20, F::Str("terminationMessagePolicy")),
        ],
        "ContainerPort" => &[
            (1, F::Str("name")),
            (2, F::Int("hostPort")),
            (3, F::Int("containerPort")),
            (4, F::Str("protocol")),
            (5, F::Str("hostIP")),
        ],
        "EnvVar" => &[(1, F::Str("name")), (2, F::Str("value"))],
        "ResourceRequirements" => &[
            (1, F::QuantityMap("limits")),
            (2, F::QuantityMap("requests")),
        ],
        _ => return None,
    })
}

/// Protobuf wire reader.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> ApiResult<u64> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.buf.split_first().ok_or_else(truncated)?;
            self.buf = rest;
            out |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err(truncated())
    }

    fn bytes(&mut self) -> ApiResult<&'a [u8]> {
        let len = self.varint()? as usize;
        if len > self.buf.len() {
            return Err(truncated());
        }
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(head)
    }

    /// (field number, wire type), or `None` at the end.
    fn tag(&mut self) -> ApiResult<Option<(u64, u8)>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let t = self.varint()?;
        Ok(Some((t >> 3, (t & 7) as u8)))
    }

    fn skip(&mut self, wire: u8) -> ApiResult<()> {
        match wire {
            0 => self.varint().map(drop),
            1 => self.advance(8),
            2 => self.bytes().map(drop),
            5 => self.advance(4),
            _ => Err(ApiError::bad_request(format!(
                "protobuf: unsupported wire type {wire}"
            ))),
        }
    }

    fn advance(&mut self, n: usize) -> ApiResult<()> {
        if n > self.buf.len() {
            return Err(truncated());
        }
        self.buf = &self.buf[n..];
        Ok(())
    }
}

fn truncated() -> ApiError {
    ApiError::bad_request("protobuf: the body is truncated")
}

fn utf8(b: &[u8]) -> ApiResult<String> {
    String::from_utf8(b.to_vec())
        .map_err(|_| ApiError::bad_request("protobuf: a string is not UTF-8"))
}

fn decode_message(buf: &[u8], name: &str) -> ApiResult<Value> {
    let fields = message(name).ok_or_else(|| {
        ApiError::unsupported_media_type(format!(
            "protobuf bodies of {name} are not supported by berth; send application/json"
        ))
    })?;
    let mut out = Map::new();
    let mut r = Reader { buf };
    while let Some((number, wire)) = r.tag()? {
        let Some((_, field)) = fields.iter().find(|(n, _)| *n == number) else {
            r.skip(wire)?;
            continue;
        };
        match *field {
            F::Str(k) => {
                // Go writes unset (zero-value) strings as empty ones; JSON omits them.
                let v = utf8(r.bytes()?)?;
                if !v.is_empty() {
                    out.insert(k.into(), json!(v));
                }
            }
            F::Bool(k) => {
                out.insert(k.into(), json!(r.varint()? != 0));
            }
            F::Int(k) => {
                out.insert(k.into(), json!(r.varint()? as i64));
            }
            F::StrList(k) => {
                let s = utf8(r.bytes()?)?;
                push(&mut out, k, json!(s));
            }
            F::Msg(k, m) => {
                out.insert(k.into(), decode_message(r.bytes()?, m)?);
            }
            F::IntOrStr(k) => {
                let mut v = Reader { buf: r.bytes()? };
                let (mut is_str, mut int, mut text) = (false, 0i64, String::new());
                while let Some((n, w)) = v.tag()? {
                    match n {
                        1 => is_str = v.varint()? == 1,
                        2 => int = v.varint()? as i32 as i64,
                        3 => text = utf8(v.bytes()?)?,
                        _ => v.skip(w)?,
                    }
                }
                out.insert(k.into(), if is_str { json!(text) } else { json!(int) });
            }
            F::MsgList(k, m) => {
                let v = decode_message(r.bytes()?, m)?;
                push(&mut out, k, v);
            }
            F::StrMap(k) | F::BytesMap(k) | F::QuantityMap(k) => {
                let mut entry = Reader { buf: r.bytes()? };
                let (mut key, mut value) = (String::new(), Vec::new());
                while let Some((n, w)) = entry.tag()? {
                    match n {
                        1 => key = utf8(entry.bytes()?)?,
                        2 => value = entry.bytes()?.to_vec(),
                        _ => entry.skip(w)?,
                    }
                }
                let value = match field {
                    F::BytesMap(_) => {
                        json!(base64::engine::general_purpose::STANDARD.encode(&value))
                    }
                    F::QuantityMap(_) => {
                        let mut q = Reader { buf: &value };
                        let mut text = String::new();
                        while let Some((n, w)) = q.tag()? {
                            match n {
                                1 => text = utf8(q.bytes()?)?,
                                _ => q.skip(w)?,
                            }
                        }
                        json!(text)
                    }
                    _ => json!(utf8(&value)?),
                };
                let map = out.entry(k).or_insert_with(|| json!({}));
                if let Some(m) = map.as_object_mut() {
                    m.insert(key, value);
                }
            }
            F::Time(k) => {
                let mut t = Reader { buf: r.bytes()? };
                let mut secs = 0i64;
                while let Some((n, w)) = t.tag()? {
                    match n {
                        1 => secs = t.varint()? as i64,
                        _ => t.skip(w)?,
                    }
                }
                if let Ok(ts) = jiff::Timestamp::from_second(secs) {
                    out.insert(
                        k.into(),
                        json!(ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
                    );
                }
            }
        }
    }
    Ok(Value::Object(out))
}

fn push(out: &mut Map<String, Value>, key: &str, v: Value) {
    let list = out.entry(key).or_insert_with(|| json!([]));
    if let Some(a) = list.as_array_mut() {
        a.push(v);
    }
}

/// Decodes a protobuf request body into the object's JSON.
pub fn decode(body: &[u8]) -> ApiResult<Value> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| ApiError::bad_request("protobuf: the body lacks the k8s\\0 prefix"))?;
    let mut r = Reader { buf: rest };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while let Some((n, w)) = r.tag()? {
        match n {
            1 => {
                let mut tm = Reader { buf: r.bytes()? };
                while let Some((n, w)) = tm.tag()? {
                    match n {
                        1 => api_version = utf8(tm.bytes()?)?,
                        2 => kind = utf8(tm.bytes()?)?,
                        _ => tm.skip(w)?,
                    }
                }
            }
            2 => raw = r.bytes()?,
            _ => r.skip(w)?,
        }
    }
    let mut obj = decode_message(raw, &kind)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![((n << 3) | 2) as u8, payload.len() as u8];
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn decodes_int_or_string_fields_of_a_budget() {
        let meta = field(1, b"pdb");
        // minAvailable: {type 0, intVal 2}; maxUnavailable: {type 1, strVal "25%"}.
        let min = [0x08, 0x00, 0x10, 0x02];
        let max = [vec![0x08, 0x01], field(3, b"25%")].concat();
        let spec = [field(1, &min), field(3, &max)].concat();
        let pdb = [field(1, &meta), field(2, &spec)].concat();
        let type_meta = [field(1, b"policy/v1"), field(2, b"PodDisruptionBudget")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &pdb)].concat();
        let obj = decode(&body).expect("decodes");
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
        let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &cm)].concat();
        let obj = decode(&body).expect("decodes");
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
        let type_meta = [field(1, b"policy/v1"), field(2, b"Eviction")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &ev)].concat();
        let obj = decode(&body).expect("decodes");
        assert_eq!(
            obj,
            json!({"apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": "web-1", "namespace": "default"},
                "deleteOptions": {"gracePeriodSeconds": 0, "preconditions": {"uid": "u-1"},
                    "dryRun": ["All"]}})
        );
    }
}

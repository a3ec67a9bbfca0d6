//! The webhooks of the stored `MutatingWebhookConfiguration`s and
//! `ValidatingWebhookConfiguration`s (admissionregistration.k8s.io/v1) as the
//! dispatchers read them from the watch cache: parsed (match conditions compiled) once
//! per stored revision, configurations in name order as kube-apiserver sorts them.
//! Their defaults and validation are in [`validation`](super::validation).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, RuleWithOperations, ValidatingWebhookConfiguration,
    WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

use super::conditions::{self, Condition};
use crate::apiserver::watch_cache::{Cached, WatchCache};

pub const MUTATING_KIND: &str = "MutatingWebhookConfiguration";
pub const VALIDATING_KIND: &str = "ValidatingWebhookConfiguration";
pub const MUTATING_PREFIX: &str =
    "/registry/admissionregistration.k8s.io/mutatingwebhookconfigurations/";
pub const VALIDATING_PREFIX: &str =
    "/registry/admissionregistration.k8s.io/validatingwebhookconfigurations/";

/// The AdmissionReview versions this server speaks, in upstream's order.
pub const REVIEW_VERSIONS: [&str; 2] = ["v1", "v1beta1"];

/// One webhook of a configuration, as the dispatchers use it.
#[derive(Debug)]
pub struct Hook {
    /// `<configuration>/<webhook>/<n>` (n counts earlier webhooks of the same name), as
    /// upstream's accessor UIDs: what reinvocation remembers.
    pub uid: String,
    pub configuration: String,
    pub name: String,
    pub client: WebhookClientConfig,
    pub rules: Vec<RuleWithOperations>,
    /// `failurePolicy: Ignore`.
    pub fail_open: bool,
    /// `matchPolicy: Exact`.
    pub exact: bool,
    pub namespace_selector: Option<LabelSelector>,
    pub object_selector: Option<LabelSelector>,
    pub side_effects: String,
    pub timeout: Duration,
    pub review_versions: Vec<String>,
    /// `reinvocationPolicy: IfNeeded` (mutating webhooks only).
    pub reinvoke: bool,
    pub match_conditions: Vec<Condition>,
}

struct Parsed {
    object: Arc<Cached>,
    hooks: Arc<[Arc<Hook>]>,
}

/// Parsed configurations by store key, reused while the cache holds the same object.
static PARSED: LazyLock<Mutex<HashMap<String, Parsed>>> = LazyLock::new(Default::default);

/// Builds the hooks of one stored configuration.
fn parse(kind: &str, object: &Cached) -> Vec<Arc<Hook>> {
    let value = object.value();
    let configuration = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut uid = |name: &str| {
        let n = seen.entry(name.to_owned()).or_default();
        let uid = format!("{configuration}/{name}/{n}");
        *n += 1;
        uid
    };
    let seconds = |t: Option<i32>| Duration::from_secs(t.unwrap_or(10).clamp(1, 30) as u64);
    let is = |v: &Option<String>, what: &str| v.as_deref() == Some(what);
    let mut hooks = Vec::new();
    if kind == MUTATING_KIND {
        let Ok(config) = serde_json::from_value::<MutatingWebhookConfiguration>(value) else {
            tracing::warn!(key = %object.key, "undecodable MutatingWebhookConfiguration skipped");
            return hooks;
        };
        for h in config.webhooks.unwrap_or_default() {
            hooks.push(Arc::new(Hook {
                uid: uid(&h.name),
                configuration: configuration.clone(),
                fail_open: is(&h.failure_policy, "Ignore"),
                exact: is(&h.match_policy, "Exact"),
                reinvoke: is(&h.reinvocation_policy, "IfNeeded"),
                timeout: seconds(h.timeout_seconds),
                name: h.name,
                client: h.client_config,
                rules: h.rules.unwrap_or_default(),
                namespace_selector: h.namespace_selector,
                object_selector: h.object_selector,
                side_effects: h.side_effects,
                review_versions: h.admission_review_versions,
                match_conditions: h
                    .match_conditions
                    .iter()
                    .flatten()
                    .map(conditions::compile)
                    .collect(),
            }));
        }
    } else {
        let Ok(config) = serde_json::from_value::<ValidatingWebhookConfiguration>(value) else {
            tracing::warn!(key = %object.key, "undecodable ValidatingWebhookConfiguration skipped");
            return hooks;
        };
        for h in config.webhooks.unwrap_or_default() {
            hooks.push(Arc::new(Hook {
                uid: uid(&h.name),
                configuration: configuration.clone(),
                fail_open: is(&h.failure_policy, "Ignore"),
                exact: is(&h.match_policy, "Exact"),
                reinvoke: false,
                timeout: seconds(h.timeout_seconds),
                name: h.name,
                client: h.client_config,
                rules: h.rules.unwrap_or_default(),
                namespace_selector: h.namespace_selector,
                object_selector: h.object_selector,
                side_effects: h.side_effects,
                review_versions: h.admission_review_versions,
                match_conditions: h
                    .match_conditions
                    .iter()
                    .flatten()
                    .map(conditions::compile)
                    .collect(),
            }));
        }
    }
    hooks
}

fn hooks(cache: &WatchCache, kind: &str, prefix: &str) -> Vec<Arc<Hook>> {
    // The common case, no configuration at all, costs one count.
    if cache.count(prefix) == 0 {
        return Vec::new();
    }
    let (objects, _) = cache.list(prefix, |_| true);
    let mut parsed = PARSED.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = Vec::new();
    for object in objects {
        let fresh = parsed
            .get(&object.key)
            .filter(|p| Arc::ptr_eq(&p.object, &object))
            .map(|p| p.hooks.clone());
        let list = match fresh {
            Some(list) => list,
            None => {
                let list: Arc<[Arc<Hook>]> = parse(kind, &object).into();
                parsed.insert(
                    object.key.clone(),
                    Parsed {
                        object: object.clone(),
                        hooks: list.clone(),
                    },
                );
                list
            }
        };
        out.extend(list.iter().cloned());
    }
    // Forget deleted configurations of this kind.
    parsed.retain(|key, p| {
        !key.starts_with(prefix) || cache.get(key).is_some_and(|c| Arc::ptr_eq(&c, &p.object))
    });
    out
}

/// The mutating webhooks, configurations in name order, each one's in its order.
pub fn mutating(cache: &WatchCache) -> Vec<Arc<Hook>> {
    hooks(cache, MUTATING_KIND, MUTATING_PREFIX)
}

/// The validating webhooks, configurations in name order.
pub fn validating(cache: &WatchCache) -> Vec<Arc<Hook>> {
    hooks(cache, VALIDATING_KIND, VALIDATING_PREFIX)
}

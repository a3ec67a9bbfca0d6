//! Which resources the apiserver serves: the built-in types (their kinds, plurals,
//! scopes, short names, categories and subresources as Kubernetes declares them, typed
//! by `k8s-openapi`) and the custom resources CustomResourceDefinitions add at run time.
//!
//! Entry point: [`Registry`], shared by routing, discovery and OpenAPI.

use std::any::TypeId;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::{
    apps, authentication, authorization, autoscaling, batch, certificates, coordination, core,
    discovery, events, networking, policy, rbac, scheduling, storage,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions;
use k8s_openapi::{ListableResource, NamespaceResourceScope, Resource};
use serde_json::Value;

use super::crd::CrdSchema;

/// Where `/scale` reads and writes replicas, as JSON paths (`.spec.replicas`).
#[derive(Debug, Clone)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    /// A string field holding the selector (custom resources); built-in workloads
    /// have none and report their `spec.selector`.
    pub label_selector: Option<String>,
}

impl ScalePaths {
    fn standard() -> Self {
        Self {
            spec_replicas: ".spec.replicas".into(),
            status_replicas: ".status.replicas".into(),
            label_selector: None,
        }
    }

    /// A JSON path as a JSON pointer (`.spec.replicas` → `/spec/replicas`).
    pub fn pointer(path: &str) -> String {
        path.trim_start_matches('.')
            .split('.')
            .fold(String::new(), |acc, part| format!("{acc}/{part}"))
    }
}

/// Decoding a built-in type through its `k8s-openapi` struct: rejects wrong types,
/// drops unknown fields (reported for `fieldValidation=Strict`).
pub type Normalize = fn(Value) -> Result<Value, String>;
/// The OpenAPI schema of a built-in type.
pub type SchemaFn = fn(&mut schemars::SchemaGenerator) -> schemars::Schema;

#[derive(Debug, Clone)]
pub struct Typed {
    pub normalize: Normalize,
    pub schema: SchemaFn,
    /// `io.k8s.api.core.v1.Pod`
    pub definition: String,
}

impl Typed {
    /// The typed round trip of `value`, its null map values and list items first made
    /// the zero values Go's decoding gives them ([`super::zero_values`]).
    pub fn decode(&self, mut value: Value) -> Result<Value, String> {
        if super::zero_values::has_null(&value) {
            super::zero_values::zero_nulls(
                &mut value,
                super::managed_fields::schema::Node::builtin(&self.definition),
            );
        }
        (self.normalize)(value)
    }
}

/// One served resource.
#[derive(Debug, Clone)]
pub struct ResourceDef {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub list_kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Has a `status` subresource (updates to the main resource keep the old status).
    pub status: bool,
    pub scale: Option<ScalePaths>,
    /// Other subresources (`binding`, `eviction`, `log`, `exec`…), for discovery.
    pub subresources: Vec<&'static str>,
    /// Bump `metadata.generation` when anything but metadata and status changes.
    pub generation: bool,
    pub typed: Option<Typed>,
    pub crd: Option<Arc<CrdSchema>>,
    /// A review API (TokenReview, SubjectAccessReview, …): only `create`, answered by
    /// `reviews` and never stored.
    pub create_only: bool,
    /// Served in several versions, stored in one (autoscaling/v1 over the stored
    /// autoscaling/v2; a custom resource's versions): how objects convert on the way
    /// in and out.
    pub conversion: Option<Conversion>,
    /// Not stored: read-only, answered by the built-in metrics server
    /// (`metrics.k8s.io`), get and list only.
    pub metrics: bool,
}

/// How a resource served in several versions converts between the one served and the
/// one stored, as kube-apiserver's conversion functions between a group's versions, or
/// a CRD's `None` conversion strategy.
#[derive(Debug, Clone)]
pub struct Conversion {
    /// The version objects are stored in.
    pub storage_version: String,
    pub how: Convert,
}

#[derive(Debug, Clone)]
pub enum Convert {
    /// The versions' schemas differ (built-in kinds).
    Functions {
        /// A served-version object (already normalized) to the storage version.
        to_storage: fn(Value) -> Value,
        /// A stored object to the served version.
        from_storage: fn(Value) -> Value,
    },
    /// Only `apiVersion` differs (a CRD's `None` strategy): set to the storage version
    /// on the way in and to the served one on the way out — on every read, as an
    /// object stored before the CRD's storage version changed names an older one.
    ApiVersion {
        /// Every version the CRD lists, served or not: those a `managedFields`
        /// entry may still name.
        versions: Arc<[String]>,
        /// The CRD's conversion webhook (the `Webhook` strategy): the other fields
        /// differ too, and [`super::conversion::webhook`] converts them. The functions
        /// here, for the paths that cannot call it, set `apiVersion` only.
        webhook: Option<Arc<super::conversion::webhook::ConversionWebhook>>,
    },
}

impl ResourceDef {
    /// Whether objects read through this version may differ from what is stored.
    pub fn converts(&self) -> bool {
        match &self.conversion {
            Some(Conversion {
                how: Convert::ApiVersion { .. },
                ..
            }) => true,
            Some(c) => c.storage_version != self.version,
            None => false,
        }
    }

    /// The CRD's conversion webhook, when it has one.
    pub fn conversion_webhook(&self) -> Option<&super::conversion::webhook::ConversionWebhook> {
        match &self.conversion {
            Some(Conversion {
                how:
                    Convert::ApiVersion {
                        webhook: Some(hook),
                        ..
                    },
                ..
            }) => Some(hook),
            _ => None,
        }
    }

    /// Whether this version names fields other than the other versions (so managed
    /// fields are compared in each entry's own version).
    pub fn renames_fields(&self) -> bool {
        matches!(
            self.conversion,
            Some(Conversion {
                how: Convert::Functions { .. },
                ..
            })
        )
    }

    /// A stored object as this version serves it.
    pub fn external(&self, obj: Value) -> Value {
        match &self.conversion {
            Some(Conversion {
                how: Convert::ApiVersion { .. },
                ..
            }) => with_api_version(obj, &self.api_version()),
            Some(Conversion {
                storage_version,
                how: Convert::Functions { from_storage, .. },
            }) if *storage_version != self.version => from_storage(obj),
            _ => obj,
        }
    }

    /// Whether `version` of this resource's group may still be named by its objects'
    /// `managedFields`: a version it is served in, or one its CRD lists unserved.
    pub fn lists_version(&self, version: &str) -> bool {
        match &self.conversion {
            Some(Conversion {
                how: Convert::ApiVersion { versions, .. },
                ..
            }) => versions.iter().any(|v| v == version),
            _ => false,
        }
    }

    /// Stored bytes as this version serves them (unchanged without conversion).
    pub fn external_raw<'a>(&self, raw: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        if !self.converts() {
            return std::borrow::Cow::Borrowed(raw);
        }
        if matches!(
            self.conversion,
            Some(Conversion {
                how: Convert::ApiVersion { .. },
                ..
            })
        ) && starts_with_api_version(raw, &self.api_version())
        {
            return std::borrow::Cow::Borrowed(raw);
        }
        match serde_json::from_slice::<Value>(raw) {
            Ok(v) => {
                std::borrow::Cow::Owned(crate::apiserver::field_order::to_vec(&self.external(v)))
            }
            Err(_) => std::borrow::Cow::Borrowed(raw),
        }
    }

    /// A served-version object as it is stored.
    pub fn internal(&self, obj: Value) -> Value {
        match &self.conversion {
            Some(Conversion {
                storage_version,
                how: Convert::ApiVersion { .. },
            }) => with_api_version(obj, &group_version(&self.group, storage_version)),
            Some(Conversion {
                storage_version,
                how: Convert::Functions { to_storage, .. },
            }) if *storage_version != self.version => to_storage(obj),
            _ => obj,
        }
    }

    pub fn api_version(&self) -> String {
        group_version(&self.group, &self.version)
    }

    /// The store prefix of the whole resource (all namespaces).
    pub fn prefix(&self) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        format!("/registry/{group}/{}/", self.plural)
    }

    /// The store prefix of one namespace's objects, or of all if `namespace` is `None`.
    pub fn collection_prefix(&self, namespace: Option<&str>) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("{}{ns}/", self.prefix()),
            _ => self.prefix(),
        }
    }

    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("{}{ns}/{name}", self.prefix()),
            _ => format!("{}{name}", self.prefix()),
        }
    }

    /// `pods`, `deployments.apps` — how Kubernetes names the resource in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// `v1` for the core group, `apps/v1` otherwise.
pub fn group_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    }
}

/// The URL path of a group-version: `api/v1`, `apis/apps/v1`.
pub fn group_version_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// A Kubernetes version name (`v2`, `v1beta1`, `v1alpha3`): (major, stability, minor)
/// with stability alpha 0 < beta 1 < GA 2; `None` for other names.
fn parse_version(v: &str) -> Option<(u64, u8, u64)> {
    let rest = v.strip_prefix('v')?;
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let major = rest[..digits].parse().ok()?;
    let rest = &rest[digits..];
    if rest.is_empty() {
        return Some((major, 2, 0));
    }
    let (stability, minor) = if let Some(m) = rest.strip_prefix("alpha") {
        (0, m)
    } else if let Some(m) = rest.strip_prefix("beta") {
        (1, m)
    } else {
        return None;
    };
    if minor.is_empty() || !minor.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((major, stability, minor.parse().ok()?))
}

/// Kubernetes' `CompareKubeAwareVersionStrings`: GA before beta before alpha, higher
/// numbers first within each, Kubernetes-style names before others, others by name.
/// `Greater` means `a` is preferred.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    match (parse_version(a), parse_version(b)) {
        (None, None) => b.cmp(a),
        (None, Some(_)) => std::cmp::Ordering::Less,
        (Some(_), None) => std::cmp::Ordering::Greater,
        (Some((ma, sa, na)), Some((mb, sb, nb))) => (sa, ma, na).cmp(&(sb, mb, nb)),
    }
}

fn normalize<K>(value: Value) -> Result<Value, String>
where
    K: serde::de::DeserializeOwned + serde::Serialize,
{
    let typed: K = serde_json::from_value(value).map_err(|e| e.to_string())?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

fn schema<K: schemars::JsonSchema>(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    generator.subschema_for::<K>()
}

struct Builtin {
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    status: bool,
    scale: bool,
    subresources: &'static [&'static str],
    generation: bool,
}

const PLAIN: Builtin = Builtin {
    short_names: &[],
    categories: &[],
    status: false,
    scale: false,
    subresources: &[],
    generation: false,
};

fn builtin<K>(b: Builtin) -> ResourceDef
where
    K: Resource
        + ListableResource
        + serde::de::DeserializeOwned
        + serde::Serialize
        + schemars::JsonSchema
        + 'static,
{
    let definition = <K as schemars::JsonSchema>::schema_name().into_owned();
    ResourceDef {
        group: K::GROUP.to_owned(),
        version: K::VERSION.to_owned(),
        kind: K::KIND.to_owned(),
        list_kind: K::LIST_KIND.to_owned(),
        plural: K::URL_PATH_SEGMENT.to_owned(),
        singular: K::KIND.to_lowercase(),
        namespaced: TypeId::of::<K::Scope>() == TypeId::of::<NamespaceResourceScope>(),
        short_names: b.short_names.iter().map(|s| (*s).to_owned()).collect(),
        categories: b.categories.iter().map(|s| (*s).to_owned()).collect(),
        status: b.status,
        scale: b.scale.then(ScalePaths::standard),
        subresources: b.subresources.to_vec(),
        generation: b.generation,
        typed: Some(Typed {
            normalize: normalize::<K>,
            schema: schema::<K>,
            definition,
        }),
        crd: None,
        create_only: false,
        conversion: None,
        metrics: false,
    }
}

/// `obj` with `apiVersion` set to `api_version`.
fn with_api_version(mut obj: Value, api_version: &str) -> Value {
    if let Some(o) = obj.as_object_mut()
        && o.get("apiVersion").and_then(Value::as_str) != Some(api_version)
    {
        o.insert("apiVersion".into(), Value::String(api_version.to_owned()));
    }
    obj
}

/// Whether stored JSON (written with `apiVersion` first) names `api_version`.
fn starts_with_api_version(raw: &[u8], api_version: &str) -> bool {
    raw.strip_prefix(b"{\"apiVersion\":\"")
        .and_then(|rest| rest.strip_prefix(api_version.as_bytes()))
        .is_some_and(|rest| rest.first() == Some(&b'"'))
}

/// HorizontalPodAutoscalers: stored as autoscaling/v2, served as v2 and v1.
fn hpa(def: ResourceDef) -> ResourceDef {
    use super::conversion::autoscaling as convert;
    ResourceDef {
        conversion: Some(Conversion {
            storage_version: "v2".into(),
            how: Convert::Functions {
                to_storage: convert::v1_to_v2,
                from_storage: convert::v2_to_v1,
            },
        }),
        ..def
    }
}

/// A review API: created, evaluated and answered, never stored or listed.
fn review<K>() -> ResourceDef
where
    K: Resource + serde::de::DeserializeOwned + serde::Serialize + schemars::JsonSchema + 'static,
{
    ResourceDef {
        group: K::GROUP.to_owned(),
        version: K::VERSION.to_owned(),
        kind: K::KIND.to_owned(),
        list_kind: String::new(),
        plural: K::URL_PATH_SEGMENT.to_owned(),
        singular: K::KIND.to_lowercase(),
        namespaced: TypeId::of::<K::Scope>() == TypeId::of::<NamespaceResourceScope>(),
        short_names: Vec::new(),
        categories: Vec::new(),
        status: false,
        scale: None,
        subresources: Vec::new(),
        generation: false,
        typed: Some(Typed {
            normalize: normalize::<K>,
            schema: schema::<K>,
            definition: <K as schemars::JsonSchema>::schema_name().into_owned(),
        }),
        crd: None,
        create_only: true,
        conversion: None,
        metrics: false,
    }
}

/// A `metrics.k8s.io/v1beta1` resource, answered by the built-in metrics server
/// (metrics-server's `NodeMetrics` and `PodMetrics`; kubectl calls them `nodes` and
/// `pods` in that group).
fn metrics(kind: &str, plural: &str, namespaced: bool) -> ResourceDef {
    ResourceDef {
        group: "metrics.k8s.io".into(),
        version: "v1beta1".into(),
        kind: kind.into(),
        list_kind: format!("{kind}List"),
        plural: plural.into(),
        singular: String::new(),
        namespaced,
        short_names: Vec::new(),
        categories: Vec::new(),
        status: false,
        scale: None,
        subresources: Vec::new(),
        generation: false,
        typed: None,
        crd: None,
        create_only: false,
        conversion: None,
        metrics: true,
    }
}

/// The resources served, keyed by (group, version, plural).
#[derive(Debug, Default)]
pub struct Registry {
    resources: RwLock<BTreeMap<(String, String, String), Arc<ResourceDef>>>,
}

impl Registry {
    /// Every built-in resource of this release.
    pub fn builtin() -> Self {
        let registry = Self::default();
        let all = &["all"];
        let workload = Builtin {
            categories: all,
            status: true,
            scale: true,
            generation: true,
            ..PLAIN
        };
        let defs = vec![
            builtin::<core::v1::Pod>(Builtin {
                short_names: &["po"],
                categories: all,
                status: true,
                subresources: &[
                    "binding",
                    "eviction",
                    "ephemeralcontainers",
                    "log",
                    "exec",
                    "attach",
                    "portforward",
                    "proxy",
                ],
                generation: true,
                ..PLAIN
            }),
            builtin::<core::v1::PodTemplate>(PLAIN),
            builtin::<core::v1::ReplicationController>(Builtin {
                short_names: &["rc"],
                ..workload
            }),
            builtin::<core::v1::Service>(Builtin {
                short_names: &["svc"],
                categories: all,
                status: true,
                subresources: &["proxy"],
                ..PLAIN
            }),
            builtin::<core::v1::Endpoints>(Builtin {
                short_names: &["ep"],
                ..PLAIN
            }),
            builtin::<core::v1::Namespace>(Builtin {
                short_names: &["ns"],
                status: true,
                subresources: &["finalize"],
                ..PLAIN
            }),
            builtin::<core::v1::Node>(Builtin {
                short_names: &["no"],
                status: true,
                subresources: &["proxy"],
                ..PLAIN
            }),
            builtin::<core::v1::ConfigMap>(Builtin {
                short_names: &["cm"],
                ..PLAIN
            }),
            builtin::<core::v1::Secret>(PLAIN),
            builtin::<core::v1::ServiceAccount>(Builtin {
                short_names: &["sa"],
                subresources: &["token"],
                ..PLAIN
            }),
            builtin::<core::v1::Event>(Builtin {
                short_names: &["ev"],
                ..PLAIN
            }),
            builtin::<core::v1::PersistentVolume>(Builtin {
                short_names: &["pv"],
                status: true,
                ..PLAIN
            }),
            builtin::<core::v1::PersistentVolumeClaim>(Builtin {
                short_names: &["pvc"],
                status: true,
                ..PLAIN
            }),
            builtin::<core::v1::ResourceQuota>(Builtin {
                short_names: &["quota"],
                status: true,
                ..PLAIN
            }),
            builtin::<core::v1::LimitRange>(Builtin {
                short_names: &["limits"],
                ..PLAIN
            }),
            builtin::<apps::v1::Deployment>(Builtin {
                short_names: &["deploy"],
                ..workload
            }),
            builtin::<apps::v1::ReplicaSet>(Builtin {
                short_names: &["rs"],
                ..workload
            }),
            builtin::<apps::v1::StatefulSet>(Builtin {
                short_names: &["sts"],
                ..workload
            }),
            builtin::<apps::v1::DaemonSet>(Builtin {
                short_names: &["ds"],
                scale: false,
                ..workload
            }),
            builtin::<apps::v1::ControllerRevision>(PLAIN),
            builtin::<batch::v1::Job>(Builtin {
                scale: false,
                ..workload
            }),
            builtin::<batch::v1::CronJob>(Builtin {
                short_names: &["cj"],
                scale: false,
                ..workload
            }),
            builtin::<discovery::v1::EndpointSlice>(PLAIN),
            builtin::<coordination::v1::Lease>(PLAIN),
            builtin::<certificates::v1::CertificateSigningRequest>(Builtin {
                short_names: &["csr"],
                status: true,
                subresources: &["approval"],
                ..PLAIN
            }),
            builtin::<rbac::v1::Role>(PLAIN),
            builtin::<rbac::v1::ClusterRole>(PLAIN),
            builtin::<rbac::v1::RoleBinding>(PLAIN),
            builtin::<rbac::v1::ClusterRoleBinding>(PLAIN),
            builtin::<networking::v1::NetworkPolicy>(Builtin {
                short_names: &["netpol"],
                generation: true,
                ..PLAIN
            }),
            builtin::<networking::v1::Ingress>(Builtin {
                short_names: &["ing"],
                status: true,
                generation: true,
                ..PLAIN
            }),
            builtin::<networking::v1::IngressClass>(PLAIN),
            builtin::<storage::v1::StorageClass>(Builtin {
                short_names: &["sc"],
                ..PLAIN
            }),
            builtin::<storage::v1::CSIDriver>(PLAIN),
            builtin::<storage::v1::CSINode>(PLAIN),
            builtin::<storage::v1::CSIStorageCapacity>(PLAIN),
            builtin::<storage::v1::VolumeAttachment>(Builtin {
                status: true,
                ..PLAIN
            }),
            builtin::<scheduling::v1::PriorityClass>(Builtin {
                short_names: &["pc"],
                ..PLAIN
            }),
            builtin::<policy::v1::PodDisruptionBudget>(Builtin {
                short_names: &["pdb"],
                status: true,
                generation: true,
                ..PLAIN
            }),
            builtin::<events::v1::Event>(Builtin {
                short_names: &["ev"],
                ..PLAIN
            }),
            hpa(builtin::<autoscaling::v2::HorizontalPodAutoscaler>(
                Builtin {
                    short_names: &["hpa"],
                    categories: all,
                    status: true,
                    generation: true,
                    ..PLAIN
                },
            )),
            hpa(builtin::<autoscaling::v1::HorizontalPodAutoscaler>(
                Builtin {
                    short_names: &["hpa"],
                    categories: all,
                    status: true,
                    generation: true,
                    ..PLAIN
                },
            )),
            metrics("NodeMetrics", "nodes", false),
            metrics("PodMetrics", "pods", true),
            builtin::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>(
                Builtin {
                    categories: &["api-extensions"],
                    ..PLAIN
                },
            ),
            builtin::<k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration>(
                Builtin {
                    categories: &["api-extensions"],
                    ..PLAIN
                },
            ),
            builtin::<k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy>(
                Builtin {
                    categories: &["api-extensions"],
                    status: true,
                    generation: true,
                    ..PLAIN
                },
            ),
            builtin::<k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding>(
                Builtin {
                    categories: &["api-extensions"],
                    generation: true,
                    ..PLAIN
                },
            ),
            builtin::<apiextensions::v1::CustomResourceDefinition>(Builtin {
                short_names: &["crd", "crds"],
                categories: &["api-extensions"],
                status: true,
                generation: true,
                ..PLAIN
            }),
            // API aggregation (`apiserver::aggregator`) and API Priority and Fairness
            // objects (`apiserver::flowcontrol`).
            builtin::<k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService>(
                Builtin {
                    categories: &["api-extensions"],
                    status: true,
                    ..PLAIN
                },
            ),
            builtin::<k8s_openapi::api::flowcontrol::v1::FlowSchema>(Builtin {
                status: true,
                generation: true,
                ..PLAIN
            }),
            builtin::<k8s_openapi::api::flowcontrol::v1::PriorityLevelConfiguration>(Builtin {
                status: true,
                generation: true,
                ..PLAIN
            }),
        ];
        let reviews = [
            review::<authentication::v1::TokenReview>(),
            review::<authentication::v1::SelfSubjectReview>(),
            review::<authorization::v1::SubjectAccessReview>(),
            review::<authorization::v1::SelfSubjectAccessReview>(),
            review::<authorization::v1::LocalSubjectAccessReview>(),
            review::<authorization::v1::SelfSubjectRulesReview>(),
        ];
        for def in defs.into_iter().chain(reviews) {
            registry.insert(def);
        }
        registry
    }

    pub fn insert(&self, def: ResourceDef) {
        let key = (def.group.clone(), def.version.clone(), def.plural.clone());
        if let Ok(mut map) = self.resources.write() {
            map.insert(key, Arc::new(def));
        }
    }

    pub fn remove(&self, group: &str, version: &str, plural: &str) {
        if let Ok(mut map) = self.resources.write() {
            map.remove(&(group.to_owned(), version.to_owned(), plural.to_owned()));
        }
    }

    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        let map = self.resources.read().ok()?;
        map.get(&(group.to_owned(), version.to_owned(), plural.to_owned()))
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<ResourceDef>> {
        self.resources
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// (group, versions) pairs, core first, then groups by name; each group's versions
    /// in order of preference ([`compare_versions`], highest first), so the first is the
    /// preferred version discovery names.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for def in self.all() {
            let versions = groups.entry(def.group.clone()).or_default();
            if !versions.contains(&def.version) {
                versions.push(def.version.clone());
            }
        }
        for versions in groups.values_mut() {
            versions.sort_by(|a, b| compare_versions(b, a));
        }
        groups.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_as_kubernetes_prefers_them() {
        // The ordering example of the CRD versioning docs.
        let mut versions = vec![
            "v1alpha1",
            "v11alpha2",
            "foo10",
            "v10",
            "v2",
            "v1",
            "v12alpha1",
            "v3beta1",
            "v10beta3",
            "v11beta2",
            "foo1",
        ];
        versions.sort_by(|a, b| compare_versions(b, a));
        assert_eq!(
            versions,
            [
                "v10",
                "v2",
                "v1",
                "v11beta2",
                "v10beta3",
                "v3beta1",
                "v12alpha1",
                "v11alpha2",
                "v1alpha1",
                "foo1",
                "foo10",
            ]
        );
    }
}

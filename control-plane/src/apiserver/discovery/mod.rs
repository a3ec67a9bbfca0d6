//! Discovery, as kubectl and client-go read it: `/version`, `/api` (APIVersions),
//! `/apis` (APIGroupList), `/apis/{group}` (APIGroup) and the APIResourceLists of each
//! group-version with verbs, short names, categories and subresources.
//!
//! Clients that ask for aggregated discovery (`as=APIGroupDiscoveryList` in `Accept`) on
//! `/api` and `/apis` get [`aggregated`]'s documents instead, made from the same
//! per-resource lists ([`api_resources`]) the way kube-apiserver converts its own.

pub mod aggregated;
pub mod negotiation;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIResource, APIResourceList};
use serde_json::{Value, json};

use super::registry::{Registry, ResourceDef};

/// The Kubernetes release berth's API corresponds to.
pub const GIT_VERSION: &str = "v1.37.0";

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "37",
        "emulationMajor": "1",
        "emulationMinor": "37",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "36",
        "gitVersion": format!("{GIT_VERSION}+berth-{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "n/a (Rust)",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

pub fn core_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

/// One group of the legacy documents (`APIGroup` without its type).
pub(crate) fn group_json(group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({
        "name": group,
        "versions": vs,
        "preferredVersion": vs.first().cloned().unwrap_or(Value::Null),
    })
}

pub fn group_list(registry: &Registry) -> Value {
    let groups: Vec<Value> = registry
        .groups()
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, vs)| group_json(&g, &vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn group(registry: &Registry, name: &str) -> Option<Value> {
    let (g, vs) = registry.groups().into_iter().find(|(g, _)| g == name)?;
    let mut out = group_json(&g, &vs);
    out["kind"] = json!("APIGroup");
    out["apiVersion"] = json!("v1");
    Some(out)
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn subresource_verbs(sub: &str) -> &'static [&'static str] {
    match sub {
        "status" | "scale" | "ephemeralcontainers" => &["get", "patch", "update"],
        "binding" | "eviction" | "token" => &["create"],
        "log" => &["get"],
        "exec" | "attach" | "portforward" => &["create", "get"],
        "proxy" => &["create", "delete", "get", "patch", "update"],
        "finalize" => &["update"],
        _ => &["get"],
    }
}

/// The group, version and kind a subresource answers with; empty group and version
/// mean the resource's own group-version (as in kube-apiserver's APIResource).
fn subresource_kind<'a>(def: &'a ResourceDef, sub: &str) -> (&'static str, &'static str, &'a str) {
    match sub {
        "scale" => ("autoscaling", "v1", "Scale"),
        "binding" => ("", "", "Binding"),
        "eviction" => ("policy", "v1", "Eviction"),
        "token" => ("authentication.k8s.io", "v1", "TokenRequest"),
        "exec" => ("", "", "PodExecOptions"),
        "attach" => ("", "", "PodAttachOptions"),
        "portforward" => ("", "", "PodPortForwardOptions"),
        "log" => ("", "", "Pod"),
        "proxy" if def.kind == "Pod" => ("", "", "PodProxyOptions"),
        "proxy" if def.kind == "Node" => ("", "", "NodeProxyOptions"),
        "proxy" if def.kind == "Service" => ("", "", "ServiceProxyOptions"),
        _ => ("", "", def.kind.as_str()),
    }
}

fn strings(items: &[impl AsRef<str>]) -> Vec<String> {
    items.iter().map(|s| s.as_ref().to_owned()).collect()
}

/// One resource and its subresources (`pods`, `pods/attach`, …, `pods/status`, sorted
/// by name as kube-apiserver lists them): the one description both the legacy
/// APIResourceList and the aggregated document are made from.
pub fn api_resources(def: &ResourceDef) -> Vec<APIResource> {
    let mut out = vec![APIResource {
        name: def.plural.clone(),
        singular_name: def.singular.clone(),
        namespaced: def.namespaced,
        kind: def.kind.clone(),
        verbs: if def.create_only {
            strings(&["create"])
        } else if def.metrics {
            // The metrics server's resources are read-only, as metrics-server serves them.
            strings(&["get", "list"])
        } else {
            strings(VERBS)
        },
        // omitempty in metav1.APIResource
        short_names: (!def.short_names.is_empty()).then(|| def.short_names.clone()),
        categories: (!def.categories.is_empty()).then(|| def.categories.clone()),
        ..APIResource::default()
    }];
    let mut subs: Vec<&str> = Vec::new();
    if def.status {
        subs.push("status");
    }
    if def.scale.is_some() {
        subs.push("scale");
    }
    subs.extend(def.subresources.iter().copied());
    subs.sort_unstable();
    subs.dedup();
    for sub in subs {
        let (group, version, kind) = subresource_kind(def, sub);
        out.push(APIResource {
            name: format!("{}/{sub}", def.plural),
            singular_name: String::new(),
            namespaced: def.namespaced,
            kind: kind.to_owned(),
            verbs: strings(subresource_verbs(sub)),
            group: (!group.is_empty()).then(|| group.to_owned()),
            version: (!version.is_empty()).then(|| version.to_owned()),
            ..APIResource::default()
        });
    }
    out
}

/// Every resource (and subresource) served in one group-version, sorted by name.
pub fn group_version_resources(
    registry: &Registry,
    group: &str,
    version: &str,
) -> Vec<APIResource> {
    registry
        .all()
        .into_iter()
        .filter(|d| d.group == group && d.version == version)
        .flat_map(|d| api_resources(&d))
        .collect()
}

pub fn resource_list(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let resources = group_version_resources(registry, group, version);
    if resources.is_empty() {
        return None;
    }
    let list = APIResourceList {
        group_version: super::registry::group_version(group, version),
        resources,
    };
    serde_json::to_value(&list).ok()
}

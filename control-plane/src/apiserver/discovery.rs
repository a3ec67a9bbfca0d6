//! Discovery, as kubectl and client-go read it: `/version`, `/api` (APIVersions),
//! `/apis` (APIGroupList), `/apis/{group}` (APIGroup) and the APIResourceLists of each
//! group-version with verbs, short names, categories and subresources. Clients that
//! ask for aggregated discovery (`as=APIGroupDiscoveryList`) get the legacy documents
//! and fall back to them, as client-go does with any server that lacks it.

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

fn group_json(group: &str, versions: &[String]) -> Value {
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
        "status" | "scale" => &["get", "patch", "update"],
        "binding" | "eviction" | "token" => &["create"],
        "log" => &["get"],
        "exec" | "attach" | "portforward" => &["create", "get"],
        "proxy" => &["create", "delete", "get", "patch", "update"],
        "finalize" => &["update"],
        _ => &["get"],
    }
}

fn resource_json(def: &ResourceDef) -> Vec<Value> {
    let mut out = vec![json!({
        "name": def.plural,
        "singularName": def.singular,
        "namespaced": def.namespaced,
        "kind": def.kind,
        "verbs": VERBS,
        "shortNames": def.short_names,
        "categories": def.categories,
    })];
    let mut subs: Vec<&str> = Vec::new();
    if def.status {
        subs.push("status");
    }
    if def.scale.is_some() {
        subs.push("scale");
    }
    subs.extend(def.subresources.iter().copied());
    for sub in subs {
        let (group, version, kind) = match sub {
            "scale" => ("autoscaling", "v1", "Scale"),
            "binding" => ("", "", "Binding"),
            "eviction" => ("policy", "v1", "Eviction"),
            "token" => ("authentication.k8s.io", "v1", "TokenRequest"),
            "log" | "exec" | "attach" | "portforward" | "proxy" => (
                "",
                "",
                match sub {
                    "exec" => "PodExecOptions",
                    "attach" => "PodAttachOptions",
                    "portforward" => "PodPortForwardOptions",
                    "log" => "Pod",
                    _ => "PodProxyOptions",
                },
            ),
            _ => ("", "", def.kind.as_str()),
        };
        let mut r = json!({
            "name": format!("{}/{sub}", def.plural),
            "singularName": "",
            "namespaced": def.namespaced,
            "kind": kind,
            "verbs": subresource_verbs(sub),
        });
        if !group.is_empty() {
            r["group"] = json!(group);
            r["version"] = json!(version);
        }
        out.push(r);
    }
    out
}

pub fn resource_list(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let defs: Vec<_> = registry
        .all()
        .into_iter()
        .filter(|d| d.group == group && d.version == version)
        .collect();
    if defs.is_empty() {
        return None;
    }
    let group_version = super::registry::group_version(group, version);
    let resources: Vec<Value> = defs.iter().flat_map(|d| resource_json(d)).collect();
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

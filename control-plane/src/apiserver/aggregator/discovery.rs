//! Discovery across this server and the extension apiservers, as kube-aggregator
//! serves it: `/apis` and `/apis/<group>` list every group-version this server serves
//! and every remote APIService's (available or not), groups ordered by their highest
//! `groupPriorityMinimum` (then by name) and versions by `versionPriority` (then
//! Kubernetes version order); a remote APIService takes its group-version over from a
//! built-in one. The aggregated document (`apidiscovery.k8s.io/v2`) carries the
//! remote servers' resources as the availability controller last fetched them
//! ([`RemoteCache`]) — `freshness: Stale` (and no resources if never fetched) when the
//! last fetch failed, as upstream's discovery manager marks them, so clients fall back
//! to the (proxied) per-group-version document and report its error.
//!
//! Entry points: [`groups`], [`group_list`], [`group`], [`aggregated_response`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::RwLock;

use axum::response::Response;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResource;
use serde_json::{Value, json};

use super::apiservice::name_of;
use super::priorities;
use crate::apiserver::Api;
use crate::apiserver::discovery::aggregated::{
    self, GroupDiscovery, GroupDiscoveryList, GroupMeta, Root, VersionDiscovery,
};
use crate::apiserver::discovery::{group_json, group_version_resources};
use crate::apiserver::registry::compare_versions;
use crate::apiserver::status::ApiResult;

/// One remote group-version's last discovery fetch.
#[derive(Debug, Clone, Default)]
struct Remote {
    resources: Option<Vec<APIResource>>,
    fresh: bool,
}

/// The remote servers' resource lists, by APIService name.
#[derive(Debug, Default)]
pub struct RemoteCache(RwLock<HashMap<String, Remote>>);

impl RemoteCache {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Remote>> {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A successful fetch.
    pub fn store(&self, name: &str, resources: Vec<APIResource>) {
        self.write().insert(
            name.to_owned(),
            Remote {
                resources: Some(resources),
                fresh: true,
            },
        );
    }

    /// A failed fetch: what was fetched before stays, marked stale.
    pub fn stale(&self, name: &str) {
        self.write().entry(name.to_owned()).or_default().fresh = false;
    }

    pub fn remove(&self, name: &str) {
        self.write().remove(name);
    }

    fn get(&self, name: &str) -> Remote {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
            .unwrap_or_default()
    }
}

/// Who serves a group-version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Local,
    /// The remote APIService of this name.
    Remote(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub version: String,
    pub backend: Backend,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub versions: Vec<Version>,
}

/// One group-version as the ordering sees it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub group: String,
    pub version: String,
    pub backend: Backend,
    pub group_priority: i64,
    pub version_priority: i64,
}

/// Orders entries into groups as kube-aggregator's `SortedByGroupAndVersion`.
pub fn order(entries: Vec<Entry>) -> Vec<Group> {
    let mut by_group: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    for e in entries {
        by_group.entry(e.group.clone()).or_default().push(e);
    }
    let mut groups: Vec<(i64, Group)> = by_group
        .into_iter()
        .map(|(name, mut versions)| {
            let priority = versions.iter().map(|v| v.group_priority).max().unwrap_or(0);
            versions.sort_by(|a, b| {
                b.version_priority
                    .cmp(&a.version_priority)
                    .then_with(|| compare_versions(&b.version, &a.version))
            });
            let versions = versions
                .into_iter()
                .map(|e| Version {
                    version: e.version,
                    backend: e.backend,
                })
                .collect();
            (priority, Group { name, versions })
        })
        .collect();
    groups.sort_by(|(pa, a), (pb, b)| pb.cmp(pa).then_with(|| a.name.cmp(&b.name)));
    groups.into_iter().map(|(_, g)| g).collect()
}

/// Every named group (not the core group) with its versions and who serves each, in
/// discovery order.
pub fn groups(api: &Api) -> Vec<Group> {
    let services: HashMap<String, super::apiservice::ApiService> = super::list(api)
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    let mut seen = HashSet::new();
    let mut entries = Vec::new();
    let mut push = |group: &str, version: &str, backend: Backend| {
        if group.is_empty() || !seen.insert((group.to_owned(), version.to_owned())) {
            return;
        }
        let (gp, vp) = services
            .get(&name_of(group, version))
            .map(|s| (s.group_priority, s.version_priority))
            .unwrap_or_else(|| priorities::fallback(group, version));
        entries.push(Entry {
            group: group.to_owned(),
            version: version.to_owned(),
            backend,
            group_priority: gp,
            version_priority: vp,
        });
    };
    // Remote APIServices first: they take a group-version over.
    for s in services
        .values()
        .filter(|s| !s.is_local() && s.group != super::GROUP)
    {
        push(&s.group, &s.version, Backend::Remote(s.name.clone()));
    }
    for (group, versions) in api.registry.groups() {
        for v in versions {
            push(&group, &v, Backend::Local);
        }
    }
    order(entries)
}

/// The remote APIService serving `group`/`version`, if one does. The aggregator's own
/// group is always served here, as upstream's handler for it comes before the proxy.
pub fn remote_for(api: &Api, group: &str, version: &str) -> Option<super::apiservice::ApiService> {
    if group == super::GROUP {
        return None;
    }
    let key = format!("{}{}", super::PREFIX, name_of(group, version));
    let cached = api.cache.get(&key)?;
    // Every request of a built-in group-version comes here: a local APIService (no
    // `service` key at all) is passed over without parsing it.
    if !cached.raw.windows(9).any(|w| w == b"\"service\"") {
        return None;
    }
    let svc = super::apiservice::ApiService::parse(&cached.value())?;
    (!svc.is_local() && svc.group == group && svc.version == version).then_some(svc)
}

fn versions_of(g: &Group) -> Vec<String> {
    g.versions.iter().map(|v| v.version.clone()).collect()
}

/// `/apis`: the APIGroupList.
pub fn group_list(api: &Api) -> Value {
    let groups: Vec<Value> = groups(api)
        .iter()
        .map(|g| group_json(&g.name, &versions_of(g)))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`: the APIGroup.
pub fn group(api: &Api, name: &str) -> Option<Value> {
    let g = groups(api).into_iter().find(|g| g.name == name)?;
    let mut out = group_json(&g.name, &versions_of(&g));
    out["kind"] = json!("APIGroup");
    out["apiVersion"] = json!("v1");
    Some(out)
}

/// The aggregated `/apis` document: built-in and CRD group-versions from the
/// registry, remote ones from the last discovery fetch.
pub fn document(api: &Api) -> GroupDiscoveryList {
    let items = groups(api)
        .into_iter()
        .map(|g| GroupDiscovery {
            versions: g
                .versions
                .iter()
                .map(|v| match &v.backend {
                    Backend::Local => VersionDiscovery {
                        version: v.version.clone(),
                        resources: aggregated::convert(&group_version_resources(
                            &api.registry,
                            &g.name,
                            &v.version,
                        )),
                        freshness: "Current",
                    },
                    Backend::Remote(name) => {
                        let remote = api.aggregator.discovery.get(name);
                        VersionDiscovery {
                            version: v.version.clone(),
                            resources: remote
                                .resources
                                .as_deref()
                                .map(aggregated::convert)
                                .unwrap_or_default(),
                            freshness: if remote.fresh { "Current" } else { "Stale" },
                        }
                    }
                })
                .collect(),
            metadata: GroupMeta { name: g.name },
        })
        .collect();
    GroupDiscoveryList {
        kind: String::new(),
        api_version: String::new(),
        metadata: serde_json::Map::new(),
        items,
    }
}

/// The aggregated document of `root` in `version`: `/api` is the core group alone,
/// `/apis` the merged one.
pub fn aggregated_response(
    api: &Api,
    root: Root,
    version: &str,
    if_none_match: Option<&str>,
) -> ApiResult<Response> {
    match root {
        Root::Api => aggregated::response(&api.registry, root, version, if_none_match),
        Root::Apis => aggregated::respond(document(api), version, if_none_match),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(group: &str, version: &str, backend: Backend) -> Entry {
        let (gp, vp) = priorities::fallback(group, version);
        Entry {
            group: group.into(),
            version: version.into(),
            backend,
            group_priority: gp,
            version_priority: vp,
        }
    }

    #[test]
    fn groups_by_priority_then_name_and_versions_by_priority() {
        let groups = order(vec![
            entry("example.com", "v1beta1", Backend::Local),
            entry("example.com", "v1", Backend::Local),
            entry("apps", "v1", Backend::Local),
            entry("autoscaling", "v1", Backend::Local),
            entry("autoscaling", "v2", Backend::Local),
            entry("apiregistration.k8s.io", "v1", Backend::Local),
            entry(
                "metrics.k8s.io",
                "v1beta1",
                Backend::Remote("v1beta1.metrics.k8s.io".into()),
            ),
            entry("aaa.io", "v1", Backend::Local),
        ]);
        let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        // Built-ins first (kube-apiserver's priorities), then CRD groups (1000) by
        // name, then the metrics group (100).
        assert_eq!(
            names,
            [
                "apiregistration.k8s.io",
                "apps",
                "autoscaling",
                "aaa.io",
                "example.com",
                "metrics.k8s.io"
            ]
        );
        let autoscaling: Vec<&str> = groups[2]
            .versions
            .iter()
            .map(|v| v.version.as_str())
            .collect();
        assert_eq!(autoscaling, ["v2", "v1"], "v2 has versionPriority 30");
        let example: Vec<&str> = groups[4]
            .versions
            .iter()
            .map(|v| v.version.as_str())
            .collect();
        assert_eq!(
            example,
            ["v1", "v1beta1"],
            "equal priorities: Kubernetes version order"
        );
    }

    #[test]
    fn a_remote_apiservice_priority_orders_its_group() {
        let mut high = entry("custom.io", "v1", Backend::Remote("v1.custom.io".into()));
        high.group_priority = 20000;
        let groups = order(vec![entry("apps", "v1", Backend::Local), high]);
        assert_eq!(groups[0].name, "custom.io");
    }

    #[test]
    fn remote_cache_keeps_stale_resources() {
        let cache = RemoteCache::default();
        assert!(cache.get("v1.x.io").resources.is_none());
        cache.stale("v1.x.io");
        assert!(!cache.get("v1.x.io").fresh);
        cache.store(
            "v1.x.io",
            vec![APIResource {
                name: "things".into(),
                ..APIResource::default()
            }],
        );
        assert!(cache.get("v1.x.io").fresh);
        cache.stale("v1.x.io");
        let r = cache.get("v1.x.io");
        assert!(!r.fresh && r.resources.is_some_and(|r| r.len() == 1));
        cache.remove("v1.x.io");
        assert!(cache.get("v1.x.io").resources.is_none());
    }
}

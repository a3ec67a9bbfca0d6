//! Aggregated discovery (KEP-3352, `apidiscovery.k8s.io/v2`, GA in Kubernetes 1.30):
//! `/api` and `/apis` answer one `APIGroupDiscoveryList` with every group, version and
//! resource — two requests where the legacy documents take one per group-version.
//!
//! The document is made from the legacy per-resource lists ([`super::api_resources`])
//! exactly as kube-apiserver's `ConvertGroupVersionIntoToDiscovery` makes it: each
//! resource with its subresources folded in, Go's `omitempty` rules for the JSON, and
//! freshness `Current` for what this server serves (`/apis` is the aggregator's merge
//! with the extension apiservers', `apiserver::aggregator::discovery`, whose remote
//! group-versions go `Stale` when their server cannot be reached).
//! Like upstream's `ServeHTTPWithETag` it carries an `ETag` (the SHA-512 of the
//! document without its type, so v2 and v2beta1 share it), `Vary: Accept`,
//! `Cache-Control: public`, and answers `304 Not Modified` to a matching
//! `If-None-Match`.
//!
//! Entry point: [`response`]; [`super::negotiation`] decides when it is asked for.

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResource;
use serde::Serialize;

use super::negotiation;
use crate::apiserver::registry::Registry;
use crate::apiserver::status::{ApiError, ApiResult};

/// `metav1.GroupVersionKind`: all three fields always written.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupVersionKind {
    pub group: String,
    pub version: String,
    pub kind: String,
}

/// `APISubresourceDiscovery`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubresourceDiscovery {
    pub subresource: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_kind: Option<GroupVersionKind>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub accepted_types: Vec<GroupVersionKind>,
    pub verbs: Vec<String>,
}

/// `APIResourceDiscovery`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceDiscovery {
    pub resource: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_kind: Option<GroupVersionKind>,
    pub scope: &'static str,
    pub singular_resource: String,
    pub verbs: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub short_names: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subresources: Vec<SubresourceDiscovery>,
}

/// `APIVersionDiscovery`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionDiscovery {
    pub version: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ResourceDiscovery>,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub freshness: &'static str,
}

/// The part of `ObjectMeta` a group carries: its name (empty, and so left out, for core).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupMeta {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// `APIGroupDiscovery`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupDiscovery {
    pub metadata: GroupMeta,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<VersionDiscovery>,
}

/// `APIGroupDiscoveryList`; `kind`/`apiVersion` empty while the ETag is computed, as
/// upstream hashes the untyped object.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupDiscoveryList {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    /// `ListMeta`, always `{}` (nothing set, and Go writes empty structs).
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub items: Vec<GroupDiscovery>,
}

fn scope(namespaced: bool) -> &'static str {
    if namespaced { "Namespaced" } else { "Cluster" }
}

fn kind_of(r: &APIResource) -> GroupVersionKind {
    GroupVersionKind {
        group: r.group.clone().unwrap_or_default(),
        version: r.version.clone().unwrap_or_default(),
        kind: r.kind.clone(),
    }
}

/// kube-apiserver's `ConvertGroupVersionIntoToDiscovery`: top-level resources first,
/// then each `parent/sub` entry folded into its parent (a parent made up, with an
/// empty response kind, if a subresource has none).
pub fn convert(list: &[APIResource]) -> Vec<ResourceDiscovery> {
    let mut out: Vec<ResourceDiscovery> = list
        .iter()
        .filter(|r| !r.name.contains('/'))
        .map(|r| ResourceDiscovery {
            resource: r.name.clone(),
            response_kind: Some(kind_of(r)),
            scope: scope(r.namespaced),
            singular_resource: r.singular_name.clone(),
            verbs: r.verbs.clone(),
            short_names: r.short_names.clone().unwrap_or_default(),
            categories: r.categories.clone().unwrap_or_default(),
            subresources: Vec::new(),
        })
        .collect();
    for r in list {
        let Some((parent, sub)) = r.name.split_once('/') else {
            continue;
        };
        let index = match out.iter().position(|p| p.resource == parent) {
            Some(i) => i,
            None => {
                out.push(ResourceDiscovery {
                    resource: parent.to_owned(),
                    response_kind: Some(GroupVersionKind {
                        group: String::new(),
                        version: String::new(),
                        kind: String::new(),
                    }),
                    scope: scope(r.namespaced),
                    singular_resource: String::new(),
                    verbs: Vec::new(),
                    short_names: Vec::new(),
                    categories: Vec::new(),
                    subresources: Vec::new(),
                });
                out.len() - 1
            }
        };
        out[index].subresources.push(SubresourceDiscovery {
            subresource: sub.to_owned(),
            response_kind: Some(kind_of(r)),
            accepted_types: Vec::new(),
            verbs: r.verbs.clone(),
        });
    }
    out
}

/// Which half of the API a document covers: `/api` (the core group only) or `/apis`
/// (every named group, built-in and from CRDs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    Api,
    Apis,
}

/// The groups of `root`, each with its versions in order of preference (the same
/// order, and so the same preferred version, as the legacy APIGroup).
pub fn document(registry: &Registry, root: Root) -> GroupDiscoveryList {
    let items = registry
        .groups()
        .into_iter()
        .filter(|(group, _)| group.is_empty() == (root == Root::Api))
        .map(|(group, versions)| GroupDiscovery {
            versions: versions
                .iter()
                .map(|version| VersionDiscovery {
                    version: version.clone(),
                    resources: convert(&super::group_version_resources(registry, &group, version)),
                    freshness: "Current",
                })
                .collect(),
            metadata: GroupMeta { name: group },
        })
        .collect();
    GroupDiscoveryList {
        kind: String::new(),
        api_version: String::new(),
        metadata: serde_json::Map::new(),
        items,
    }
}

/// Upstream's `calculateETag`: the SHA-512 of the untyped document's JSON, in
/// upper-case hex, quoted as an entity tag.
fn etag(untyped: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA512, untyped);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    format!("\"{hex}\"")
}

/// The aggregated document of `root` in `version` (`v2` or `v2beta1`), or `304` when
/// `if_none_match` is its ETag.
pub fn response(
    registry: &Registry,
    root: Root,
    version: &str,
    if_none_match: Option<&str>,
) -> ApiResult<Response> {
    respond(document(registry, root), version, if_none_match)
}

/// Serves an (untyped) document in `version`, or `304` when `if_none_match` is its
/// ETag — also the aggregator's merged `/apis` (`apiserver::aggregator::discovery`).
pub fn respond(
    mut doc: GroupDiscoveryList,
    version: &str,
    if_none_match: Option<&str>,
) -> ApiResult<Response> {
    let encode = |e: serde_json::Error| ApiError::internal(format!("encoding discovery: {e}"));
    let tag = etag(&serde_json::to_vec(&doc).map_err(encode)?);
    let headers = [
        (header::ETAG, tag.clone()),
        (header::VARY, "Accept".to_owned()),
        (header::CACHE_CONTROL, "public".to_owned()),
    ];
    if if_none_match == Some(tag.as_str()) {
        return Ok((StatusCode::NOT_MODIFIED, headers).into_response());
    }
    doc.kind = negotiation::KIND.to_owned();
    doc.api_version = format!("{}/{version}", negotiation::GROUP);
    let body = serde_json::to_vec(&doc).map_err(encode)?;
    Ok((
        StatusCode::OK,
        headers,
        [(header::CONTENT_TYPE, negotiation::content_type(version))],
        Body::from(body),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn body(root: Root) -> Value {
        serde_json::to_value(document(&Registry::builtin(), root)).expect("encode")
    }

    fn resource<'a>(doc: &'a Value, group: &str, version: &str, name: &str) -> &'a Value {
        let items = doc["items"].as_array().expect("items");
        let g = items
            .iter()
            .find(|g| g["metadata"]["name"].as_str().unwrap_or_default() == group)
            .unwrap_or_else(|| panic!("group {group:?} in {doc}"));
        let v = g["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .find(|v| v["version"] == version)
            .unwrap_or_else(|| panic!("version {version} of {group:?}"));
        assert_eq!(v["freshness"], "Current");
        v["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .find(|r| r["resource"] == name)
            .unwrap_or_else(|| panic!("{name} in {group:?}/{version}"))
    }

    #[test]
    fn core_is_alone_in_api_and_has_no_name() {
        let doc = body(Root::Api);
        let items = doc["items"].as_array().expect("items");
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["metadata"], json!({}), "Go omits the empty name");
        let apis = body(Root::Apis);
        assert!(apis["items"].as_array().expect("items").iter().all(|g| {
            g["metadata"]["name"]
                .as_str()
                .is_some_and(|n| !n.is_empty())
        }));
        assert_eq!(apis["metadata"], json!({}));
        assert!(apis.get("kind").is_none(), "untyped until served");
    }

    #[test]
    fn pods_as_upstream_lists_them() {
        let doc = body(Root::Api);
        let pods = resource(&doc, "", "v1", "pods");
        assert_eq!(
            pods["responseKind"],
            json!({"group": "", "version": "", "kind": "Pod"})
        );
        assert_eq!(pods["scope"], "Namespaced");
        assert_eq!(pods["singularResource"], "pod");
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["categories"], json!(["all"]));
        assert_eq!(pods["verbs"].as_array().map(Vec::len), Some(8));
        let subs: Vec<&str> = pods["subresources"]
            .as_array()
            .expect("subresources")
            .iter()
            .filter_map(|s| s["subresource"].as_str())
            .collect();
        assert_eq!(
            subs,
            [
                "attach",
                "binding",
                "ephemeralcontainers",
                "eviction",
                "exec",
                "log",
                "portforward",
                "proxy",
                "status"
            ]
        );
        let sub = |name: &str| {
            pods["subresources"]
                .as_array()
                .and_then(|s| s.iter().find(|s| s["subresource"] == name))
                .cloned()
                .unwrap_or_else(|| panic!("pods/{name}"))
        };
        assert_eq!(
            sub("status"),
            json!({"subresource": "status",
                   "responseKind": {"group": "", "version": "", "kind": "Pod"},
                   "verbs": ["get", "patch", "update"]})
        );
        assert_eq!(sub("log")["verbs"], json!(["get"]));
        assert_eq!(
            sub("eviction")["responseKind"],
            json!({"group": "policy", "version": "v1", "kind": "Eviction"})
        );
        // A resource without short names or categories leaves them out (omitempty).
        let secrets = resource(&doc, "", "v1", "secrets");
        assert!(secrets.get("shortNames").is_none() && secrets.get("categories").is_none());
        assert!(secrets.get("subresources").is_none());
        assert_eq!(
            resource(&doc, "", "v1", "nodes")["scope"],
            "Cluster",
            "nodes are cluster-scoped"
        );
    }

    #[test]
    fn deployments_scale_is_autoscaling_v1() {
        let doc = body(Root::Apis);
        let d = resource(&doc, "apps", "v1", "deployments");
        assert_eq!(
            d["subresources"],
            json!([
                {"subresource": "scale",
                 "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"},
                 "verbs": ["get", "patch", "update"]},
                {"subresource": "status",
                 "responseKind": {"group": "", "version": "", "kind": "Deployment"},
                 "verbs": ["get", "patch", "update"]},
            ])
        );
    }

    #[test]
    fn field_order_is_go_struct_order() {
        let doc = document(&Registry::builtin(), Root::Apis);
        let text = String::from_utf8(serde_json::to_vec(&doc).expect("encode")).expect("utf8");
        let first = text.find("\"resource\":").expect("resource");
        let order = [
            "\"resource\":",
            "\"responseKind\":",
            "\"scope\":",
            "\"singularResource\":",
            "\"verbs\":",
        ];
        let at: Vec<usize> = order
            .iter()
            .map(|key| text[first..].find(key).expect(key))
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{order:?} at {at:?}");
        assert!(text.starts_with("{\"metadata\":{},\"items\":[{\"metadata\":{\"name\":"));
    }

    #[test]
    fn a_subresource_without_its_parent_gets_one() {
        let list = vec![APIResource {
            name: "things/status".into(),
            kind: "Thing".into(),
            namespaced: true,
            verbs: vec!["get".into()],
            ..APIResource::default()
        }];
        let out = convert(&list);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].resource, "things");
        assert_eq!(
            out[0].response_kind.as_ref().map(|k| k.kind.as_str()),
            Some("")
        );
        assert_eq!(out[0].subresources[0].subresource, "status");
    }

    #[tokio::test]
    async fn etag_and_not_modified() {
        let registry = Registry::builtin();
        let first = response(&registry, Root::Apis, "v2", None).expect("response");
        assert_eq!(first.status(), StatusCode::OK);
        let h = first.headers();
        assert_eq!(
            h[header::CONTENT_TYPE],
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
        );
        assert_eq!(h[header::VARY], "Accept");
        let tag = h[header::ETAG].to_str().expect("etag").to_owned();
        assert_eq!(tag.len(), 128 + 2, "quoted SHA-512 hex: {tag}");
        let bytes = axum::body::to_bytes(first.into_body(), usize::MAX)
            .await
            .expect("body");
        let doc: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(doc["kind"], "APIGroupDiscoveryList");
        assert_eq!(doc["apiVersion"], "apidiscovery.k8s.io/v2");

        // The same document in v2beta1 has the same tag (Vary: Accept keeps caches apart).
        let beta = response(&registry, Root::Apis, "v2beta1", None).expect("response");
        assert_eq!(beta.headers()[header::ETAG], tag.as_str());
        assert_eq!(
            beta.headers()[header::CONTENT_TYPE],
            "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
        );

        let cached = response(&registry, Root::Apis, "v2", Some(&tag)).expect("response");
        assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(cached.headers()[header::ETAG], tag.as_str());
        let stale = response(&registry, Root::Apis, "v2", Some("\"0\"")).expect("response");
        assert_eq!(stale.status(), StatusCode::OK);

        // The core document is another document with another tag.
        let core = response(&registry, Root::Api, "v2", None).expect("response");
        assert_ne!(core.headers()[header::ETAG], tag.as_str());
    }
}

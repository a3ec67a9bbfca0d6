//! The APIService availability controller (kube-aggregator's local and remote
//! `AvailableConditionController`s): a local APIService is `Available=True` (`Local`,
//! "Local APIServices are always available"); a remote one is checked — its Service
//! exists (`ServiceNotFound`), a ClusterIP Service listens on the port
//! (`ServicePortError`) and has endpoint slices (`EndpointsNotFound`) with a ready
//! address on that port (`MissingEndpoints`), and a `GET /apis/<group>/<version>` of
//! up to five of its endpoints answers 2xx or 3xx within 5 s (`FailedDiscoveryCheck`,
//! with Go's error text) — then it is `Available=True` (`Passed`, "all checks
//! passed"). The check is made as upstream makes it: without verifying the server's
//! certificate, as `system:kube-aggregator` in `system:masters`, with the front-proxy
//! client certificate. A passing check also fetches the group-version's resource
//! list, verified against the `caBundle`, for aggregated discovery.
//!
//! A remote APIService is checked when it, its Service, Endpoints or EndpointSlices
//! change, when a proxied request could not reach it, and every 30 s (upstream's
//! resync); a failing one again after 1 s, doubling to 30 s.
//!
//! Entry point: [`run`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, header};
use http_body_util::BodyExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::apiservice::{self, ApiService};
use super::transport::{self, Trust};
use super::{GROUP, PREFIX, endpoints};
use crate::apiserver::Api;
use crate::apiserver::rest::{self, Part};
use crate::apiserver::watch_cache::ChangeKind;

/// Upstream's resync of remote APIServices.
const RESYNC: Duration = Duration::from_secs(30);
/// The discovery check's timeout (upstream's client timeout).
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// How many endpoints one check tries, at once (upstream: five attempts).
const ATTEMPTS: usize = 5;
/// The largest discovery document read.
const MAX_DISCOVERY: usize = 16 * 1024 * 1024;

const SERVICES: &str = "/registry/core/services/";
const ENDPOINTS: &str = "/registry/core/endpoints/";
const SLICES: &str = "/registry/discovery.k8s.io/endpointslices/";
const SERVICE_NAME: &str = "kubernetes.io/service-name";

/// The condition a check arrived at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

impl Verdict {
    fn new(status: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
        }
    }

    fn available(&self) -> bool {
        self.status == "True"
    }
}

/// The verdict for a local APIService.
pub fn local() -> Verdict {
    Verdict::new("True", "Local", "Local APIServices are always available")
}

/// The discovery path an APIService must serve.
fn discovery_path(svc: &ApiService) -> String {
    if svc.name == "v1." {
        format!("/api/{}", svc.version)
    } else {
        format!("/apis/{}/{}", svc.group, svc.version)
    }
}

/// `GET path` of one endpoint as the aggregator, within [`CHECK_TIMEOUT`]: the
/// response, or Go's error text.
async fn get(
    addr: std::net::SocketAddr,
    svc: &ApiService,
    trust: &Trust,
    identity: &super::front_proxy::Identity,
    path: &str,
) -> Result<axum::http::Response<hyper::body::Incoming>, String> {
    let Some(service) = svc.service.as_ref() else {
        return Err("local APIService".into());
    };
    let url = format!("{}{path}", transport::base_url(addr));
    let config = transport::client_config(trust, identity)?;
    let req = Request::get(path)
        .header(header::HOST, addr.to_string())
        .header(header::ACCEPT, "application/json")
        .header(super::front_proxy::USER_HEADER, "system:kube-aggregator")
        .header(super::front_proxy::GROUP_HEADER, "system:masters")
        .body(Body::empty())
        .map_err(|e| e.to_string())?;
    let server_name = service.server_name();
    let send = transport::send(addr, &server_name, config, req, CHECK_TIMEOUT);
    match tokio::time::timeout(CHECK_TIMEOUT, send).await {
        Err(_) => Err(format!(
            "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
        Ok(Err(e)) => Err(format!("Get \"{url}\": {e}")),
        Ok(Ok(resp)) => Ok(resp),
    }
}

/// The remote checks of one APIService.
async fn check_remote(api: &Api, svc: &ApiService) -> Verdict {
    let Some(service) = svc.service.as_ref() else {
        return local();
    };
    if let Err((reason, message)) = endpoints::precheck(api, service) {
        return Verdict::new("False", reason, message);
    }
    let addrs = match endpoints::ready(api, service) {
        Ok(a) => a,
        Err(e) => return Verdict::new("False", "FailedDiscoveryCheck", e),
    };
    let Some(identity) = api.aggregator.identity() else {
        return Verdict::new(
            "False",
            "FailedDiscoveryCheck",
            "this server has no front-proxy client certificate",
        );
    };
    let path = discovery_path(svc);
    let attempts = addrs.iter().take(ATTEMPTS).map(|addr| {
        let path = path.clone();
        async move {
            let url = format!("{}{path}", transport::base_url(*addr));
            let result = match get(*addr, svc, &Trust::Insecure, identity, &path).await {
                Ok(resp) if resp.status().is_success() || resp.status().is_redirection() => Ok(()),
                Ok(resp) => Err(format!("bad status from {url}: {}", resp.status().as_u16())),
                Err(e) => Err(e),
            };
            result.map_err(|e| format!("failing or missing response from {url}: {e}"))
        }
    });
    let results = futures_util::future::join_all(attempts).await;
    if results.iter().any(Result::is_ok) {
        return Verdict::new("True", "Passed", "all checks passed");
    }
    let last = results
        .into_iter()
        .filter_map(Result::err)
        .next_back()
        .unwrap_or_default();
    Verdict::new("False", "FailedDiscoveryCheck", last)
}

/// Fetches the group-version's APIResourceList (verified against the caBundle) into
/// the discovery cache; a failure marks what is cached stale.
async fn refresh_discovery(api: &Api, svc: &ApiService) {
    let fetched = async {
        let service = svc.service.as_ref().ok_or("local")?;
        let addr = endpoints::resolve(api, service)?;
        let identity = api.aggregator.identity().ok_or("no front-proxy identity")?;
        let trust = if svc.insecure {
            Trust::Insecure
        } else {
            Trust::Bundle(svc.ca_bundle.clone())
        };
        let resp = get(addr, svc, &trust, identity, &discovery_path(svc)).await?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status().as_u16()));
        }
        let body = tokio::time::timeout(
            CHECK_TIMEOUT,
            http_body_util::Limited::new(resp.into_body(), MAX_DISCOVERY).collect(),
        )
        .await
        .map_err(|_| "timed out reading the discovery document".to_owned())?
        .map_err(|e| e.to_string())?
        .to_bytes();
        let list: APIResourceList = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        Ok::<_, String>(list.resources)
    };
    match fetched.await {
        Ok(resources) => api.aggregator.discovery.store(&svc.name, resources),
        Err(err) => {
            tracing::debug!(apiservice = %svc.name, %err, "aggregated discovery fetch failed");
            api.aggregator.discovery.stale(&svc.name);
        }
    }
}

/// Writes the `Available` condition if it changed.
async fn write(api: &Arc<Api>, name: &str, verdict: &Verdict) {
    let Some(ctx) = super::internal_ctx(api, GROUP, "apiservices", None) else {
        return;
    };
    let result = rest::update_live(&ctx, name, Part::Status, |live| {
        let mut next = live.clone();
        apiservice::set_available(&mut next, verdict.status, verdict.reason, &verdict.message);
        Ok(next)
    })
    .await;
    match result {
        Ok((_, true)) => tracing::info!(
            apiservice = %name, status = verdict.status, reason = verdict.reason,
            "changing APIService availability"
        ),
        Ok(_) => {}
        Err(e) if e.code == 404 => {}
        Err(e) => {
            tracing::warn!(apiservice = %name, error = %e.message, "APIService status update failed")
        }
    }
}

/// Checks one APIService and records the result; `Some(available)` for a remote one
/// (which is checked again later), `None` for a local or deleted one.
async fn check(api: Arc<Api>, name: String) -> Option<bool> {
    let Some((svc, _)) = super::get(&api, &name) else {
        api.aggregator.discovery.remove(&name);
        return None;
    };
    if svc.is_local() {
        api.aggregator.discovery.remove(&name);
        write(&api, &name, &local()).await;
        return None;
    }
    let verdict = check_remote(&api, &svc).await;
    if verdict.available() {
        refresh_discovery(&api, &svc).await;
    } else {
        api.aggregator.discovery.stale(&name);
    }
    write(&api, &name, &verdict).await;
    Some(verdict.available())
}

/// `namespace/name` of the Services each APIService points at.
fn references(api: &Api) -> HashMap<String, HashSet<String>> {
    let mut out: HashMap<String, HashSet<String>> = HashMap::new();
    for svc in super::list(api) {
        if let Some(s) = &svc.service {
            out.entry(format!("{}/{}", s.namespace, s.name))
                .or_default()
                .insert(svc.name);
        }
    }
    out
}

/// The `namespace/name` of the Service a Service, Endpoints or EndpointSlice key (and
/// its object) belongs to.
fn service_of(key: &str, object: &crate::apiserver::watch_cache::Cached) -> Option<String> {
    if let Some(rest) = key
        .strip_prefix(SERVICES)
        .or_else(|| key.strip_prefix(ENDPOINTS))
    {
        return Some(rest.to_owned());
    }
    let rest = key.strip_prefix(SLICES)?;
    let ns = rest.split('/').next()?;
    let svc = object.attrs.labels.get(SERVICE_NAME)?;
    Some(format!("{ns}/{svc}"))
}

fn spec_of(object: &crate::apiserver::watch_cache::Cached) -> Value {
    object.value().get("spec").cloned().unwrap_or(Value::Null)
}

fn mark(due: &mut HashMap<String, Instant>, name: String) {
    due.insert(name, Instant::now());
}

/// Runs until the process ends.
pub async fn run(api: Arc<Api>, mut recheck: UnboundedReceiver<String>) {
    let (existing, mut watch) = api.cache.snapshot_and_watch(PREFIX);
    let now = Instant::now();
    let mut due: HashMap<String, Instant> = existing
        .iter()
        .filter_map(|o| o.key.strip_prefix(PREFIX))
        .map(|name| (name.to_owned(), now))
        .collect();
    let mut refs = references(&api);
    let mut failures: HashMap<String, u32> = HashMap::new();
    let mut running: JoinSet<(String, Option<bool>)> = JoinSet::new();
    let mut in_flight: HashSet<String> = HashSet::new();
    loop {
        let now = Instant::now();
        let ready: Vec<String> = due
            .iter()
            .filter(|(name, at)| **at <= now && !in_flight.contains(*name))
            .map(|(name, _)| name.clone())
            .collect();
        for name in ready {
            due.remove(&name);
            in_flight.insert(name.clone());
            let api = api.clone();
            running.spawn(async move {
                let result = check(api, name.clone()).await;
                (name, result)
            });
        }
        let next = due
            .iter()
            .filter(|(name, _)| !in_flight.contains(*name))
            .map(|(_, at)| *at)
            .min()
            .unwrap_or(now + RESYNC);
        tokio::select! {
            change = watch.live.recv() => match change {
                Ok(change) => {
                    let key = change.object.key.as_str();
                    if let Some(name) = key.strip_prefix(PREFIX) {
                        let spec_changed = match (&change.kind, &change.prev) {
                            (ChangeKind::Modified, Some(prev)) => spec_of(prev) != spec_of(&change.object),
                            _ => true,
                        };
                        if change.kind == ChangeKind::Deleted {
                            due.remove(name);
                            failures.remove(name);
                            api.aggregator.discovery.remove(name);
                        } else if spec_changed {
                            mark(&mut due, name.to_owned());
                        }
                        if spec_changed {
                            refs = references(&api);
                        }
                    } else if let Some(service) = service_of(key, &change.object)
                        .or_else(|| change.prev.as_ref().and_then(|p| service_of(key, p)))
                        && let Some(names) = refs.get(&service)
                    {
                        for name in names {
                            mark(&mut due, name.clone());
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    refs = references(&api);
                    for svc in super::list(&api) {
                        mark(&mut due, svc.name);
                    }
                }
                Err(_) => return,
            },
            Some(name) = recheck.recv() => mark(&mut due, name),
            Some(done) = running.join_next(), if !running.is_empty() => {
                let Ok((name, result)) = done else { continue };
                in_flight.remove(&name);
                let after = match result {
                    None => {
                        failures.remove(&name);
                        continue;
                    }
                    Some(true) => {
                        failures.remove(&name);
                        RESYNC
                    }
                    Some(false) => {
                        let n = failures.entry(name.clone()).or_default();
                        *n = n.saturating_add(1);
                        Duration::from_secs(1u64 << (*n - 1).min(5)).min(RESYNC)
                    }
                };
                let at = Instant::now() + after;
                due.entry(name).and_modify(|t| *t = (*t).min(at)).or_insert(at);
            }
            _ = tokio::time::sleep_until(next) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn checks_the_group_version_document() {
        let svc = ApiService::parse(&json!({
            "metadata": {"name": "v1beta1.metrics.k8s.io"},
            "spec": {"group": "metrics.k8s.io", "version": "v1beta1"},
        }))
        .expect("parse");
        assert_eq!(discovery_path(&svc), "/apis/metrics.k8s.io/v1beta1");
        let core =
            ApiService::parse(&json!({"metadata": {"name": "v1."}, "spec": {"version": "v1"}}))
                .expect("parse");
        assert_eq!(discovery_path(&core), "/api/v1");
        assert_eq!(local().reason, "Local");
    }
}

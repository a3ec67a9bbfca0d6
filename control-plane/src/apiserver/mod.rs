//! The Kubernetes-compatible apiserver: HTTPS only, client-certificate and token
//! authentication, discovery and OpenAPI, and the REST verbs over every built-in
//! resource and custom resources — served from the watch cache and written to the
//! MVCC store.
//!
//! Entry point: [`run`] with a [`Config`]; it makes the PKI and the admin kubeconfig on
//! first start, opens the store, fills the watch cache, creates the namespaces and the
//! `kubernetes` Service every cluster has, and serves until the process ends.

pub mod admission;
pub mod aggregator;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod backend;
pub mod bootstrap_token;
pub mod coalesce;
pub mod conversion;
pub mod crd;
pub mod discovery;
pub mod endpoint_reconciler;
pub mod field_order;
pub mod flowcontrol;
pub mod kubelet;
pub mod managed_fields;
pub mod metrics;
pub mod metrics_server;
pub mod object;
pub mod openapi;
pub mod openapi_extensions;
pub mod patch;
pub mod pki;
pub mod protobuf;
pub mod registry;
pub mod request;
pub mod rest;
pub mod reviews;
pub mod selectors;
pub mod serviceaccount_token;
pub mod snapshot;
pub mod status;
pub mod table;
pub mod watch_cache;
pub mod zero_values;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use self::auth::{PeerIdentity, Tokens, UserInfo};
use self::authz::Authorizer;
use self::registry::{Registry, ResourceDef};
use self::rest::{Ctx, json_response, value_response};
use self::status::{ApiError, ApiResult};
use self::watch_cache::WatchCache;
use crate::store::{LeaseId, Store, StoreError};

/// The scheduler's kubeconfig in the data dir (user `system:kube-scheduler`).
pub const SCHEDULER_KUBECONFIG: &str = "scheduler.kubeconfig";
/// The controller manager's kubeconfig in the data dir (user
/// `system:kube-controller-manager`).
pub const CONTROLLER_MANAGER_KUBECONFIG: &str = "controller-manager.kubeconfig";
/// Largest request body accepted (Kubernetes' limit is 3 MiB).
/// The StorageClass every berth-server creates at start, marked default.
pub const DEFAULT_STORAGE_CLASS: &str = "local";
/// berth-csi's driver (and provisioner) name.
pub const CSI_DRIVER: &str = "csi.berth.io";
pub const MAX_BODY: usize = 3 * 1024 * 1024;
/// TTL of Events (kube-apiserver `--event-ttl`).
const EVENT_TTL: Duration = Duration::from_secs(3600);

/// How to run the apiserver.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub bind: SocketAddr,
    /// The address clients and the `kubernetes` Service's endpoints use.
    pub advertise: std::net::IpAddr,
    pub token_file: Option<PathBuf>,
    /// Where to write the admin kubeconfig (default `<data-dir>/admin.kubeconfig`).
    pub kubeconfig: Option<PathBuf>,
    /// `--authorization-mode`.
    pub authorization_mode: authz::Mode,
    /// How often the built-in metrics server scrapes the kubelets
    /// (metrics-server's `--metric-resolution`, 15 s).
    pub metric_resolution: Duration,
    /// `--max-requests-inflight` and `--max-mutating-requests-inflight` (0: no limit).
    pub max_requests_inflight: usize,
    pub max_mutating_requests_inflight: usize,
    /// `--encryption-provider-config`: an `EncryptionConfiguration` whose resources are
    /// stored encrypted ([`crate::store::encryption`]).
    pub encryption_provider_config: Option<PathBuf>,
    /// The `--audit-*` flags.
    pub audit: audit::Options,
    /// `--etcd-servers` and the other `--etcd-*` flags: keep the objects in etcd
    /// instead of the embedded store in the data dir.
    pub etcd: Option<crate::store::etcd::Options>,
    /// `--client-ca-file`/`--client-ca-key-file` and
    /// `--tls-cert-file`/`--tls-private-key-file` (default: made in `<data-dir>/pki`).
    pub pki: pki::Sources,
    /// `--tls-san`: more names for the serving certificate berth-server makes.
    pub tls_sans: Vec<String>,
    /// `--service-account-signing-key-file` (default `<data-dir>/pki/sa.key`).
    pub service_account_signing_key: Option<PathBuf>,
    /// `--service-account-key-file`: more keys that verify ServiceAccount tokens.
    pub service_account_keys: Vec<PathBuf>,
    /// `--endpoint-reconciler-type`: how the `kubernetes` Service's endpoints are kept.
    pub endpoint_reconciler: endpoint_reconciler::Type,
}

/// Shared state of every request.
#[derive(Debug)]
pub struct Api {
    pub store: Arc<dyn Store>,
    pub cache: Arc<WatchCache>,
    pub registry: Arc<Registry>,
    /// Service cluster IPs and node ports, allocated in the store (shared by every
    /// server on it).
    pub services: Arc<admission::service_ranges::ServiceRanges>,
    pub metrics: metrics::Metrics,
    pub openapi: openapi::Documents,
    pub max_body: usize,
    /// `--max-requests-inflight` / `--max-mutating-requests-inflight`.
    pub inflight: InFlight,
    pub tokens: Tokens,
    pub sa_tokens: serviceaccount_token::Issuer,
    /// The RBAC objects, parsed and kept current from the watch cache (the RBAC
    /// authorizer's, and the escalation checks').
    pub rbac: Arc<authz::rbac::Rbac>,
    pub authorizer: Box<dyn Authorizer>,
    pub authorization_mode: authz::Mode,
    /// The built-in metrics server's points (`metrics.k8s.io`).
    pub resource_metrics: metrics_server::Storage,
    /// API aggregation's state (remote discovery, the front-proxy identity).
    pub aggregator: aggregator::Aggregator,
    /// The ValidatingAdmissionPolicies in force, compiled (from the watch cache).
    pub policies: admission::policy::Policies,
    /// The audit policy and log, when `--audit-policy-file` and `--audit-log-path`
    /// are given (set once, before serving).
    pub audit: std::sync::OnceLock<audit::Auditor>,
    event_lease: tokio::sync::Mutex<Option<(LeaseId, Instant)>>,
}

impl Api {
    pub async fn new(
        store: Arc<dyn Store>,
        tokens: Tokens,
        sa_tokens: serviceaccount_token::Issuer,
        authorization_mode: authz::Mode,
    ) -> Result<Arc<Self>, StoreError> {
        let cache = WatchCache::start(store.clone()).await?;
        let rbac = authz::rbac::Rbac::start(cache.clone());
        let authorizer: Box<dyn Authorizer> = match authorization_mode {
            authz::Mode::NodeRbac => Box::new(authz::RbacMode(
                rbac.clone(),
                Some(authz::node::NodeAuthorizer::new(cache.clone())),
            )),
            authz::Mode::Rbac => Box::new(authz::RbacMode(rbac.clone(), None)),
            authz::Mode::AlwaysAllow => Box::new(authz::AlwaysAllow),
        };
        let services = Arc::new(admission::service_ranges::ServiceRanges::new(store.clone()));
        if let Err(err) = services.repair().await {
            tracing::warn!(%err, "checking the service ranges against the Services failed");
        }
        tokio::spawn(admission::service_ranges::repair_periodically(
            services.clone(),
        ));
        let api = Arc::new(Self {
            store,
            cache,
            registry: Arc::new(Registry::builtin()),
            services,
            metrics: metrics::Metrics::default(),
            openapi: openapi::Documents::default(),
            max_body: MAX_BODY,
            inflight: InFlight::default(),
            tokens,
            sa_tokens,
            rbac,
            authorizer,
            authorization_mode,
            resource_metrics: metrics_server::Storage::default(),
            aggregator: aggregator::Aggregator::default(),
            policies: admission::policy::Policies::default(),
            audit: std::sync::OnceLock::new(),
            event_lease: tokio::sync::Mutex::new(None),
        });
        tokio::spawn(crd::run(api.clone()));
        Ok(api)
    }

    /// The lease Events are attached to; one per minute, so expiry is batched (as the
    /// etcd3 storage's lease manager does).
    pub async fn event_lease(&self) -> Result<LeaseId, StoreError> {
        let mut guard = self.event_lease.lock().await;
        if let Some((id, at)) = *guard
            && at.elapsed() < Duration::from_secs(60)
        {
            return Ok(id);
        }
        let id = self
            .store
            .grant_lease(EVENT_TTL + Duration::from_secs(60))
            .await?;
        *guard = Some((id, Instant::now()));
        Ok(id)
    }

    /// Namespace lifecycle: objects go only into namespaces that exist and are not
    /// being deleted. A namespace the watch cache does not show yet is looked up in the
    /// store (upstream's live lookup), so an object created right after its namespace
    /// is not refused while the cache catches up.
    pub async fn check_namespace(&self, namespace: &str, kind: &str) -> ApiResult<()> {
        if kind == "Namespace" {
            return Ok(());
        }
        let key = format!("/registry/core/namespaces/{namespace}");
        let value: Value = match self.cache.get(&key) {
            Some(ns) => ns.value(),
            None => match self.store.get(&key, None).await {
                Ok(Some(kv)) => serde_json::from_slice(&kv.value).unwrap_or(Value::Null),
                Ok(None) => return Err(ApiError::not_found("", "namespaces", namespace)),
                Err(e) => return Err(ApiError::from_store(e, "", "namespaces", namespace)),
            },
        };
        if object::meta(&value).is_some_and(|m| m.contains_key("deletionTimestamp")) {
            return Err(ApiError::forbidden(format!(
                "unable to create new content in namespace {namespace} because it is being terminated"
            )));
        }
        Ok(())
    }

    /// Releases what a deleted object held.
    pub async fn after_delete(&self, def: &ResourceDef, obj: &Value) {
        if def.group.is_empty() && def.kind == "Service" {
            self.services.release(obj).await;
        }
    }

    /// A context for the server's own writes (bootstrap objects).
    fn internal(
        self: &Arc<Self>,
        group: &str,
        plural: &str,
        namespace: Option<&str>,
    ) -> Option<Ctx> {
        let def = self.registry.get(group, "v1", plural)?;
        Some(Ctx {
            api: self.clone(),
            def,
            namespace: namespace.map(str::to_owned),
            query: request::Query::default(),
            headers: Default::default(),
            user: None,
            warnings: Default::default(),
        })
    }

    /// The user a bearer token names — a static token, or a ServiceAccount token
    /// for one of `audiences` (the server's issuer when empty) whose account (and
    /// bound object) still exists — and the audiences it is valid for.
    pub fn authenticate_token(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Option<(UserInfo, Vec<String>)> {
        let default = [serviceaccount_token::ISSUER.to_owned()];
        let audiences = if audiences.is_empty() {
            &default[..]
        } else {
            audiences
        };
        if let Some(user) = self.tokens.get(token) {
            return Some((user.clone(), audiences.to_vec()));
        }
        if bootstrap_token::parse(token).is_some() {
            return bootstrap_token::authenticate(&self.cache, token)
                .map(|user| (user, audiences.to_vec()));
        }
        let (claims, matched) = audiences
            .iter()
            .find_map(|aud| Some((self.sa_tokens.verify(token, aud)?, aud.clone())))?;
        let user = serviceaccount_token::user(&claims, |key| {
            let obj = self.cache.get(key)?.value();
            object::meta_str(&obj, "uid").map(str::to_owned)
        })?;
        Some((user, vec![matched]))
    }

    /// Creates what every cluster has: the four system namespaces, the `kubernetes`
    /// Service (first service IP, port 443; its endpoints are the
    /// [`endpoint_reconciler`]'s), and the `kube-system/kube-dns` Service (tenth service
    /// IP, 53/UDP and 53/TCP). Several servers may do this at once on one store: an
    /// object another made first is left as it is.
    pub async fn bootstrap(self: &Arc<Self>, port: u16) -> ApiResult<()> {
        self.cache.wait_for(self.store.current_revision()).await;
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            if let Some(ctx) = self.internal("", "namespaces", None) {
                ignore_exists(rest::create_object(&ctx, json!({"metadata": {"name": ns}})).await)?;
            }
        }
        self.cache.wait_for(self.store.current_revision()).await;
        authz::bootstrap::reconcile(self).await?;
        // The identity agents enforce NetworkPolicy as (see authz::node).
        if let Some(ctx) = self.internal("", "serviceaccounts", Some("kube-system"))
            && self
                .cache
                .get(&ctx.key(authz::node::NETWORK_POLICY_ACCOUNT))
                .is_none()
        {
            ignore_exists(
                rest::create_object(
                    &ctx,
                    json!({"metadata": {"name": authz::node::NETWORK_POLICY_ACCOUNT}}),
                )
                .await,
            )?;
        }
        let ip = self.services.first().to_string();
        if let Some(ctx) = self.internal("", "services", Some("default"))
            && self.cache.get(&ctx.key("kubernetes")).is_none()
        {
            let created = rest::create_object(
                &ctx,
                json!({
                    "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
                    "spec": {"clusterIP": ip, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]},
                }),
            )
            .await;
            made_or_there(&ctx, "kubernetes", created).await?;
        }
        // The cluster DNS Service: no pods behind it — every berth-agent answers for
        // its address on its own node. Labels as upstream's kube-dns/CoreDNS Service.
        if let Some(ctx) = self.internal("", "services", Some("kube-system"))
            && self.cache.get(&ctx.key("kube-dns")).is_none()
        {
            let created = rest::create_object(
                &ctx,
                json!({
                    "metadata": {"name": "kube-dns", "labels": {
                        "k8s-app": "kube-dns",
                        "kubernetes.io/cluster-service": "true",
                        "kubernetes.io/name": "KubeDNS",
                    }},
                    "spec": {"clusterIP": self.services.dns().to_string(), "ports": [
                        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                    ]},
                }),
            )
            .await;
            match made_or_there(&ctx, "kube-dns", created).await {
                Err(e) if e.code == 422 => tracing::warn!(
                    error = %e.message,
                    "the kube-dns Service cannot have its address; cluster DNS is unreachable by IP"
                ),
                other => other?,
            }
        }
        // The default StorageClass, backed by berth-csi: created at start when absent
        // (as k3s creates `local-path`); a class the admin changed is left as it is.
        if let Some(ctx) = self.internal("storage.k8s.io", "storageclasses", None)
            && self.cache.get(&ctx.key(DEFAULT_STORAGE_CLASS)).is_none()
        {
            ignore_exists(
                rest::create_object(
                    &ctx,
                    json!({
                        "apiVersion": "storage.k8s.io/v1",
                        "kind": "StorageClass",
                        "metadata": {"name": DEFAULT_STORAGE_CLASS, "annotations": {
                            admission::storage::IS_DEFAULT_CLASS: "true",
                        }},
                        "provisioner": CSI_DRIVER,
                        "reclaimPolicy": "Delete",
                        "volumeBindingMode": "WaitForFirstConsumer",
                        "allowVolumeExpansion": true,
                    }),
                )
                .await,
            )?;
        }
        // Its CSIDriver: no attach step, fsGroup applied to every volume, capacity
        // published per node and class (CSIStorageCapacity) for the scheduler.
        if let Some(ctx) = self.internal("storage.k8s.io", "csidrivers", None)
            && self.cache.get(&ctx.key(CSI_DRIVER)).is_none()
        {
            ignore_exists(
                rest::create_object(
                    &ctx,
                    json!({
                        "apiVersion": "storage.k8s.io/v1",
                        "kind": "CSIDriver",
                        "metadata": {"name": CSI_DRIVER},
                        "spec": {
                            "attachRequired": false,
                            "podInfoOnMount": false,
                            "storageCapacity": true,
                            "fsGroupPolicy": "File",
                            "requiresRepublish": false,
                            "seLinuxMount": false,
                            "volumeLifecycleModes": ["Persistent"],
                        },
                    }),
                )
                .await,
            )?;
        }
        Ok(())
    }
}

/// A bootstrap create's outcome: made, or refused because another server made the
/// object first (409, or 422 for the address that Service already holds).
async fn made_or_there(
    ctx: &Ctx,
    name: &str,
    result: ApiResult<(Value, StatusCode)>,
) -> ApiResult<()> {
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.code == 409 => Ok(()),
        Err(e) => match ctx.current(name).await {
            Ok(Some(_)) => Ok(()),
            _ => Err(e),
        },
    }
}

fn ignore_exists(result: ApiResult<(Value, StatusCode)>) -> ApiResult<()> {
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// The HTTP application (TLS is added by [`serve`]).
/// kube-apiserver's max-in-flight filter: at most so many read-only and so many
/// mutating requests are served at once (400 and 200 by default; 0: no limit); one
/// more is answered 429 `TooManyRequests` with `Retry-After: 1`. Long-running
/// requests (watches, exec/attach/port-forward, logs, proxies) and `system:masters`
/// are not counted, as upstream.
#[derive(Debug)]
pub struct InFlight {
    readonly: (tokio::sync::Semaphore, std::sync::atomic::AtomicBool),
    mutating: (tokio::sync::Semaphore, std::sync::atomic::AtomicBool),
}

/// The defaults of `--max-requests-inflight` and `--max-mutating-requests-inflight`.
pub const MAX_REQUESTS_INFLIGHT: usize = 400;
pub const MAX_MUTATING_REQUESTS_INFLIGHT: usize = 200;

impl Default for InFlight {
    fn default() -> Self {
        let slot = |n| {
            (
                tokio::sync::Semaphore::new(n),
                std::sync::atomic::AtomicBool::new(false),
            )
        };
        Self {
            readonly: slot(MAX_REQUESTS_INFLIGHT),
            mutating: slot(MAX_MUTATING_REQUESTS_INFLIGHT),
        }
    }
}

impl InFlight {
    /// Sets the limits (0: unlimited); call once, before serving.
    pub fn configure(&self, readonly: usize, mutating: usize) {
        for ((sem, unlimited), (want, default)) in [
            (&self.readonly, (readonly, MAX_REQUESTS_INFLIGHT)),
            (&self.mutating, (mutating, MAX_MUTATING_REQUESTS_INFLIGHT)),
        ] {
            unlimited.store(want == 0, std::sync::atomic::Ordering::Relaxed);
            if want > default {
                sem.add_permits(want - default);
            } else if want > 0 {
                sem.forget_permits(default - want);
            }
        }
    }

    /// A slot for a request of `verb` (`metrics::verb`'s), or the 429 to answer.
    fn admit(&self, verb: &str) -> ApiResult<Option<tokio::sync::SemaphorePermit<'_>>> {
        let (sem, unlimited) = match verb {
            "GET" | "LIST" => &self.readonly,
            _ => &self.mutating,
        };
        if unlimited.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(None);
        }
        sem.try_acquire().map(Some).map_err(|_| {
            let mut e = ApiError::new(
                429,
                "TooManyRequests",
                "Too many requests, please try again later.",
            );
            e.retry_after = Some(1);
            e
        })
    }
}

/// Whether a request is long-running (not counted in flight): watches, and the
/// connect-style subresources and proxies.
fn long_running(verb: &str, path: &str, query: Option<&str>) -> bool {
    verb == "WATCH"
        || ["/exec", "/attach", "/portforward", "/log", "/proxy"]
            .iter()
            .any(|s| path.ends_with(s))
        || path.contains("/proxy/")
        || query.is_some_and(|q| q.split('&').any(|kv| kv == "follow=true"))
}

pub fn router(api: Arc<Api>) -> Router {
    Router::new().fallback(dispatch).with_state(api)
}

async fn dispatch(State(api): State<Arc<Api>>, req: Request<Body>) -> Response {
    let started = Instant::now();
    // Every response carries its audit ID, audited or not (upstream's WithAuditInit).
    let audit_id = audit::request_id(req.headers());
    let received = audit::event::MicroTime::now();
    let auditor = api.audit.get();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let parsed = request::parse_path(&path);
    let resource = parsed
        .as_ref()
        .map(|p| p.resource.clone())
        .unwrap_or_default();
    let verb = metrics::verb(&method, parsed.as_ref(), req.uri().query());
    // Status errors in protobuf for clients that prefer it, as kube-apiserver does.
    let protobuf = protobuf::accepts(req.headers());
    let counted = !long_running(&verb, &path, req.uri().query());
    let mut response = match authenticate(&api, &req) {
        Err(e) => {
            if let Some(auditor) = auditor {
                auditor.failed_authentication(&req, &audit_id, received, parsed.as_ref());
            }
            e.into_response()
        }
        Ok(user) => {
            let master = user.as_ref().is_some_and(authz::is_master);
            let record = auditor.and_then(|a| {
                a.begin(
                    &req,
                    &audit_id,
                    received,
                    user.as_ref(),
                    parsed.as_ref(),
                    !counted,
                )
            });
            let req = match &record {
                Some(record) => record.capture_request(req, api.max_body),
                None => req,
            };
            let slot = if counted && !master {
                api.inflight.admit(&verb)
            } else {
                Ok(None)
            };
            let serve = async {
                let _slot = slot?;
                route(api.clone(), user, parsed, req).await
            };
            let result = match &record {
                Some(record) => record.serve(serve).await,
                None => serve.await,
            };
            let response = match result {
                Ok(r) => r,
                Err(e) if protobuf => e.into_protobuf_response(),
                Err(e) => e.into_response(),
            };
            match record {
                Some(record) => record.respond(response),
                None => response,
            }
        }
    };
    audit::set_header(&mut response, &audit_id);
    api.metrics.observe(
        &verb,
        &resource,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Who the request is from: its client certificate, its bearer token (401 if the
/// token is not valid), or — with none — the anonymous user (`None` under
/// `AlwaysAllow`, where anonymous requests may only read the public paths).
fn authenticate(api: &Api, req: &Request<Body>) -> ApiResult<Option<UserInfo>> {
    if let Some(PeerIdentity(Some(user))) = req.extensions().get::<PeerIdentity>() {
        return Ok(Some(user.clone()));
    }
    if let Some(header) = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        && let Some(token) = auth::bearer_token(header)
    {
        return api
            .authenticate_token(token.trim(), &[])
            .map(|(user, _)| Some(user))
            .ok_or_else(ApiError::unauthorized);
    }
    if api.authorization_mode.anonymous_is_authorized() {
        return Ok(Some(auth::anonymous()));
    }
    if auth::is_public(req.uri().path()) {
        return Ok(None);
    }
    Err(ApiError::unauthorized())
}

async fn route(
    api: Arc<Api>,
    user: Option<UserInfo>,
    parsed: Option<request::ResourcePath>,
    req: Request<Body>,
) -> ApiResult<Response> {
    let path = req.uri().path().to_owned();
    let user = match user {
        Some(user) => {
            let requester = audit::active().then(|| user.clone());
            let user = authz::impersonation::apply(api.authorizer.as_ref(), user, req.headers())?;
            if requester.is_some_and(|r| r != user) {
                audit::impersonated(&user);
            }
            let mut attrs = authz::Attributes::from_request(
                user,
                req.method(),
                &path,
                parsed.as_ref(),
                req.uri().query(),
            );
            // A websocket GET to exec, attach or port-forward starts a session: it takes
            // `create`, as kube-apiserver's AuthorizePodWebsocketUpgradeCreatePermission.
            let websocket = req
                .headers()
                .get("upgrade")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
            if websocket
                && attrs.verb == "get"
                && attrs.api_group.is_empty()
                && attrs.resource == "pods"
                && matches!(
                    attrs.subresource.as_str(),
                    "exec" | "attach" | "portforward"
                )
            {
                attrs.verb = "create".into();
            }
            let decision = api.authorizer.authorize(&attrs);
            audit::authorization(decision.allowed, &decision.reason);
            if !decision.allowed {
                return Err(attrs.forbidden(&decision.reason));
            }
            Some(attrs.user)
        }
        None => None,
    };
    // A group-version a remote APIService serves goes to its server.
    let req = match aggregator::proxy::intercept(&api, user.as_ref(), req).await? {
        Ok(proxied) => return Ok(proxied),
        Err(req) => req,
    };
    let get = req.method() == Method::GET;
    let trimmed = path.trim_end_matches('/');
    match trimmed {
        "/healthz" | "/livez" => {
            return Ok((StatusCode::OK, [("content-type", "text/plain")], "ok").into_response());
        }
        "/readyz" => return Ok(backend::readyz(api.store.as_ref()).await),
        "/version" => return Ok(value_response(StatusCode::OK, &discovery::version())),
        snapshot::PATH if get => return snapshot::respond(&api).await,
        "/metrics" if get => {
            return Ok((StatusCode::OK, [("content-type", metrics::OPENMETRICS)], {
                // One exposition: the apiserver's families, the scheduler's, then
                // the HPA controller's — one `# EOF`, at the end.
                let body = |text: String| text.strip_suffix("# EOF\n").unwrap_or(&text).to_owned();
                body(api.metrics.render(&api))
                    + &body(crate::scheduler::metrics::render())
                    + &crate::controllers::podautoscaler::metrics::render()
            })
                .into_response());
        }
        "/api" | "/apis" if get => {
            let root = if trimmed == "/api" {
                discovery::aggregated::Root::Api
            } else {
                discovery::aggregated::Root::Apis
            };
            let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
            if let Some(version) =
                discovery::negotiation::aggregated_version(header(axum::http::header::ACCEPT))
            {
                return aggregator::discovery::aggregated_response(
                    &api,
                    root,
                    version,
                    header(axum::http::header::IF_NONE_MATCH),
                );
            }
            let legacy = match root {
                discovery::aggregated::Root::Api => discovery::core_versions(),
                discovery::aggregated::Root::Apis => aggregator::discovery::group_list(&api),
            };
            return Ok(value_response(StatusCode::OK, &legacy));
        }
        "/.well-known/openid-configuration" if get => {
            return Ok(value_response(StatusCode::OK, &api.sa_tokens.discovery()));
        }
        "/openid/v1/jwks" if get => {
            return Ok(value_response(StatusCode::OK, &api.sa_tokens.jwks()));
        }
        "/openapi/v3" if get => {
            return Ok(value_response(
                StatusCode::OK,
                &openapi::index(&api.registry),
            ));
        }
        _ => {}
    }
    if let Some(rest) = trimmed.strip_prefix("/openapi/v3/")
        && get
    {
        let doc = api
            .openapi
            .get(&api.registry, rest)
            .ok_or_else(|| ApiError::path_not_found(&path))?;
        return Ok(json_response(StatusCode::OK, doc.as_ref().clone()));
    }
    if let Some(group) = trimmed.strip_prefix("/apis/")
        && !group.contains('/')
        && get
    {
        let g = aggregator::discovery::group(&api, group)
            .ok_or_else(|| ApiError::path_not_found(&path))?;
        return Ok(value_response(StatusCode::OK, &g));
    }
    let Some(parsed) = parsed else {
        return Err(ApiError::path_not_found(&path));
    };
    if parsed.resource.is_empty() {
        if !get {
            return Err(ApiError::method_not_allowed("discovery is read-only"));
        }
        let list = discovery::resource_list(&api.registry, &parsed.group, &parsed.version)
            .ok_or_else(|| ApiError::path_not_found(&path))?;
        return Ok(value_response(StatusCode::OK, &list));
    }
    rest::handle(api, parsed, user, req).await
}

/// Opens everything and serves HTTPS until the process ends.
pub async fn run(config: Config) -> anyhow::Result<()> {
    use anyhow::Context;
    // A bad audit policy stops the server before anything else is done.
    let auditor = audit::Auditor::start(&config.audit)?;
    // So does a bad encryption config (its error names the field).
    let encryption = config
        .encryption_provider_config
        .as_deref()
        .map(crate::store::encryption::Transformers::load)
        .transpose()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    // The data dir holds the store (Secrets among it) and the keys: its owner's only.
    restrict(&config.data_dir, 0o700)?;
    let mut sans = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "kubernetes".to_owned(),
        "kubernetes.default".to_owned(),
        "kubernetes.default.svc".to_owned(),
        "kubernetes.default.svc.cluster.local".to_owned(),
        admission::service_ips::Allocator::default()
            .first()
            .to_string(),
        config.advertise.to_string(),
    ];
    if let Ok(host) = nix_hostname() {
        sans.push(host);
    }
    sans.extend(config.tls_sans.iter().cloned());
    sans.dedup();
    let pki = pki::Pki::ensure_from(&config.data_dir.join("pki"), &sans, &config.pki)?;
    let kubeconfig = config
        .kubeconfig
        .clone()
        .unwrap_or_else(|| config.data_dir.join("admin.kubeconfig"));
    let server_url = format!(
        "https://{}:{}",
        url_host(config.advertise),
        config.bind.port()
    );
    pki.write_kubeconfig(
        &kubeconfig,
        &server_url,
        "kubernetes-admin",
        &["system:masters"],
    )?;
    // The in-process scheduler's and controller manager's identities: the bootstrap
    // policy binds `system:kube-scheduler` and `system:kube-controller-manager` to
    // their roles (each controller then acts as its own ServiceAccount).
    pki.write_kubeconfig(
        &config.data_dir.join(SCHEDULER_KUBECONFIG),
        &server_url,
        "system:kube-scheduler",
        &[],
    )?;
    pki.write_kubeconfig(
        &config.data_dir.join(CONTROLLER_MANAGER_KUBECONFIG),
        &server_url,
        "system:kube-controller-manager",
        &[],
    )?;
    let (kubelet_cert, kubelet_key) = pki.issue(kubelet::CLIENT_USER, &[], &[], false)?;
    kubelet::init(&kubelet_cert, &kubelet_key, &pki.ca_cert).context("the kubelet client")?;
    let tokens = match &config.token_file {
        Some(path) => Tokens::load(path).map_err(anyhow::Error::msg)?,
        None => Tokens::default(),
    };
    // With etcd, the port answers (not ready) while etcd is being reached.
    let (store, listener): (Arc<dyn Store>, _) = match &config.etcd {
        Some(etcd) => {
            let (store, listener) = backend::open_etcd(etcd, config.bind, &pki).await?;
            (store, Some(listener))
        }
        None => (
            Arc::new(
                crate::store::redb::RedbStore::open(&config.data_dir.join("store.redb"))
                    .context("opening the store")?,
            ),
            None,
        ),
    };
    let store: Arc<dyn Store> = match encryption {
        Some(transformers) => Arc::new(
            crate::store::encryption::EncryptedStore::open(store, transformers)
                .await
                .context("reading the store with the encryption config")?,
        ),
        None => store,
    };
    for file in ["store.redb", "store.wal"] {
        let path = config.data_dir.join(file);
        if path.exists() {
            restrict(&path, 0o600)?;
        }
    }
    restrict(&config.data_dir.join("pki"), 0o700)?;
    tokio::spawn(compact_periodically(store.clone()));
    let sa_tokens = serviceaccount_token::Issuer::load(
        &config.data_dir.join("pki"),
        config.service_account_signing_key.as_deref(),
        &config.service_account_keys,
    )
    .context("the service account token key")?;
    let api = Api::new(store, tokens, sa_tokens, config.authorization_mode)
        .await
        .context("starting the watch cache")?;
    api.inflight.configure(
        config.max_requests_inflight,
        config.max_mutating_requests_inflight,
    );
    if let Some(auditor) = auditor {
        api.metrics.register_audit(&auditor);
        let _ = api.audit.set(auditor);
    }
    api.bootstrap(config.bind.port())
        .await
        .map_err(|e| anyhow::anyhow!("bootstrap: {e}"))?;
    let reconciler = match config.endpoint_reconciler {
        endpoint_reconciler::Type::Lease => Some(
            endpoint_reconciler::Reconciler::start(
                api.clone(),
                config.advertise,
                config.bind.port(),
            )
            .await,
        ),
        endpoint_reconciler::Type::None => {
            endpoint_reconciler::write_once(&api, config.advertise, config.bind.port()).await;
            None
        }
    };
    tokio::spawn(metrics_server::scrape::run(
        api.clone(),
        config.metric_resolution,
    ));
    aggregator::start(&api, &pki)
        .await
        .context("API aggregation")?;
    tokio::spawn(flowcontrol::bootstrap::run(api.clone()));
    let listener = match listener {
        Some(listener) => listener,
        None => tokio::net::TcpListener::bind(config.bind)
            .await
            .with_context(|| format!("binding {}", config.bind))?,
    };
    tracing::info!(address = %config.bind, kubeconfig = %kubeconfig.display(), "berth-server serving");
    tokio::select! {
        served = serve(listener, api, &pki) => served,
        () = shutdown_signal() => {
            // A clean stop leaves the `kubernetes` endpoints at once, not when the
            // master lease expires.
            if let Some(reconciler) = reconciler {
                reconciler.remove().await;
            }
            Ok(())
        }
    }
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
        }
        _ => std::future::pending().await,
    }
}

/// Sets `path`'s permission bits to `mode`.
fn restrict(path: &std::path::Path, mode: u32) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("restricting {} to {mode:o}", path.display()))
}

fn url_host(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    }
}

fn nix_hostname() -> std::io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")?
        .trim()
        .to_owned())
}

/// Keeps five minutes of history, as kube-apiserver's compaction interval does.
async fn compact_periodically(store: Arc<dyn Store>) {
    let mut previous = store.current_revision();
    loop {
        tokio::time::sleep(Duration::from_secs(300)).await;
        if previous > store.compacted_revision()
            && let Err(err) = store.compact(previous).await
        {
            tracing::warn!(%err, "compaction failed");
        }
        previous = store.current_revision();
    }
}

/// How long a client has to finish its TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an HTTP/1 request head may take to arrive.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(32);

/// The serving certificate's TLS acceptor, asking for (not requiring) client
/// certificates; HTTP/2 and HTTP/1.1.
pub fn tls_acceptor(pki: &pki::Pki) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pki.ca_cert.as_bytes()) {
        roots.add(cert?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.server_cert.as_bytes()).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(pki.server_key.as_bytes())?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    Ok(acceptor)
}

/// Serves `api` over TLS on `listener`, asking for (not requiring) client certificates.
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: Arc<Api>,
    pki: &pki::Pki,
) -> anyhow::Result<()> {
    let acceptor = tls_acceptor(pki)?;
    let app = router(api);
    // After a failed accept (out of descriptors, say) wait before the next, doubling
    // from 5 ms to 1 s as Go's http.Server does, rather than spin.
    let mut backoff = Duration::ZERO;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => {
                backoff = Duration::ZERO;
                conn
            }
            Err(err) => {
                backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                tracing::warn!(%err, ?backoff, "accept failed");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            // A client that does not finish its handshake in time is dropped
            // (kube-apiserver's TLS handshake timeout is 10 s).
            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    tracing::debug!(%err, %peer, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
            let identity = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|cert| auth::from_certificate(cert));
            let app = app
                .layer(axum::Extension(PeerIdentity(identity)))
                .layer(axum::Extension(audit::RemoteAddr(peer)));
            let service = hyper_util::service::TowerToHyperService::new(app);
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            // A request head must arrive within the header timeout (kube-apiserver's
            // ReadHeaderTimeout); HTTP/2 connections are pinged and dropped when silent.
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            builder
                .http2()
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(Some(Duration::from_secs(30)))
                .keep_alive_timeout(Duration::from_secs(20));
            // HTTP/2 (ALPN): writes coalesced per turn of the connection's task.
            let served = if h2 {
                // HTTP/2 whatever the first bytes look like, as ALPN agreed (the
                // coalescing would stall an HTTP/1.1 response stream).
                let io = hyper_util::rt::TokioIo::new(coalesce::Coalesce::new(tls));
                let builder = builder.http2_only();
                builder.serve_connection_with_upgrades(io, service).await
            } else {
                let io = hyper_util::rt::TokioIo::new(tls);
                builder.serve_connection_with_upgrades(io, service).await
            };
            if let Err(err) = served {
                tracing::debug!(%err, %peer, "connection ended");
            }
        });
    }
}

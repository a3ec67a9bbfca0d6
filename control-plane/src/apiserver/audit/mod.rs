//! The audit log, as kube-apiserver's: with `--audit-policy-file` and
//! `--audit-log-path`, every request the policy selects is recorded as `audit.k8s.io/v1`
//! events — `RequestReceived` when it arrives, `ResponseStarted` when a long-running
//! request (watch, exec, logs, proxy) starts its response, `ResponseComplete` when the
//! response body has been sent (or the client went away), `Panic` if serving it
//! panicked — minus the stages the matching rule omits. Requests that fail
//! authentication are recorded too (one `ResponseStarted` event with an empty user,
//! as upstream's failed-authentication filter does). Every response carries the
//! request's `Audit-Id` (the client's own `Audit-ID` header when it sent one).
//!
//! What goes into an event is decided by the level: metadata (user, verb, objectRef,
//! status, annotations such as the authorizer's decision) from `Metadata`, the request
//! body as decoded from `Request`, the response body from `RequestResponse`. Code deep
//! in the request path adds annotations with [`annotate`] (a no-op when the request is
//! not audited).
//!
//! Entry points: [`Auditor::start`] at server start; per request
//! [`Auditor::begin`] → [`Record::capture_request`] → [`Record::serve`] →
//! [`Record::respond`], or [`Auditor::failed_authentication`].

pub mod event;
pub mod log;
pub mod policy;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request};
use axum::response::Response;
use futures_util::FutureExt;
use http_body_util::BodyExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::Value;

use self::event::{Event, MicroTime, RequestMeta, ResponseStatus, User};
use self::log::{Backend, LogOptions};
use self::policy::{Decision, Level, Policy, Stage};
use super::auth::UserInfo;
use super::authz::Attributes;
use super::request::{self, ResourcePath};
use super::status::{ApiError, ApiResult};

/// The response header with the request's audit ID.
pub const AUDIT_ID_HEADER: &str = "audit-id";
/// Largest response body kept for `responseObject` (bigger ones are left out).
const MAX_RESPONSE_OBJECT: usize = 16 * 1024 * 1024;

/// The `--audit-*` flags.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--audit-policy-file`: without it nothing is audited.
    pub policy_file: Option<PathBuf>,
    /// `--audit-log-path` (`-`: stdout): without it nothing is written.
    pub log_path: Option<PathBuf>,
    /// `--audit-log-maxsize` (MB), `--audit-log-maxbackup`, `--audit-log-maxage` (days).
    pub max_size_mb: u64,
    pub max_backups: usize,
    pub max_age_days: u64,
    /// `--audit-log-format`: only `json`.
    pub format: String,
}

/// Why auditing could not start.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    #[error("--audit-log-format={0}: only \"json\" is supported")]
    Format(String),
    #[error("opening the audit log {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The connection's peer, for `sourceIPs` (set on each request by `serve`).
#[derive(Debug, Clone, Copy)]
pub struct RemoteAddr(pub SocketAddr);

/// The server's auditing: the policy and the backend.
#[derive(Debug)]
pub struct Auditor {
    policy: Policy,
    backend: Backend,
    /// `apiserver_audit_event_total`, `apiserver_audit_error_total{plugin}`.
    pub events: Counter,
    pub errors: Family<Vec<(String, String)>, Counter>,
}

impl Auditor {
    /// Loads the policy (a bad one is an error naming what is wrong) and opens the
    /// log; `None` when either flag is missing, as kube-apiserver then audits nothing.
    pub fn start(options: &Options) -> Result<Option<Self>, AuditError> {
        if options.format != "json" {
            return Err(AuditError::Format(options.format.clone()));
        }
        let policy = options
            .policy_file
            .as_deref()
            .map(Policy::load)
            .transpose()?;
        let (policy, path) = match (policy, &options.log_path) {
            (Some(policy), Some(path)) => (policy, path),
            (Some(_), None) => {
                tracing::info!("an audit policy but no --audit-log-path: nothing is audited");
                return Ok(None);
            }
            (None, Some(_)) => {
                tracing::info!("no --audit-policy-file: no events are written to the audit log");
                return Ok(None);
            }
            (None, None) => return Ok(None),
        };
        let errors = Family::<Vec<(String, String)>, Counter>::default();
        let log_errors = errors
            .get_or_create(&vec![("plugin".to_owned(), "log".to_owned())])
            .clone();
        let backend = Backend::start(
            &LogOptions {
                path: path.clone(),
                max_size_mb: options.max_size_mb,
                max_backups: options.max_backups,
                max_age_days: options.max_age_days,
            },
            log_errors,
        )
        .map_err(|source| AuditError::Open {
            path: path.clone(),
            source,
        })?;
        Ok(Some(Self {
            policy,
            backend,
            events: Counter::default(),
            errors,
        }))
    }

    /// Starts the record of an authenticated request (`user` is `None` only for the
    /// public paths anonymous clients may read): `None` when the policy says `None`.
    /// Sends `RequestReceived`.
    pub fn begin(
        &self,
        req: &Request<Body>,
        audit_id: &str,
        received: MicroTime,
        user: Option<&UserInfo>,
        parsed: Option<&ResourcePath>,
        long_running: bool,
    ) -> Option<Record> {
        let attrs = attributes(req, user, parsed);
        let decision = self.policy.evaluate(user, &attrs);
        if decision.level == Level::None {
            return None;
        }
        let event = Event::new(
            decision.level,
            request_meta(req, audit_id, received),
            user,
            &attrs,
        );
        let shared = Arc::new(Shared {
            event: Mutex::new(event),
            decision,
            backend: self.backend.clone(),
            events: self.events.clone(),
            long_running,
            request_body: Mutex::new(None),
            finished: AtomicBool::new(false),
        });
        shared.emit(&mut shared.lock(), Stage::RequestReceived);
        Some(Record(shared))
    }

    /// Records a request refused with 401: one `ResponseStarted` event, no user.
    pub fn failed_authentication(
        &self,
        req: &Request<Body>,
        audit_id: &str,
        received: MicroTime,
        parsed: Option<&ResourcePath>,
    ) {
        let attrs = attributes(req, None, parsed);
        let decision = self.policy.evaluate(None, &attrs);
        if decision.level == Level::None {
            return;
        }
        let mut event = Event::new(
            decision.level,
            request_meta(req, audit_id, received),
            None,
            &attrs,
        );
        event.response_status = Some(ResponseStatus {
            message: authentication_methods(req),
            ..ResponseStatus::code(401)
        });
        let shared = Shared {
            event: Mutex::new(event),
            decision,
            backend: self.backend.clone(),
            events: self.events.clone(),
            long_running: false,
            request_body: Mutex::new(None),
            finished: AtomicBool::new(true),
        };
        shared.emit(&mut shared.lock(), Stage::ResponseStarted);
    }
}

/// The audit ID of a request: the client's `Audit-ID` header, or a new UUID.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(AUDIT_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(super::object::new_uid, str::to_owned)
}

/// Sets the `Audit-Id` response header.
pub fn set_header(response: &mut Response, audit_id: &str) {
    if let Ok(value) = HeaderValue::from_str(audit_id) {
        response.headers_mut().insert(AUDIT_ID_HEADER, value);
    }
}

fn attributes(
    req: &Request<Body>,
    user: Option<&UserInfo>,
    parsed: Option<&ResourcePath>,
) -> Attributes {
    Attributes::from_request(
        user.cloned().unwrap_or_default(),
        req.method(),
        req.uri().path(),
        parsed,
        req.uri().query(),
    )
}

fn request_meta(req: &Request<Body>, audit_id: &str, received: MicroTime) -> RequestMeta {
    RequestMeta {
        audit_id: audit_id.to_owned(),
        request_uri: req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned()),
        source_ips: source_ips(
            req.headers(),
            req.extensions().get::<RemoteAddr>().map(|a| a.0.ip()),
        ),
        user_agent: RequestMeta::user_agent(
            req.headers()
                .get("user-agent")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default(),
        ),
        received,
    }
}

/// `utilnet.SourceIPs`: the `X-Forwarded-For` addresses, `X-Real-Ip` unless already
/// there, then the peer unless it is the last one listed.
fn source_ips(headers: &HeaderMap, peer: Option<IpAddr>) -> Vec<String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let mut ips: Vec<IpAddr> = header("x-forwarded-for")
        .into_iter()
        .flat_map(|v| v.split(','))
        .filter_map(|ip| ip.trim().parse().ok())
        .collect();
    if let Some(real) = header("x-real-ip").and_then(|v| v.trim().parse().ok())
        && !ips.contains(&real)
    {
        ips.push(real);
    }
    if let Some(peer) = peer
        && ips.last() != Some(&peer)
    {
        ips.push(peer);
    }
    ips.iter().map(IpAddr::to_string).collect()
}

/// `Authentication failed, attempted: bearer` (upstream's `getAuthMethods`).
fn authentication_methods(req: &Request<Body>) -> String {
    let mut methods = Vec::new();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .trim();
    if auth
        .split_once(' ')
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
    {
        methods.push("basic");
    }
    if auth
        .split_once(' ')
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
    {
        methods.push("bearer");
    }
    if request::Query::parse(req.uri().query())
        .get("access_token")
        .is_some()
    {
        methods.push("access_token");
    }
    if methods.is_empty() {
        "Authentication failed, no credentials provided".into()
    } else {
        format!("Authentication failed, attempted: {}", methods.join(", "))
    }
}

/// One audited request, shared by the request path, its body wrappers and the
/// task-local [`annotate`].
#[derive(Debug)]
struct Shared {
    event: Mutex<Event>,
    decision: Decision,
    backend: Backend,
    events: Counter,
    long_running: bool,
    /// The request body as read by the handler, and its media type.
    request_body: Mutex<Option<(Vec<u8>, String)>>,
    finished: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Event> {
        self.event.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends the event at `stage`, unless the policy omits that stage.
    fn emit(&self, event: &mut Event, stage: Stage) {
        if self.decision.omit_stages.contains(stage) {
            return;
        }
        event.stage = stage;
        event.stage_timestamp = if stage == Stage::RequestReceived {
            event.request_received_timestamp
        } else {
            MicroTime::now()
        };
        let mut line = match serde_json::to_vec(&*event) {
            Ok(line) => line,
            Err(err) => {
                tracing::error!(%err, "encoding an audit event");
                return;
            }
        };
        line.push(b'\n');
        self.events.inc();
        self.backend.send(line);
    }

    /// Puts the request body into the event (`LogRequestObject`): its metadata fills
    /// the objectRef's gaps (a create's name), and from `Request` it is the
    /// `requestObject`.
    fn log_request_object(&self, event: &mut Event) {
        let taken = self
            .request_body
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some((bytes, media)) = taken else {
            return;
        };
        let Ok(mut obj) = request::decode(&bytes, &media) else {
            return;
        };
        if event.verb != "patch"
            && let (Some(r), Some(meta)) = (event.object_ref.as_mut(), obj.get("metadata"))
        {
            let text = |k: &str| meta.get(k).and_then(Value::as_str).unwrap_or_default();
            for (field, key) in [
                (&mut r.namespace, "namespace"),
                (&mut r.name, "name"),
                (&mut r.uid, "uid"),
                (&mut r.resource_version, "resourceVersion"),
            ] {
                if field.is_empty() {
                    text(key).clone_into(field);
                }
            }
        }
        if self.decision.level >= Level::Request {
            if self.decision.omit_managed_fields {
                event::drop_managed_fields(&mut obj);
            }
            event.request_object = Some(obj);
        }
    }

    /// `ResponseComplete`, once.
    fn complete(&self, response: Option<(Vec<u8>, String)>) {
        if self.finished.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut event = self.lock();
        self.log_request_object(&mut event);
        if let Some((bytes, media)) = response
            && matches!(
                media.as_str(),
                "application/json" | "application/vnd.kubernetes.protobuf"
            )
            && let Ok(mut obj) = request::decode(&bytes, &media)
        {
            // A Status answer's fields, as upstream's `LogResponseObject` copies them
            // (a failure's are there already, from the error).
            if obj.get("kind").and_then(Value::as_str) == Some("Status")
                && event
                    .response_status
                    .as_ref()
                    .is_none_or(|s| s.message.is_empty() && s.status.is_empty())
            {
                let code = event.response_status.as_ref().map(|s| s.code);
                let mut status = ResponseStatus::from_status(&obj);
                if let Some(code) = code.filter(|c| *c != 0) {
                    status.code = code;
                }
                event.response_status = Some(status);
            }
            if self.decision.level == Level::RequestResponse {
                if self.decision.omit_managed_fields {
                    event::drop_managed_fields(&mut obj);
                }
                event.response_object = Some(obj);
            }
        }
        self.emit(&mut event, Stage::ResponseComplete);
    }
}

tokio::task_local! {
    static CURRENT: Arc<Shared>;
}

/// Adds an annotation to the audit event of the request being served (a no-op when
/// it is not audited), as upstream's `audit.AddAuditAnnotation`.
pub fn annotate(key: &str, value: impl Into<String>) {
    let _ = CURRENT.try_with(|shared| {
        shared
            .lock()
            .annotations
            .insert(key.to_owned(), value.into());
    });
}

/// Whether the request being served is audited.
pub fn active() -> bool {
    CURRENT.try_with(|_| ()).is_ok()
}

/// The authorizer's decision (`authorization.k8s.io/decision` and `/reason`).
pub fn authorization(allowed: bool, reason: &str) {
    annotate(
        "authorization.k8s.io/decision",
        if allowed { "allow" } else { "forbid" },
    );
    annotate("authorization.k8s.io/reason", reason);
}

/// The user the request acts as after impersonation.
pub fn impersonated(user: &UserInfo) {
    let _ = CURRENT.try_with(|shared| shared.lock().impersonated_user = Some(User::from(user)));
}

/// The record of one audited request.
#[derive(Debug)]
pub struct Record(Arc<Shared>);

impl Record {
    /// Keeps a copy of the body the handler reads when the event wants it: a create's
    /// or update's (its metadata names the object) and, from `Request`, every write's.
    pub fn capture_request(&self, req: Request<Body>, limit: usize) -> Request<Body> {
        let verb = self.0.lock().verb.clone();
        let wanted = match verb.as_str() {
            "create" | "update" | "patch" => true,
            "delete" | "deletecollection" => self.0.decision.level >= Level::Request,
            _ => false,
        };
        if !wanted || self.0.lock().object_ref.is_none() {
            return req;
        }
        let media = request::content_type(req.headers());
        let shared = self.0.clone();
        let mut overflow = false;
        req.map(|body| {
            Body::new(body.map_frame(move |frame| {
                if let Some(data) = frame.data_ref()
                    && !overflow
                {
                    let mut slot = shared
                        .request_body
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    let (buf, _) = slot.get_or_insert_with(|| (Vec::new(), media.clone()));
                    if buf.len() + data.len() > limit {
                        overflow = true;
                        *slot = None;
                    } else {
                        buf.extend_from_slice(data);
                    }
                }
                frame
            }))
        })
    }

    /// Serves the request with this record as the task's current one (for
    /// [`annotate`]); a panic is recorded (`Panic` stage) and carried on.
    pub async fn serve(
        &self,
        serve: impl Future<Output = ApiResult<Response>>,
    ) -> ApiResult<Response> {
        let result = CURRENT
            .scope(
                self.0.clone(),
                std::panic::AssertUnwindSafe(serve).catch_unwind(),
            )
            .await;
        match result {
            Ok(result) => {
                if let Err(err) = &result {
                    self.0.lock().response_status =
                        Some(ResponseStatus::from_status(&err.to_status()));
                }
                result
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                self.0.finished.store(true, Ordering::Release);
                let mut event = self.0.lock();
                self.0.log_request_object(&mut event);
                event.response_status = Some(ResponseStatus::from_status(
                    &ApiError::internal(format!("APIServer panic'd: {what}")).to_status(),
                ));
                self.0.emit(&mut event, Stage::Panic);
                drop(event);
                std::panic::resume_unwind(panic)
            }
        }
    }

    /// Records the response's code (`ResponseStarted` now for a long-running request)
    /// and sends `ResponseComplete` once its body is sent or dropped.
    pub fn respond(self, response: Response) -> Response {
        let code = response.status().as_u16();
        {
            let mut event = self.0.lock();
            match &mut event.response_status {
                Some(status) => status.code = code,
                None => event.response_status = Some(ResponseStatus::code(code)),
            }
            if self.0.long_running {
                self.0.emit(&mut event, Stage::ResponseStarted);
            }
        }
        // A delete answers with a Status, whose fields upstream copies into the
        // event's responseStatus from Metadata on (`LogResponseObject`).
        let status_answer = self.0.decision.level >= Level::Metadata
            && self.0.lock().verb == "delete"
            && response.status().is_success();
        let capture = ((self.0.decision.level == Level::RequestResponse || status_answer)
            && !self.0.long_running)
            .then(|| (Vec::new(), request::content_type(response.headers())));
        let mut completion = Completion {
            shared: self.0,
            captured: capture,
        };
        response.map(|body| {
            Body::new(body.map_frame(move |frame| {
                if let Some(data) = frame.data_ref() {
                    completion.keep(data);
                }
                frame
            }))
        })
    }
}

/// Sends `ResponseComplete` when the response body is dropped: sent to the end, or
/// abandoned by the client.
struct Completion {
    shared: Arc<Shared>,
    captured: Option<(Vec<u8>, String)>,
}

impl Completion {
    fn keep(&mut self, data: &[u8]) {
        if let Some((buf, _)) = &mut self.captured {
            if buf.len() + data.len() > MAX_RESPONSE_OBJECT {
                self.captured = None;
            } else {
                buf.extend_from_slice(data);
            }
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.shared.complete(self.captured.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ips_list_forwarded_then_real_then_peer() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 2.2.2.2"),
        );
        headers.insert("x-real-ip", HeaderValue::from_static("3.3.3.3"));
        let ips = source_ips(&headers, Some("10.0.0.1".parse().expect("ip")));
        assert_eq!(ips, vec!["1.1.1.1", "2.2.2.2", "3.3.3.3", "10.0.0.1"]);
        let ips = source_ips(&HeaderMap::new(), Some("127.0.0.1".parse().expect("ip")));
        assert_eq!(ips, vec!["127.0.0.1"]);
    }

    #[test]
    fn a_client_audit_id_is_kept_and_a_missing_one_made() {
        let mut headers = HeaderMap::new();
        headers.insert("audit-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        let made = request_id(&HeaderMap::new());
        assert_eq!(made.len(), 36, "a UUID: {made}");
    }

    #[test]
    fn failed_authentication_names_the_methods_tried() {
        let req = Request::builder()
            .uri("/api/v1/pods")
            .header("authorization", "Bearer nope")
            .body(Body::empty())
            .expect("request");
        assert_eq!(
            authentication_methods(&req),
            "Authentication failed, attempted: bearer"
        );
        let req = Request::builder()
            .uri("/api")
            .body(Body::empty())
            .expect("request");
        assert_eq!(
            authentication_methods(&req),
            "Authentication failed, no credentials provided"
        );
    }
}

//! Kubernetes' CEL authorizer library (`k8s.io/apiserver/pkg/cel/library/authz.go`):
//! `authorizer.group('apps').resource('deployments').namespace('ns').name('x')
//! .check('create').allowed()`, `authorizer.path('/healthz').check('get')`,
//! `authorizer.serviceAccount(ns, name)` to ask for another user, and a decision's
//! `allowed()`, `reason()`, `errored()`, `error()`. Checks go to the apiserver's own
//! authorizer (RBAC, or AlwaysAllow), as the request's user. Not here: the
//! `authorizer.requestResource` field (CEL field selection on these values is not
//! available through the `cel` crate).

use std::sync::Arc;

use cel::common::types::{STRING_TYPE, Type};
use cel::common::value::CowVal;
use cel::objects::Opaque;
use cel::{DeclarationError, Env, ExecutionError, Value};

use super::library::{out, overload, values};
use crate::apiserver::Api;
use crate::apiserver::auth::UserInfo;
use crate::apiserver::authz::Attributes;

/// The kinds of value the library deals in, by their upstream type names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Authorizer,
    PathCheck,
    GroupCheck,
    ResourceCheck,
}

impl Stage {
    const fn type_name(self) -> &'static str {
        match self {
            Stage::Authorizer => "kubernetes.authorization.Authorizer",
            Stage::PathCheck => "kubernetes.authorization.PathCheck",
            Stage::GroupCheck => "kubernetes.authorization.GroupCheck",
            Stage::ResourceCheck => "kubernetes.authorization.ResourceCheck",
        }
    }
}

/// An authorizer, or a check being built on it.
#[derive(Clone)]
pub struct Authz {
    api: Arc<Api>,
    stage: Stage,
    user: UserInfo,
    path: String,
    group: String,
    resource: String,
    subresource: String,
    namespace: String,
    name: String,
}

impl std::fmt::Debug for Authz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authz")
            .field("stage", &self.stage)
            .field("user", &self.user.name)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Authz {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.api, &other.api)
            && self.stage == other.stage
            && self.user == other.user
            && (&self.path, &self.group, &self.resource, &self.subresource)
                == (
                    &other.path,
                    &other.group,
                    &other.resource,
                    &other.subresource,
                )
            && (&self.namespace, &self.name) == (&other.namespace, &other.name)
    }
}

impl Eq for Authz {}

impl Opaque for Authz {
    fn runtime_type_name(&self) -> &str {
        self.stage.type_name()
    }
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    allowed: bool,
    reason: String,
}

const DECISION: &str = "kubernetes.authorization.Decision";

impl Opaque for Decision {
    fn runtime_type_name(&self) -> &str {
        DECISION
    }
}

/// The `authorizer` variable of a request made by `user` (`None`: the server itself,
/// which may do anything).
pub fn authorizer(api: Arc<Api>, user: Option<&UserInfo>) -> Value {
    let user = user.cloned().unwrap_or_else(|| UserInfo {
        name: "system:apiserver".into(),
        groups: vec![crate::apiserver::authz::MASTERS.into()],
        ..UserInfo::default()
    });
    Value::Opaque(Arc::new(Authz {
        api,
        stage: Stage::Authorizer,
        user,
        path: String::new(),
        group: String::new(),
        resource: String::new(),
        subresource: String::new(),
        namespace: String::new(),
        name: String::new(),
    }))
}

fn err(function: &str, message: &str) -> ExecutionError {
    ExecutionError::function_error(function, message)
}

fn authz<'a>(v: Option<&'a Value>, function: &str) -> Result<&'a Authz, ExecutionError> {
    match v {
        Some(Value::Opaque(o)) => o
            .downcast_ref::<Authz>()
            .ok_or_else(|| err(function, "expected an authorizer")),
        _ => Err(err(function, "expected an authorizer")),
    }
}

fn text(v: Option<&Value>, function: &str) -> Result<String, ExecutionError> {
    match v {
        Some(Value::String(s)) => Ok(s.as_str().to_owned()),
        _ => Err(err(function, "expected a string")),
    }
}

fn step(
    a: &[Value],
    function: &str,
    edit: impl FnOnce(&mut Authz, String),
) -> Result<Value, ExecutionError> {
    let mut next = authz(a.first(), function)?.clone();
    edit(&mut next, text(a.get(1), function)?);
    Ok(Value::Opaque(Arc::new(next)))
}

fn path(a: &[Value]) -> Result<Value, ExecutionError> {
    step(a, "path", |n, v| {
        n.stage = Stage::PathCheck;
        n.path = v;
    })
}

fn group(a: &[Value]) -> Result<Value, ExecutionError> {
    step(a, "group", |n, v| {
        n.stage = Stage::GroupCheck;
        n.group = v;
    })
}

fn resource(a: &[Value]) -> Result<Value, ExecutionError> {
    step(a, "resource", |n, v| {
        n.stage = Stage::ResourceCheck;
        n.resource = v;
    })
}

fn subresource(a: &[Value]) -> Result<Value, ExecutionError> {
    step(a, "subresource", |n, v| n.subresource = v)
}

fn namespace(a: &[Value]) -> Result<Value, ExecutionError> {
    step(a, "namespace", |n, v| n.namespace = v)
}

fn name(a: &[Value]) -> Result<Value, ExecutionError> {
    step(a, "name", |n, v| n.name = v)
}

fn service_account(a: &[Value]) -> Result<Value, ExecutionError> {
    let mut next = authz(a.first(), "serviceAccount")?.clone();
    let ns = text(a.get(1), "serviceAccount")?;
    let sa = text(a.get(2), "serviceAccount")?;
    next.user = UserInfo {
        name: format!("system:serviceaccount:{ns}:{sa}"),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
        ],
        ..UserInfo::default()
    };
    Ok(Value::Opaque(Arc::new(next)))
}

fn check(a: &[Value]) -> Result<Value, ExecutionError> {
    let this = authz(a.first(), "check")?;
    let verb = text(a.get(1), "check")?;
    let resource_request = this.stage == Stage::ResourceCheck;
    let attrs = Attributes {
        user: this.user.clone(),
        verb,
        resource_request,
        path: this.path.clone(),
        api_group: this.group.clone(),
        api_version: if resource_request {
            "*".into()
        } else {
            String::new()
        },
        namespace: this.namespace.clone(),
        resource: this.resource.clone(),
        subresource: this.subresource.clone(),
        name: this.name.clone(),
        field_selector: String::new(),
    };
    let d = this.api.authorizer.authorize(&attrs);
    Ok(Value::Opaque(Arc::new(Decision {
        allowed: d.allowed,
        reason: d.reason,
    })))
}

fn decision<'a>(a: &'a [Value], function: &str) -> Result<&'a Decision, ExecutionError> {
    match a.first() {
        Some(Value::Opaque(o)) => o
            .downcast_ref::<Decision>()
            .ok_or_else(|| err(function, "expected a decision")),
        _ => Err(err(function, "expected a decision")),
    }
}

fn allowed(a: &[Value]) -> Result<Value, ExecutionError> {
    Ok(Value::Bool(decision(a, "allowed")?.allowed))
}

fn reason(a: &[Value]) -> Result<Value, ExecutionError> {
    Ok(Value::String(Arc::new(
        decision(a, "reason")?.reason.clone(),
    )))
}

/// berth's authorizers decide without failing.
fn errored(a: &[Value]) -> Result<Value, ExecutionError> {
    decision(a, "errored")?;
    Ok(Value::Bool(false))
}

fn error(a: &[Value]) -> Result<Value, ExecutionError> {
    decision(a, "error")?;
    Ok(Value::String(Arc::new(String::new())))
}

overload!(path_fn => path);
overload!(group_fn => group);
overload!(resource_fn => resource);
overload!(subresource_fn => subresource);
overload!(namespace_fn => namespace);
overload!(name_fn => name);
overload!(service_account_fn => service_account);
overload!(check_fn => check);
overload!(allowed_fn => allowed);
overload!(reason_fn => reason);
overload!(errored_fn => errored);
overload!(error_fn => error);

fn of(stage: Stage) -> Type {
    Type::new_opaque_type(stage.type_name())
}

/// Registers the library on `env`.
pub fn register(env: &mut Env) -> Result<(), DeclarationError> {
    use Stage::*;
    let s = || STRING_TYPE;
    env.add_member_overload(
        "path",
        "authorizer_path",
        of(Authorizer),
        vec![s()],
        path_fn,
    )?;
    env.add_member_overload(
        "group",
        "authorizer_group",
        of(Authorizer),
        vec![s()],
        group_fn,
    )?;
    env.add_member_overload(
        "serviceAccount",
        "authorizer_serviceaccount",
        of(Authorizer),
        vec![s(), s()],
        service_account_fn,
    )?;
    env.add_member_overload(
        "resource",
        "groupcheck_resource",
        of(GroupCheck),
        vec![s()],
        resource_fn,
    )?;
    let refine: [(&str, cel::common::functions::Function); 3] = [
        ("subresource", subresource_fn),
        ("namespace", namespace_fn),
        ("name", name_fn),
    ];
    for (n, f) in refine {
        env.add_member_overload(
            n,
            &format!("resourcecheck_{n}"),
            of(ResourceCheck),
            vec![s()],
            f,
        )?;
    }
    env.add_member_overload(
        "check",
        "resourcecheck_check",
        of(ResourceCheck),
        vec![s()],
        check_fn,
    )?;
    env.add_member_overload(
        "check",
        "pathcheck_check",
        of(PathCheck),
        vec![s()],
        check_fn,
    )?;
    let d = || Type::new_opaque_type(DECISION);
    let reads: [(&str, cel::common::functions::Function); 4] = [
        ("allowed", allowed_fn),
        ("reason", reason_fn),
        ("errored", errored_fn),
        ("error", error_fn),
    ];
    for (n, f) in reads {
        env.add_member_overload(n, &format!("decision_{n}"), d(), vec![], f)?;
    }
    Ok(())
}

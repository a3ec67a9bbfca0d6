//! The policies and bindings in force, compiled: read from the apiserver's watch
//! cache and compiled once per stored revision. A request only lists the two
//! prefixes (no parsing) and reuses the last set when no revision changed; a changed
//! policy is compiled again, the others are kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::admissionregistration::v1::{
    ParamRef, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};

use super::cel::{Compiled, Decls, Returns, compile};
use super::matching::Constraints;
use crate::apiserver::watch_cache::WatchCache;
use crate::store::Revision;

const POLICIES: &str = "/registry/admissionregistration.k8s.io/validatingadmissionpolicies/";
const BINDINGS: &str = "/registry/admissionregistration.k8s.io/validatingadmissionpolicybindings/";

/// An expression of a stored policy, compiled — or why it does not compile. A stored
/// expression can stop compiling (an upgrade that changes the CEL environment); as
/// kube-apiserver, that fails only the expression, at evaluation ("compilation error:
/// …", under the policy's `failurePolicy`), not the whole policy.
pub type Expression = Result<Compiled, String>;

/// One validation of a policy.
#[derive(Debug)]
pub struct Validation {
    pub expression: Expression,
    /// The expression's text (for "failed expression: …").
    pub source: String,
    pub message: Option<String>,
    pub message_expression: Option<Expression>,
    pub reason: Option<String>,
}

/// A ValidatingAdmissionPolicy, compiled.
#[derive(Debug)]
pub struct Policy {
    pub name: String,
    /// `failurePolicy: Ignore`.
    pub ignore_failures: bool,
    /// `paramKind` as (apiVersion, kind).
    pub param_kind: Option<(String, String)>,
    pub constraints: Constraints,
    pub conditions: Vec<Expression>,
    pub variables: Vec<(String, Expression)>,
    pub validations: Vec<Validation>,
    /// `auditAnnotations` as (key, valueExpression).
    pub annotations: Vec<(String, Expression)>,
}

/// A ValidatingAdmissionPolicyBinding.
#[derive(Debug)]
pub struct Binding {
    pub name: String,
    /// `spec.policyName`.
    pub policy: String,
    pub param_ref: Option<ParamRef>,
    pub constraints: Option<Constraints>,
    pub actions: Vec<String>,
}

/// A policy and the bindings that name it.
#[derive(Debug)]
pub struct Hook {
    pub policy: Arc<Policy>,
    pub bindings: Vec<Arc<Binding>>,
}

/// The compiled set, kept on the apiserver.
#[derive(Debug, Default)]
pub struct Policies {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    seen: Vec<(String, Revision)>,
    policies: HashMap<String, (Revision, Arc<Policy>)>,
    bindings: HashMap<String, (Revision, Arc<Binding>)>,
    hooks: Arc<Vec<Hook>>,
}

impl Policies {
    /// The policies with at least one binding, in name order.
    pub fn hooks(&self, cache: &WatchCache) -> Arc<Vec<Hook>> {
        let (policies, _) = cache.list(POLICIES, |_| true);
        let (bindings, _) = cache.list(BINDINGS, |_| true);
        let seen: Vec<(String, Revision)> = policies
            .iter()
            .chain(&bindings)
            .map(|c| (c.key.clone(), c.revision))
            .collect();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.seen == seen {
            return state.hooks.clone();
        }
        let mut compiled = HashMap::new();
        for c in &policies {
            let reuse = state
                .policies
                .get(&c.key)
                .filter(|(rev, _)| *rev == c.revision)
                .map(|(_, p)| p.clone());
            let policy = match reuse {
                Some(p) => p,
                None => match serde_json::from_slice::<ValidatingAdmissionPolicy>(&c.raw) {
                    Ok(p) => Arc::new(compile_policy(&p)),
                    Err(e) => {
                        tracing::warn!(key = %c.key, error = %e, "undecodable ValidatingAdmissionPolicy");
                        continue;
                    }
                },
            };
            compiled.insert(c.key.clone(), (c.revision, policy));
        }
        let mut bound = HashMap::new();
        let mut by_policy: HashMap<String, Vec<Arc<Binding>>> = HashMap::new();
        for c in &bindings {
            let reuse = state
                .bindings
                .get(&c.key)
                .filter(|(rev, _)| *rev == c.revision)
                .map(|(_, b)| b.clone());
            let binding = match reuse {
                Some(b) => b,
                None => match serde_json::from_slice::<ValidatingAdmissionPolicyBinding>(&c.raw) {
                    Ok(b) => Arc::new(compile_binding(&b)),
                    Err(e) => {
                        tracing::warn!(key = %c.key, error = %e, "undecodable ValidatingAdmissionPolicyBinding");
                        continue;
                    }
                },
            };
            by_policy
                .entry(binding.policy.clone())
                .or_default()
                .push(binding.clone());
            bound.insert(c.key.clone(), (c.revision, binding));
        }
        let mut hooks: Vec<Hook> = compiled
            .values()
            .filter_map(|(_, p)| {
                let bindings = by_policy.remove(&p.name)?;
                Some(Hook {
                    policy: p.clone(),
                    bindings,
                })
            })
            .collect();
        hooks.sort_by(|a, b| a.policy.name.cmp(&b.policy.name));
        for h in &mut hooks {
            h.bindings.sort_by(|a, b| a.name.cmp(&b.name));
        }
        state.seen = seen;
        state.policies = compiled;
        state.bindings = bound;
        state.hooks = Arc::new(hooks);
        state.hooks.clone()
    }
}

fn compile_binding(b: &ValidatingAdmissionPolicyBinding) -> Binding {
    let spec = b.spec.clone();
    Binding {
        name: b.metadata.name.clone().unwrap_or_default(),
        policy: spec.policy_name,
        param_ref: spec.param_ref,
        constraints: spec.match_resources.as_ref().map(Constraints::from),
        actions: spec.validation_actions,
    }
}

/// Compiles every expression of a stored policy.
pub fn compile_policy(p: &ValidatingAdmissionPolicy) -> Policy {
    let spec = p.spec.clone().unwrap_or_default();
    let params = spec.param_kind.is_some();
    let names: Vec<String> = spec
        .variables
        .iter()
        .flatten()
        .map(|v| v.name.clone())
        .collect();
    let declared = (!names.is_empty()).then_some(names.as_slice());
    let build = |source: &str, decls: Decls, returns: Returns| compile(source, &decls, returns);
    let with = |variables, authorizer| Decls {
        params,
        authorizer,
        variables,
    };
    let conditions = spec
        .match_conditions
        .iter()
        .flatten()
        .map(|c| build(&c.expression, with(None, true), Returns::Bool))
        .collect();
    let variables = spec
        .variables
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, v)| {
            let earlier = &names[..i];
            (
                v.name.clone(),
                build(&v.expression, with(Some(earlier), true), Returns::Any),
            )
        })
        .collect();
    let validations = spec
        .validations
        .iter()
        .flatten()
        .map(|v| Validation {
            expression: build(&v.expression, with(declared, true), Returns::Bool),
            source: v.expression.clone(),
            message: v.message.clone(),
            message_expression: v
                .message_expression
                .as_deref()
                .map(str::trim)
                .filter(|me| !me.is_empty())
                .map(|me| build(me, with(declared, false), Returns::String)),
            reason: v.reason.clone(),
        })
        .collect();
    let annotations = spec
        .audit_annotations
        .iter()
        .flatten()
        .map(|a| {
            (
                a.key.clone(),
                build(&a.value_expression, with(declared, true), Returns::Any),
            )
        })
        .collect();
    let param_kind = spec.param_kind.map(|k| {
        (
            k.api_version.unwrap_or_default(),
            k.kind.unwrap_or_default(),
        )
    });
    Policy {
        name: p.metadata.name.clone().unwrap_or_default(),
        ignore_failures: spec.failure_policy.as_deref() == Some("Ignore"),
        param_kind,
        constraints: Constraints::from(&spec.match_constraints.unwrap_or_default()),
        conditions,
        variables,
        validations,
        annotations,
    }
}

//! `matchConditions`: CEL expressions over the request (`object`, `oldObject`,
//! `request`, `authorizer`) that must all hold for a webhook to be called
//! (`webhook/matchconditions/matcher.go`). Any false skips the webhook, whatever the
//! others gave; otherwise an evaluation error follows the failure policy (Fail refuses
//! the request, Ignore skips the webhook). Expressions are compiled once per stored
//! configuration and checked when a configuration is written, with the CEL
//! environment of the admission policies ([`policy::cel`](crate::apiserver::admission::policy::cel)).

use std::sync::Arc;

use k8s_openapi::api::admissionregistration::v1::MatchCondition;
use serde_json::Value;

use crate::apiserver::Api;
use crate::apiserver::admission::policy::{authz, cel};
use crate::apiserver::auth::UserInfo;

/// One compiled condition (or why it does not compile).
#[derive(Debug)]
pub struct Condition {
    pub name: String,
    pub compiled: Result<cel::Compiled, String>,
}

const DECLS: cel::Decls<'static> = cel::Decls {
    params: false,
    authorizer: true,
    variables: None,
};

/// Compiles a condition of a stored configuration.
pub fn compile(condition: &MatchCondition) -> Condition {
    Condition {
        name: condition.name.clone(),
        compiled: cel::compile(&condition.expression, &DECLS, cel::Returns::Bool),
    }
}

/// Why `expression` would not compile (for validation), if it would not.
pub fn check(expression: &str) -> Option<String> {
    cel::compile(expression, &DECLS, cel::Returns::Bool).err()
}

/// Whether every condition holds; `Err` (upstream's aggregate of the errors) when none
/// is false and some could not be evaluated.
pub fn evaluate(
    api: &Arc<Api>,
    user: Option<&UserInfo>,
    conditions: &[Condition],
    object: Option<&Value>,
    old: Option<&Value>,
    request: &Value,
) -> Result<bool, String> {
    if conditions.is_empty() {
        return Ok(true);
    }
    let null = Value::Null;
    let mut scope = ::cel::Context::with_env(cel::env());
    scope.add_variable_as_val("object", cel::json_to_val(object.unwrap_or(&null)));
    scope.add_variable_as_val("oldObject", cel::json_to_val(old.unwrap_or(&null)));
    scope.add_variable_as_val("request", cel::json_to_val(request));
    scope.add_variable_from_value("authorizer", authz::authorizer(api.clone(), user));
    let mut errors = Vec::new();
    for c in conditions {
        let compiled = match &c.compiled {
            Ok(c) => c,
            Err(e) => {
                errors.push(format!("matchConditions[\"{}\"]: {e}", c.name));
                continue;
            }
        };
        match compiled.program.execute(&scope) {
            Ok(::cel::Value::Bool(false)) => return Ok(false),
            Ok(::cel::Value::Bool(true)) => {}
            Ok(other) => errors.push(format!(
                "expression '{}' resulted in error: expected a bool, got {other:?}",
                compiled.source
            )),
            Err(e) => errors.push(format!(
                "expression '{}' resulted in error: {}",
                compiled.source,
                cel::error_text(&e)
            )),
        }
    }
    match errors.len() {
        0 => Ok(true),
        1 => Err(errors.remove(0)),
        _ => Err(format!("[{}]", errors.join(", "))),
    }
}

//! One policy evaluated for one binding and parameter, as upstream's `validator`:
//! `matchConditions` (any false: nothing to check; errors: the failure policy), the
//! variables (each error kept for the expressions that read it), the validations
//! (true admits; anything else denies with the evaluated `messageExpression`, the
//! `message`, or `failed expression: <expr>`; an error follows the failure policy),
//! and the audit annotations. An expression that does not compile fails at evaluation
//! ("compilation error: …"), like one that errs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cel::{Context, Value};

use super::cel::{Compiled, error_text, json_to_value};
use super::compiled::{Expression, Policy};

/// What one validation (or annotation) decided.
#[derive(Debug, Clone)]
pub struct Decision {
    pub deny: bool,
    /// The validation's index (for the audit annotation of a failure).
    pub index: usize,
    pub message: String,
    /// `Forbidden`, `Invalid`, …; `None` is `Invalid`.
    pub reason: Option<String>,
    /// How long the validation took (for the policy check metrics).
    pub elapsed: Duration,
}

/// The outcome for one binding and parameter.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Validations that denied or failed under `failurePolicy: Fail`; they go through
    /// the binding's `validationActions`.
    pub decisions: Vec<Decision>,
    /// Audit annotation values to publish (`key`, value).
    pub annotations: Vec<(String, String)>,
    /// Audit annotations that failed under `Fail`: the request is denied, whatever the
    /// binding's actions. With how long each took.
    pub annotation_errors: Vec<(String, Duration)>,
    /// Validations that failed and were let through under `failurePolicy: Ignore`:
    /// how long each took.
    pub ignored: Vec<Duration>,
}

/// Upstream's longest accepted `messageExpression` result.
const MAX_MESSAGE: usize = 5 * 1024;

fn eval_error(c: &Compiled, e: &str) -> String {
    format!("expression '{}' resulted in error: {e}", c.source)
}

fn run(c: &Expression, scope: &Context, failed: &HashMap<String, String>) -> Result<Value, String> {
    let c = c.as_ref().map_err(|e| format!("compilation error: {e}"))?;
    if let Some(e) = c.reads.iter().find_map(|v| failed.get(v)) {
        return Err(eval_error(c, e));
    }
    c.program
        .execute(scope)
        .map_err(|e| eval_error(c, &error_text(&e)))
}

fn variables_value(ok: &[(String, Value)]) -> Value {
    Value::Map(cel::objects::Map {
        map: Arc::new(
            ok.iter()
                .map(|(k, v)| (cel::objects::Key::from(k.as_str()), v.clone()))
                .collect(),
        ),
    })
}

/// Evaluates `policy` with `params` in a scope below `root` (which holds `object`,
/// `oldObject`, `request`, `namespaceObject` and `authorizer`).
pub fn evaluate(root: &Context, policy: &Policy, params: Option<&serde_json::Value>) -> Outcome {
    let mut out = Outcome::default();
    let fail = !policy.ignore_failures;
    let mut scope = root.new_inner_scope();
    scope.add_variable_from_value("params", params.map_or(Value::Null, json_to_value));
    let none = HashMap::new();

    // matchConditions: any false skips the policy; errors follow the failure policy.
    let started = Instant::now();
    let mut errors = Vec::new();
    for c in &policy.conditions {
        match run(c, &scope, &none) {
            Ok(Value::Bool(false)) => return out,
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        if fail {
            let message = if errors.len() == 1 {
                errors.remove(0)
            } else {
                format!("[{}]", errors.join(", "))
            };
            out.decisions.push(Decision {
                deny: true,
                index: 0,
                message,
                reason: None,
                elapsed: started.elapsed(),
            });
        } else {
            out.ignored.push(started.elapsed());
        }
        return out;
    }

    // Variables, in order; an error is kept for the expressions that read it.
    let mut ok: Vec<(String, Value)> = Vec::new();
    let mut failed: HashMap<String, String> = HashMap::new();
    for (name, c) in &policy.variables {
        scope.add_variable_from_value("variables", variables_value(&ok));
        match run(c, &scope, &failed) {
            Ok(v) => ok.push((name.clone(), v)),
            Err(e) => {
                // The error as the reading expression reports it: the variable's cause.
                let cause = e
                    .split_once("resulted in error: ")
                    .map_or(e.as_str(), |(_, c)| c)
                    .to_owned();
                failed.insert(name.clone(), cause);
            }
        }
    }
    if !policy.variables.is_empty() {
        scope.add_variable_from_value("variables", variables_value(&ok));
    }

    for (index, v) in policy.validations.iter().enumerate() {
        let started = Instant::now();
        match run(&v.expression, &scope, &failed) {
            Ok(Value::Bool(true)) => {}
            Ok(_) => {
                let evaluated = v
                    .message_expression
                    .as_ref()
                    .and_then(|me| match run(me, &scope, &failed) {
                        Ok(Value::String(s)) => Some(s.trim().to_owned()),
                        Ok(_) => None,
                        Err(e) => {
                            tracing::debug!(error = %e, "messageExpression failed");
                            None
                        }
                    })
                    .filter(|m| !m.is_empty() && m.len() <= MAX_MESSAGE && !m.contains('\n'));
                let message = evaluated
                    .or_else(|| {
                        v.message
                            .as_deref()
                            .map(str::trim)
                            .filter(|m| !m.is_empty())
                            .map(str::to_owned)
                    })
                    .unwrap_or_else(|| format!("failed expression: {}", v.source.trim()));
                out.decisions.push(Decision {
                    deny: true,
                    index,
                    message,
                    reason: Some(v.reason.clone().unwrap_or_else(|| "Invalid".into())),
                    elapsed: started.elapsed(),
                });
            }
            Err(e) if fail => out.decisions.push(Decision {
                deny: true,
                index,
                message: e,
                reason: None,
                elapsed: started.elapsed(),
            }),
            Err(_) => out.ignored.push(started.elapsed()),
        }
    }

    for (key, c) in &policy.annotations {
        let started = Instant::now();
        match run(c, &scope, &failed) {
            Ok(Value::String(s)) if !s.trim().is_empty() => {
                out.annotations.push((key.clone(), s.trim().to_owned()));
            }
            Ok(Value::String(_) | Value::Null) => {}
            Ok(other) if fail => out.annotation_errors.push((
                format!(
                    "valueExpression '{}' resulted in unsupported return type: {}. Return type must be either string or null.",
                    c.as_ref().map_or("", |c| c.source.as_str()),
                    other.type_of()
                ),
                started.elapsed(),
            )),
            Err(e) if fail => out.annotation_errors.push((e, started.elapsed())),
            _ => {}
        }
    }
    out
}

//! The mutating dispatcher (`webhook/mutating/dispatcher.go`): webhooks in order, each
//! given the object as the previous ones left it; a JSON patch in an answer is applied
//! in the version the webhook was called in and decoded again (unknown fields dropped,
//! as the typed decode upstream does). Reinvocation: when a webhook changes the
//! object, the `reinvocationPolicy: IfNeeded` webhooks called before it are called
//! once more, after the first round.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Value, json};

use super::config::Hook;
use super::{
    Attributes, Failure, Invocation, call, equivalents, info, observe, requested, review,
    should_call,
};
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::rest::Ctx;
use crate::apiserver::status::ApiResult;
use crate::apiserver::{audit, conversion};

/// A patched object, in `def`'s version, decoded (back in the storage version through
/// [`conversion::webhook::internal`]).
fn decode(def: &ResourceDef, mut obj: Value) -> Result<Value, String> {
    let api_version = def.api_version();
    if obj.get("apiVersion").and_then(Value::as_str) != Some(api_version.as_str())
        || obj.get("kind").and_then(Value::as_str) != Some(def.kind.as_str())
    {
        return Err(format!(
            "the patched object is not a {} of {api_version}",
            def.kind
        ));
    }
    if let Some(typed) = &def.typed {
        obj = typed.decode(obj)?;
        if obj.get("metadata").is_none() {
            obj["metadata"] = json!({});
        }
        return Ok(obj);
    }
    if let Some(schema) = &def.crd {
        schema.apply(&mut obj, false).map_err(|e| e.message)?;
    }
    Ok(obj)
}

/// Calls one webhook and applies its patch; whether the object changed.
async fn call_one(
    ctx: &Ctx,
    hook: &Hook,
    invocation: &Invocation,
    attrs: &mut Attributes,
) -> Result<bool, Failure> {
    let requested = requested(ctx, attrs);
    let info = info(ctx, attrs, &requested);
    let (resp, external) = call(ctx, hook, invocation, &info, attrs, true).await?;
    let Some(raw) = resp.patch else {
        return Ok(false);
    };
    let patch: json_patch::Patch = serde_json::from_slice(&raw).map_err(|e| {
        Failure::calling(
            format!("received undecodable patch in webhook response: {e}"),
            503,
        )
    })?;
    if patch.0.is_empty() {
        return Ok(false);
    }
    // No object (a delete), or one that is not the resource (a CONNECT's options) and
    // not a Scale either.
    let (Some(current), Some(mut doc)) = (attrs.object.as_mut(), external) else {
        return Err(unsupported(hook));
    };
    match attrs.kind {
        None => {}
        Some(kind) if kind == super::SCALE => {
            json_patch::patch(&mut doc, &patch)
                .map_err(|e| Failure::Other(review::internal(&e.to_string())))?;
            let changed = doc != *current;
            *current = doc;
            return Ok(changed);
        }
        Some(_) => return Err(unsupported(hook)),
    }
    json_patch::patch(&mut doc, &patch)
        .map_err(|e| Failure::Other(review::internal(&e.to_string())))?;
    let patched = decode(&invocation.def, doc).map_err(|e| Failure::Other(review::internal(&e)))?;
    let patched = conversion::webhook::internal(&ctx.api, &invocation.def, patched)
        .await
        .map_err(Failure::Other)?;
    let changed = patched != *current;
    *current = patched;
    Ok(changed)
}

fn unsupported(hook: &Hook) -> Failure {
    Failure::Other(review::internal(&format!(
        "admission webhook \"{}\" attempted to modify the object, which is not supported for this operation",
        hook.name
    )))
}

fn annotation(hook: &Hook, mutated: bool) -> String {
    json!({"configuration": hook.configuration, "webhook": hook.name, "mutated": mutated})
        .to_string()
}

/// Runs the mutating webhooks over `attrs.object`; whether any changed it.
pub(super) async fn run(ctx: &Ctx, hooks: &[Arc<Hook>], attrs: &mut Attributes) -> ApiResult<bool> {
    let equivalents = equivalents(ctx);
    let requested = requested(ctx, attrs);
    let mut changed_any = false;
    // Reinvocable webhooks called so far, and those a later change calls again.
    let mut invoked: Vec<&str> = Vec::new();
    let mut reinvoke: HashSet<&str> = HashSet::new();
    for round in 0..2 {
        if round == 1 && reinvoke.is_empty() {
            break;
        }
        for (index, hook) in hooks.iter().enumerate() {
            if round == 1 && !reinvoke.contains(hook.uid.as_str()) {
                continue;
            }
            let invocation = {
                let info = info(ctx, attrs, &requested);
                should_call(ctx, hook, attrs, &info, &equivalents).await?
            };
            let Some(invocation) = invocation else {
                continue;
            };
            let started = std::time::Instant::now();
            let result = call_one(ctx, hook, &invocation, attrs).await;
            observe(ctx, hook, attrs, "admit", started, &result);
            let key = format!("round_{round}_index_{index}");
            let changed = matches!(result, Ok(true));
            audit::annotate(
                &format!("mutation.webhook.admission.k8s.io/{key}"),
                annotation(hook, changed),
            );
            if round == 0 {
                if changed {
                    reinvoke.extend(invoked.drain(..));
                }
                if hook.reinvoke {
                    invoked.push(&hook.uid);
                }
            }
            changed_any |= changed;
            match result {
                Ok(_) => {}
                Err(Failure::Calling { why, .. }) if hook.fail_open => {
                    tracing::warn!(webhook = %hook.name, error = %why, "failed calling webhook, failing open");
                    audit::annotate(
                        &format!("failed-open.mutation.webhook.admission.k8s.io/{key}"),
                        annotation(hook, false),
                    );
                }
                Err(Failure::Calling { why, .. }) => {
                    tracing::warn!(webhook = %hook.name, error = %why, "failed calling webhook, failing closed");
                    return Err(review::calling_error(&hook.name, &why));
                }
                Err(Failure::Rejected(err) | Failure::Other(err)) => return Err(err),
            }
        }
    }
    Ok(changed_any)
}

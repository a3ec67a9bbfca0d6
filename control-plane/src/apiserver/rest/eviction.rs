//! `pods/{name}/eviction`: a delete that respects PodDisruptionBudgets, as
//! kube-apiserver's `EvictionREST` (pkg/registry/core/pod/storage/eviction.go). Pods
//! that are Pending, finished or already terminating go at once. Otherwise the one
//! budget selecting the pod (two or more: 500) must allow a disruption: the eviction
//! takes one (compare-and-swap on the budget's status: `disruptionsAllowed` - 1 and the
//! pod in `disruptedPods`) or answers 429. A pod that is not Ready goes without taking
//! one when the budget says AlwaysAllow, or (IfHealthyBudget) while the budget is
//! healthy. The pod gets the `DisruptionTarget` condition, then the Eviction's
//! `deleteOptions` delete it.

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};

use super::{Ctx, Part, update_loop, value_response};
use crate::apiserver::object;
use crate::apiserver::request::{Query, content_type, decode, read_body};
use crate::apiserver::status::{ApiError, ApiResult};
use crate::disruption_budget as budget;

const VIOLATION: &str = "Cannot evict pod as it would violate the pod's disruption budget.";
/// How often a conflicting write is retried before its error is returned (client-go's
/// `EvictionsRetry` has 20 steps).
const RETRIES: usize = 20;

/// The Eviction's `deleteOptions`, as far as the eviction itself reads them.
#[derive(Debug, Clone)]
struct Options {
    body: serde_json::Map<String, Value>,
    dry_run: bool,
}

impl Options {
    fn resource_version(&self) -> Option<&str> {
        self.body
            .get("preconditions")
            .and_then(|p| p.get("resourceVersion"))
            .and_then(Value::as_str)
    }

    fn uid(&self) -> Option<&str> {
        self.body
            .get("preconditions")
            .and_then(|p| p.get("uid"))
            .and_then(Value::as_str)
    }

    /// A copy with `preconditions.resourceVersion` set.
    fn with_resource_version(&self, rv: &str) -> Options {
        let mut out = self.clone();
        let pre = out.body.entry("preconditions").or_insert_with(|| json!({}));
        if !pre.is_object() {
            *pre = json!({});
        }
        pre["resourceVersion"] = json!(rv);
        out
    }
}

pub async fn evict(ctx: Ctx, name: &str, body: Body) -> ApiResult<Response> {
    let bytes = read_body(body, ctx.api.max_body).await?;
    let eviction = if bytes.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        decode(&bytes, &content_type(&ctx.headers))?
    };
    let named = object::name(&eviction);
    if !named.is_empty() && named != name {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    let opts = options(&ctx, &eviction)?;

    // Pods that can go without asking a budget; retried on conflicts unless the client
    // pinned a resourceVersion.
    let retry = opts.resource_version().is_none();
    let mut pod = Value::Null;
    for attempt in 0..RETRIES {
        let Some((current, revision)) = ctx.current(name).await? else {
            return Err(ctx.not_found(name));
        };
        pod = current;
        crate::apiserver::admission::node_restriction::admit_delete(
            ctx.user.as_ref(),
            &ctx.def,
            &pod,
            true,
        )?;
        if !can_ignore_budget(&pod) {
            break;
        }
        let mut del = opts.clone();
        if enforce_resource_version(&pod) && retry {
            del = opts.with_resource_version(&revision.to_string());
        }
        match condition_and_delete(&ctx, name, del).await {
            Ok(()) => return Ok(success()),
            Err(e) if e.code == 409 && retry && attempt + 1 < RETRIES => continue,
            Err(e) => return Err(e),
        }
    }

    let ns = ctx.namespace.clone().unwrap_or_default();
    let labels: std::collections::BTreeMap<String, String> = pod
        .pointer("/metadata/labels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default();
    let prefix = format!("/registry/policy/poddisruptionbudgets/{ns}/");
    let (cached, _) = ctx.api.cache.list(&prefix, |_| true);
    let budgets: Vec<PodDisruptionBudget> = cached
        .iter()
        .filter_map(|c| serde_json::from_value(c.value()).ok())
        .filter(|p| budget::selects(p, &ns, &labels))
        .collect();
    let mut skip_budget = false;
    let mut budget_name = String::new();
    match budgets.as_slice() {
        [] => {}
        [pdb] => {
            budget_name = pdb.metadata.name.clone().unwrap_or_default();
            let status = pdb.status.clone().unwrap_or_default();
            if !ready(&pod) {
                let always = pdb
                    .spec
                    .as_ref()
                    .and_then(|s| s.unhealthy_pod_eviction_policy.as_deref())
                    == Some("AlwaysAllow");
                // An unready pod does not count as healthy: taking it out disrupts
                // nothing the budget guards while the budget is met.
                let (current, desired) = (
                    status.current_healthy.unwrap_or(0),
                    status.desired_healthy.unwrap_or(0),
                );
                skip_budget = always || (current >= desired && desired > 0);
            }
            if !skip_budget {
                take_disruption(&ctx, &budget_name, name, opts.dry_run).await?;
            }
        }
        _ => {
            return Ok(value_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure", "code": 500,
                    "message": "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."}),
            ));
        }
    }

    // The pod must not have become Ready since it was judged unready.
    let mut del = opts.clone();
    if skip_budget && opts.resource_version().is_none() {
        let rv = object::meta_str(&pod, "resourceVersion").unwrap_or_default();
        del = opts.with_resource_version(rv);
    }
    match condition_and_delete(&ctx, name, del).await {
        Ok(()) => Ok(success()),
        Err(e) if e.code == 409 && skip_budget && opts.resource_version().is_none() => {
            Err(still_processing(&budget_name))
        }
        Err(e) => Err(e),
    }
}

/// The deleteOptions of the Eviction, with the request's `dryRun` folded in
/// (`propagateDryRun`).
fn options(ctx: &Ctx, eviction: &Value) -> ApiResult<Options> {
    let body = eviction
        .get("deleteOptions")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let listed = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let in_body = listed(body.get("dryRun"));
    let in_query: Vec<String> = ctx
        .query
        .get("dryRun")
        .map(str::to_owned)
        .into_iter()
        .collect();
    if !in_body.is_empty() && !in_query.is_empty() && in_body != in_query {
        return Err(ApiError::bad_request(format!(
            "Non-matching dry-run options in request and content: {in_query:?} and {in_body:?}"
        )));
    }
    let dry = if in_body.is_empty() {
        &in_query
    } else {
        &in_body
    };
    if let Some(other) = dry.iter().find(|d| d.as_str() != "All") {
        return Err(ApiError::bad_request(format!(
            "unsupported dryRun value {other:?}: only \"All\" is supported"
        )));
    }
    Ok(Options {
        body,
        dry_run: !dry.is_empty(),
    })
}

fn phase(pod: &Value) -> &str {
    pod.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("Pending")
}

fn terminating(pod: &Value) -> bool {
    object::meta(pod).is_some_and(|m| m.contains_key("deletionTimestamp"))
}

/// `canIgnorePDB`: the pod has disrupted nothing yet, or is already gone.
fn can_ignore_budget(pod: &Value) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed" | "Pending") || terminating(pod)
}

/// `shouldEnforceResourceVersion`: a Pending pod must not turn Ready under the delete.
fn enforce_resource_version(pod: &Value) -> bool {
    !matches!(phase(pod), "Succeeded" | "Failed") && !terminating(pod)
}

fn ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

fn success() -> Response {
    value_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    )
}

fn too_many(message: String, retry_after: Option<u64>) -> ApiError {
    let mut err = ApiError::new(429, "TooManyRequests", VIOLATION);
    err.details = Some(json!({"causes": [{"reason": "DisruptionBudget", "message": message}]}));
    err.retry_after = retry_after;
    err
}

fn still_processing(budget: &str) -> ApiError {
    too_many(
        format!("The disruption budget {budget} is still being processed by the server."),
        Some(10),
    )
}

/// `checkAndDecrement`, as a compare-and-swap on the budget's status retried against
/// the latest budget on conflicts; a dry run checks without writing.
async fn take_disruption(ctx: &Ctx, budget: &str, pod: &str, dry_run: bool) -> ApiResult<()> {
    let def = ctx
        .api
        .registry
        .get("policy", "v1", "poddisruptionbudgets")
        .ok_or_else(|| ApiError::internal("poddisruptionbudgets are not registered"))?;
    let pdb_ctx = Ctx {
        def,
        query: Query::default(),
        ..ctx.clone()
    };
    let change = |old: &Value| -> ApiResult<Value> {
        let mut pdb: PodDisruptionBudget = serde_json::from_value(old.clone())
            .map_err(|e| ApiError::internal(format!("stored PodDisruptionBudget: {e}")))?;
        let status = pdb.status.get_or_insert_with(Default::default);
        let generation = pdb.metadata.generation.unwrap_or(0);
        if status.observed_generation.unwrap_or(0) < generation {
            return Err(still_processing(budget));
        }
        let allowed = status.disruptions_allowed.unwrap_or(0);
        if allowed < 0 {
            return Err(ApiError::forbidden(format!(
                "poddisruptionbudget.policy \"{budget}\" is forbidden: pdb disruptions allowed is negative"
            )));
        }
        if status.disrupted_pods.as_ref().map_or(0, |d| d.len()) > budget::MAX_DISRUPTED_PODS {
            return Err(ApiError::forbidden(format!(
                "poddisruptionbudget.policy \"{budget}\" is forbidden: DisruptedPods map too big - too many evictions not confirmed by PDB controller"
            )));
        }
        if allowed == 0 {
            return Err(too_many(
                format!(
                    "The disruption budget {budget} needs {} healthy pods and has {} currently",
                    status.desired_healthy.unwrap_or(0),
                    status.current_healthy.unwrap_or(0)
                ),
                None,
            ));
        }
        status.disruptions_allowed = Some(allowed - 1);
        let now = jiff::Timestamp::now();
        if allowed == 1 {
            budget::set_condition(status, None, now);
        }
        status
            .disrupted_pods
            .get_or_insert_with(Default::default)
            .insert(pod.to_owned(), Time(now));
        let mut new = serde_json::to_value(&pdb)
            .map_err(|e| ApiError::internal(format!("PodDisruptionBudget: {e}")))?;
        // Unpinned, so a conflicting write re-runs this check on the latest budget.
        if let Some(m) = object::meta_mut(&mut new) {
            m.remove("resourceVersion");
        }
        Ok(new)
    };
    if dry_run {
        let Some((old, _)) = pdb_ctx.current(budget).await? else {
            return Err(pdb_ctx.not_found(budget));
        };
        return change(&old).map(drop);
    }
    update_loop(&pdb_ctx, budget, Part::Status, change)
        .await
        .map(drop)
}

/// `addConditionAndDeletePod`: the `DisruptionTarget` condition (checked against the
/// delete's preconditions), then the delete itself.
async fn condition_and_delete(ctx: &Ctx, name: &str, mut opts: Options) -> ApiResult<()> {
    if !opts.dry_run {
        let (uid, rv) = (
            opts.uid().map(str::to_owned),
            opts.resource_version().map(str::to_owned),
        );
        let (pod, _) = update_loop(ctx, name, Part::Status, |old| {
            let conflict = || ApiError::conflict("", "pods", name);
            if uid
                .as_deref()
                .is_some_and(|u| !u.is_empty() && object::meta_str(old, "uid") != Some(u))
            {
                return Err(conflict());
            }
            if rv.as_deref().is_some_and(|r| {
                !r.is_empty() && object::meta_str(old, "resourceVersion") != Some(r)
            }) {
                return Err(conflict());
            }
            let mut new = old.clone();
            add_disruption_target(&mut new);
            if let Some(m) = object::meta_mut(&mut new) {
                m.remove("resourceVersion");
            }
            Ok(new)
        })
        .await?;
        // The condition was our write: the delete's precondition moves past it.
        if rv.is_some()
            && let Some(new_rv) = object::meta_str(&pod, "resourceVersion")
        {
            opts = opts.with_resource_version(new_rv);
        }
    }
    let mut body = opts.body;
    if opts.dry_run {
        body.insert("dryRun".into(), json!(["All"]));
    }
    let body = serde_json::to_vec(&body).unwrap_or_default();
    super::delete::delete(ctx.clone(), name, Body::from(body))
        .await
        .map(drop)
}

/// `podutil.UpdatePodCondition` with DisruptionTarget=True (EvictionByEvictionAPI).
fn add_disruption_target(pod: &mut Value) {
    let now = object::now();
    let wanted = json!({"type": "DisruptionTarget", "status": "True",
        "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting",
        "lastProbeTime": null, "lastTransitionTime": now});
    if !pod.get("status").is_some_and(Value::is_object) {
        pod["status"] = json!({});
    }
    let conditions = &mut pod["status"]["conditions"];
    if !conditions.is_array() {
        *conditions = json!([]);
    }
    let Some(list) = conditions.as_array_mut() else {
        return;
    };
    match list.iter_mut().find(|c| c["type"] == "DisruptionTarget") {
        Some(c) => {
            let keep_time = c["status"] == "True";
            let since = c["lastTransitionTime"].clone();
            *c = wanted;
            if keep_time {
                c["lastTransitionTime"] = since;
            }
        }
        None => list.push(wanted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_pods_skip_the_budget() {
        let pod = |phase: &str, deleting: bool| {
            let mut p = json!({"metadata": {"name": "p"}, "status": {"phase": phase}});
            if deleting {
                p["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
            }
            p
        };
        for (phase, deleting, ignore, enforce) in [
            ("Pending", false, true, true),
            ("Succeeded", false, true, false),
            ("Failed", false, true, false),
            ("Running", true, true, false),
            ("Running", false, false, true),
        ] {
            let p = pod(phase, deleting);
            assert_eq!(can_ignore_budget(&p), ignore, "{phase} deleting={deleting}");
            assert_eq!(
                enforce_resource_version(&p),
                enforce,
                "{phase} deleting={deleting}"
            );
        }
    }

    #[test]
    fn the_condition_is_added_once() {
        let mut pod = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        add_disruption_target(&mut pod);
        let first = pod["status"]["conditions"][1]["lastTransitionTime"].clone();
        add_disruption_target(&mut pod);
        let conditions = pod["status"]["conditions"].as_array().expect("array");
        assert_eq!(conditions.len(), 2);
        assert_eq!(conditions[1]["reason"], "EvictionByEvictionAPI");
        assert_eq!(conditions[1]["lastTransitionTime"], first);
    }
}

//! The validating dispatcher (`webhook/validating/dispatcher.go`): every webhook that
//! applies is called at once; the first refusal or failure (in webhook order) fails
//! the request, webhooks under `failurePolicy: Ignore` that could not be called are
//! skipped.

use std::sync::Arc;

use super::config::Hook;
use super::{
    Attributes, Failure, call, equivalents, info, observe, requested, review, should_call,
};
use crate::apiserver::audit;
use crate::apiserver::rest::Ctx;
use crate::apiserver::status::ApiResult;

pub(super) async fn run(ctx: &Ctx, hooks: &[Arc<Hook>], attrs: &Attributes) -> ApiResult<()> {
    let equivalents = equivalents(ctx);
    let requested = requested(ctx, attrs);
    let info = info(ctx, attrs, &requested);
    let mut relevant = Vec::new();
    for (index, hook) in hooks.iter().enumerate() {
        if let Some(invocation) = should_call(ctx, hook, attrs, &info, &equivalents).await? {
            relevant.push((index, hook, invocation));
        }
    }
    // Joined, not spawned: the calls stay in this request's task (its audit record
    // and warnings).
    let calls = relevant.iter().map(|(index, hook, invocation)| {
        let info = &info;
        async move {
            let started = std::time::Instant::now();
            let result = call(ctx, hook, invocation, info, attrs, false).await;
            observe(ctx, hook, attrs, "validating", started, &result);
            match result {
                Ok(_) => Ok(()),
                Err(Failure::Calling { why, .. }) if hook.fail_open => {
                    tracing::warn!(webhook = %hook.name, error = %why, "failed calling webhook, failing open");
                    audit::annotate(
                        &format!(
                            "failed-open.validating.webhook.admission.k8s.io/round_0_index_{index}"
                        ),
                        hook.name.clone(),
                    );
                    Ok(())
                }
                Err(Failure::Calling { why, .. }) => {
                    tracing::warn!(webhook = %hook.name, error = %why, "failed calling webhook, failing closed");
                    Err(review::calling_error(&hook.name, &why))
                }
                Err(Failure::Rejected(err) | Failure::Other(err)) => Err(err),
            }
        }
    });
    for result in futures_util::future::join_all(calls).await {
        result?;
    }
    Ok(())
}

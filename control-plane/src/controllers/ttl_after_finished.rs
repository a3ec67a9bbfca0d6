//! The TTL-after-finished controller (kube-controller-manager's
//! `ttlafterfinished_controller.go`): a Job with `spec.ttlSecondsAfterFinished` is
//! deleted that many seconds after it finished — the `lastTransitionTime` of its
//! Complete or Failed condition. Jobs not yet due are requeued for their expiry; a due
//! Job is read afresh from the apiserver (its TTL may have changed) and deleted with
//! its UID as a precondition and foreground propagation, as upstream does. [`start`]
//! runs it.

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::Job;
use kube::Client;
use kube::api::{Api, DeleteParams, Preconditions, PropagationPolicy};
use kube::runtime::reflector::{ObjectRef, Store};

use super::cronjob::Clock;
use super::queue::{Queue, key_of, split_key};
use crate::client::Informers;

/// When the job finished, if it has finished and says when.
pub fn finish_time(job: &Job) -> Option<Timestamp> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")?
        .last_transition_time
        .as_ref()
        .map(|t| t.0)
}

/// Whether the controller cares: a TTL, finished, and not already being deleted.
fn needs_cleanup(job: &Job) -> bool {
    job.metadata.deletion_timestamp.is_none()
        && job
            .spec
            .as_ref()
            .is_some_and(|s| s.ttl_seconds_after_finished.is_some())
        && super::cronjob::finished(job).is_some()
}

/// What to do with a job at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Not finished, no TTL, already being deleted, or no finish time recorded.
    Never,
    /// Expires after this long.
    In(Duration),
    /// Expired: delete it.
    Now,
}

pub fn due(job: &Job, now: Timestamp) -> Due {
    if !needs_cleanup(job) {
        return Due::Never;
    }
    let (Some(finished), Some(ttl)) = (
        finish_time(job),
        job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished),
    ) else {
        return Due::Never;
    };
    if finished > now {
        tracing::info!(job = ?job.metadata.name, "job finished in the future (clock skew?); its cleanup waits");
    }
    let expires = finished + SignedDuration::from_secs(i64::from(ttl));
    match Duration::try_from(expires.duration_since(now)) {
        Ok(d) if !d.is_zero() => Due::In(d),
        _ => Due::Now,
    }
}

struct Controller {
    client: Client,
    jobs: Store<Job>,
    now: Clock,
}

/// Runs the controller with the real clock.
pub fn start(
    client: Client,
    informers: &mut Informers,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    start_with(client, informers, Arc::new(Timestamp::now))
}

/// Runs the controller reading the time from `now`.
pub fn start_with(
    client: Client,
    informers: &mut Informers,
    now: Clock,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let queue = Queue::new();
    let jobs = informers.add(Api::<Job>::all(client.clone()), {
        let q = queue.clone();
        move |job: &Job| {
            if needs_cleanup(job) {
                q.add(key_of(&job.metadata));
            }
        }
    });
    async move {
        let _ = jobs.wait_until_ready().await;
        let ctl = Arc::new(Controller { client, jobs, now });
        queue
            .work("ttl-after-finished", move |key| {
                let ctl = ctl.clone();
                async move { ctl.sync(&key).await }
            })
            .await;
    }
}

impl Controller {
    async fn sync(&self, key: &str) -> Result<Option<Duration>, kube::Error> {
        let (Some(ns), name) = split_key(key) else {
            return Ok(None);
        };
        let Some(job) = self.jobs.get(&ObjectRef::new(name).within(ns)) else {
            return Ok(None);
        };
        match due(&job, (self.now)()) {
            Due::Never => return Ok(None),
            Due::In(d) => return Ok(Some(d)),
            Due::Now => {}
        }
        // The cache may be stale (the TTL changed, the job was re-created): decide again
        // on the job as the apiserver has it now.
        let api: Api<Job> = Api::namespaced(self.client.clone(), ns);
        let fresh = match api.get(name).await {
            Ok(j) => j,
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
            Err(e) => return Err(e),
        };
        match due(&fresh, (self.now)()) {
            Due::Never => return Ok(None),
            Due::In(d) => return Ok(Some(d)),
            Due::Now => {}
        }
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Foreground),
            preconditions: Some(Preconditions {
                uid: fresh.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        tracing::debug!(job = %key, "TTL after finished expired; deleting");
        match api.delete(name, &dp).await {
            Ok(_) => Ok(None),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(ttl: Option<i32>, condition: Option<(&str, &str)>) -> Job {
        let conditions: Vec<_> = condition
            .into_iter()
            .map(|(t, at)| json!({"type": t, "status": "True", "lastTransitionTime": at}))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": "j", "namespace": "default", "uid": "u"},
            "spec": {"ttlSecondsAfterFinished": ttl,
                "template": {"spec": {"containers": []}}},
            "status": {"conditions": conditions},
        }))
        .expect("job")
    }

    fn t(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn jobs_expire_ttl_after_their_finish_condition() {
        let now = t("2024-01-01T00:00:10Z");
        let done = job(Some(30), Some(("Complete", "2024-01-01T00:00:00Z")));
        assert_eq!(due(&done, now), Due::In(Duration::from_secs(20)));
        assert_eq!(due(&done, t("2024-01-01T00:00:30Z")), Due::Now);
        let failed = job(Some(0), Some(("Failed", "2024-01-01T00:00:00Z")));
        assert_eq!(due(&failed, now), Due::Now);
        // No TTL, or not finished: never.
        assert_eq!(
            due(&job(None, Some(("Complete", "2024-01-01T00:00:00Z"))), now),
            Due::Never
        );
        assert_eq!(due(&job(Some(1), None), now), Due::Never);
        assert_eq!(
            due(
                &job(Some(1), Some(("Suspended", "2024-01-01T00:00:00Z"))),
                now
            ),
            Due::Never
        );
        // Finished in the future (skew): waits out the TTL from then.
        let skewed = job(Some(5), Some(("Complete", "2024-01-01T00:01:00Z")));
        assert_eq!(due(&skewed, now), Due::In(Duration::from_secs(55)));
        // Being deleted already: nothing to do.
        let mut deleting = done.clone();
        deleting.metadata.deletion_timestamp = done.metadata.creation_timestamp.clone().or(Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now),
        ));
        assert_eq!(due(&deleting, now), Due::Never);
    }
}

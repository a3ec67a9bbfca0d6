//! The Job controller: runs pods from a Job's template until enough succeed
//! (`completions`, NonIndexed or Indexed) with at most `parallelism` at once, or the
//! Job fails (back-off limits, `podFailurePolicy`, `activeDeadlineSeconds`, failed
//! indexes); suspends and resumes; honours `successPolicy` and `podReplacementPolicy`.
//!
//! No pod result is lost or counted twice: every pod carries the
//! `batch.kubernetes.io/job-tracking` finalizer; a finished pod is first recorded in
//! `status.uncountedTerminatedPods` (a compare-and-swap status write), then loses its
//! finalizer, and only then moves into the `succeeded`/`failed` counters — upstream's
//! three steps. A Job that meets its end first gets `FailureTarget` or
//! `SuccessCriteriaMet`, its remaining pods are stopped, and then it gets `Failed` or
//! `Complete`, with upstream's reasons.

mod indexes;
mod policy;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;

use super::expectations::Expectations;
use super::pods;
use super::queue::{Queue, key_of, split_key};
use crate::client::{Informers, Involved, record_event};

pub use indexes::{format as format_indexes, parse as parse_indexes};

const COMPONENT: &str = "job-controller";
/// Held by every pod of a Job until its result is counted.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// The annotation and label carrying an Indexed Job pod's completion index.
pub const INDEX_KEY: &str = "batch.kubernetes.io/job-completion-index";
/// Failures of the pod's index before it (`backoffLimitPerIndex`).
const INDEX_FAILURES: &str = "batch.kubernetes.io/job-index-failure-count";
/// Pods created or deleted in one sync at most.
const BURST: usize = 500;
/// Back-off before a failed pod is replaced: 10 s, doubling, at most 6 min.
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(360);
/// Finished-pod status and finalizer updates in flight at once.
const CONCURRENCY: usize = 64;

struct Controller {
    client: Client,
    pods: Store<Pod>,
    jobs: Store<Job>,
    expectations: Expectations<String>,
    /// Pods (uids) whose finalizer this controller removed after recording them, until
    /// the cache shows the finalizer gone: a stale cache must not count them again.
    counted: Mutex<HashMap<String, HashSet<String>>>,
}

/// Runs the controller until the runtime ends.
pub fn start(
    client: Client,
    informers: &mut Informers,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let queue = Queue::new();
    let jobs = informers.add(Api::<Job>::all(client.clone()), {
        let q = queue.clone();
        move |o: &Job| q.add(key_of(&o.metadata))
    });
    let pods = informers.add(Api::<Pod>::all(client.clone()), {
        let q = queue.clone();
        move |pod: &Pod| {
            if let Some(key) = pods::controller_key(&pod.metadata, "batch/v1", "Job") {
                q.add(key);
            }
        }
    });
    async move {
        let _ = jobs.wait_until_ready().await;
        let _ = pods.wait_until_ready().await;
        let ctl = Arc::new(Controller {
            client,
            pods,
            jobs,
            expectations: Expectations::default(),
            counted: Mutex::new(HashMap::new()),
        });
        queue
            .work("job", move |key| {
                let ctl = ctl.clone();
                async move { ctl.sync(&key).await }
            })
            .await;
    }
}

/// How a pod has ended, as far as counting goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Succeeded,
    Failed,
}

/// Whether `pod` has ended: Succeeded or Failed, or deleted before it finished — at
/// once, or (`podReplacementPolicy: Failed`, or a failure policy that must see its
/// exit codes) once its grace period has run out.
fn ended(pod: &Pod, wait_for_terminal: bool, now: jiff::Timestamp) -> Option<End> {
    match pods::phase(pod) {
        "Succeeded" => Some(End::Succeeded),
        "Failed" => Some(End::Failed),
        _ => {
            let deleted = pod.metadata.deletion_timestamp.as_ref()?;
            (!wait_for_terminal || deleted.0 <= now).then_some(End::Failed)
        }
    }
}

fn has_finalizer(pod: &Pod) -> bool {
    pod.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == TRACKING_FINALIZER))
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// The completion index of an Indexed Job's pod.
fn index_of(pod: &Pod) -> Option<i32> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(INDEX_KEY)?
        .parse()
        .ok()
        .filter(|i| *i >= 0)
}

/// When a pod ended: its last container's finish, else its deletion.
fn finished_at(pod: &Pod) -> Option<jiff::Timestamp> {
    let status = pod.status.as_ref();
    status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max()
        .or_else(|| pod.metadata.deletion_timestamp.as_ref().map(|t| t.0))
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

fn condition<'a>(status: &'a JobStatus, type_: &str) -> Option<&'a JobCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// Whether the Job has ended (Complete or Failed).
pub fn finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .is_some_and(|s| condition(s, "Complete").is_some() || condition(s, "Failed").is_some())
}

/// Sets condition `type_` (replacing one of the same type), keeping the transition
/// time when the status does not change.
fn set_condition(status: &mut JobStatus, type_: &str, value: bool, reason: &str, message: &str) {
    let now = Time(jiff::Timestamp::now());
    let value = if value { "True" } else { "False" };
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status != value {
            c.last_transition_time = Some(now.clone());
        }
        c.status = value.into();
        c.reason = Some(reason.into());
        c.message = Some(message.into());
        c.last_probe_time = Some(now);
        return;
    }
    conditions.push(JobCondition {
        type_: type_.into(),
        status: value.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now),
    });
}

/// How the Job is ending, once it is.
#[derive(Debug, Clone)]
enum Ending {
    Fail(String, String),
    Succeed(String, String),
}

impl Controller {
    fn counted(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashSet<String>>> {
        self.counted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the cache has caught up with the creations and deletions of the last sync.
    fn satisfied(&self, key: &str, ns: &str) -> bool {
        self.expectations.satisfied(&key.to_owned(), ns, &self.pods)
    }

    fn expect(&self, key: &str, adds: HashSet<String>, deletes: HashSet<String>) {
        self.expectations.expect(key.to_owned(), adds, deletes);
    }

    async fn event(&self, job: &Job, type_: &str, reason: &str, message: &str) {
        let involved = Involved {
            api_version: "batch/v1".into(),
            kind: "Job".into(),
            namespace: job.metadata.namespace.clone(),
            name: job.metadata.name.clone().unwrap_or_default(),
            uid: job.metadata.uid.clone(),
        };
        record_event(&self.client, COMPONENT, &involved, type_, reason, message).await;
    }

    /// Removes the tracking finalizer from `pods`; the uids it is now gone from
    /// (removed, or the pod is gone).
    async fn release(&self, ns: &str, pods: &[&Pod]) -> Result<HashSet<String>, kube::Error> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let work: Vec<(String, String)> = pods
            .iter()
            .map(|p| (p.metadata.name.clone().unwrap_or_default(), uid(p)))
            .collect();
        let results: Vec<(String, Result<Pod, kube::Error>)> = futures_util::stream::iter(work)
            .map(move |(name, uid)| {
                let api = api.clone();
                async move {
                    let patch = Patch::Strategic(json!({"metadata": {
                        "$deleteFromPrimitiveList/finalizers": [TRACKING_FINALIZER]}}));
                    (uid, api.patch(&name, &PatchParams::default(), &patch).await)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut done = HashSet::new();
        let mut failure = None;
        for (uid, r) in results {
            match r {
                Ok(_) => {
                    done.insert(uid);
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    done.insert(uid);
                }
                Err(e) => failure = Some(e),
            }
        }
        match failure {
            Some(e) if done.is_empty() => Err(e),
            _ => Ok(done),
        }
    }

    /// Stops `victims` without counting them: finalizer off, then deleted.
    async fn stop_uncounted(
        &self,
        job: &Job,
        ns: &str,
        victims: &[&Pod],
    ) -> Result<(), kube::Error> {
        let holding: Vec<&Pod> = victims
            .iter()
            .copied()
            .filter(|p| has_finalizer(p))
            .collect();
        let released = self.release(ns, &holding).await?;
        self.counted()
            .entry(key_of(&job.metadata))
            .or_default()
            .extend(released);
        self.delete_pods(job, ns, victims).await
    }

    async fn delete_pods(&self, job: &Job, ns: &str, victims: &[&Pod]) -> Result<(), kube::Error> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let mut deleted = HashSet::new();
        let mut failure = None;
        for pod in victims.iter().take(BURST) {
            let name = pod.metadata.name.clone().unwrap_or_default();
            match pods::delete(&api, pod).await {
                Ok(true) => {
                    self.event(
                        job,
                        "Normal",
                        "SuccessfulDelete",
                        &format!("Deleted pod: {name}"),
                    )
                    .await;
                    deleted.insert(name);
                }
                Ok(false) => {}
                Err(e) => failure = Some(e),
            }
        }
        self.expect(&key_of(&job.metadata), HashSet::new(), deleted);
        failure.map_or(Ok(()), Err)
    }

    /// Writes `status` over the Job's (compare-and-swap on its resourceVersion).
    async fn write_status(&self, job: &Job, status: JobStatus) -> Result<Job, kube::Error> {
        let ns = job.metadata.namespace.as_deref().unwrap_or_default();
        let name = job.metadata.name.as_deref().unwrap_or_default();
        let api: Api<Job> = Api::namespaced(self.client.clone(), ns);
        let mut new = job.clone();
        new.status = Some(status);
        api.replace_status(name, &PostParams::default(), &new).await
    }

    async fn sync(&self, key: &str) -> Result<Option<Duration>, kube::Error> {
        let (Some(ns), name) = split_key(key) else {
            return Ok(None);
        };
        let job = self
            .jobs
            .get(&ObjectRef::new(name).within(ns))
            .map(|j| (*j).clone());
        let job_uid = job.as_ref().and_then(|j| j.metadata.uid.clone());
        // Pods of this Job, and pods of a Job of this name that is gone, which must not
        // be held back by the finalizer.
        let mut owned: Vec<Arc<Pod>> = Vec::new();
        let mut strays: Vec<Arc<Pod>> = Vec::new();
        for pod in self.pods.state() {
            if pod.metadata.namespace.as_deref() != Some(ns) {
                continue;
            }
            let Some(r) = pods::controller_ref(&pod.metadata) else {
                continue;
            };
            if r.kind != "Job" || r.api_version != "batch/v1" || r.name != name {
                continue;
            }
            if Some(&r.uid) == job_uid.as_ref() {
                owned.push(pod);
            } else if has_finalizer(&pod) {
                strays.push(pod);
            }
        }
        if !strays.is_empty() {
            let strays: Vec<&Pod> = strays.iter().map(|p| &**p).collect();
            self.release(ns, &strays).await?;
        }
        let Some(job) = job else {
            self.expectations.forget(&key.to_owned());
            self.counted().remove(key);
            return Ok(None);
        };
        // Forget counted pods once the cache shows them without the finalizer.
        {
            let mut counted = self.counted();
            if let Some(set) = counted.get_mut(key) {
                let holding: HashSet<String> = owned
                    .iter()
                    .filter(|p| has_finalizer(p))
                    .map(|p| uid(p))
                    .collect();
                set.retain(|u| holding.contains(u));
            }
        }
        if job.metadata.deletion_timestamp.is_some() || finished(&job) {
            let holding: Vec<&Pod> = owned
                .iter()
                .map(|p| &**p)
                .filter(|p| has_finalizer(p))
                .collect();
            if !holding.is_empty() {
                self.release(ns, &holding).await?;
            }
            self.expectations.forget(&key.to_owned());
            return Ok(None);
        }
        self.sync_job(key, ns, job, &owned).await
    }

    async fn sync_job(
        &self,
        key: &str,
        ns: &str,
        mut job: Job,
        owned: &[Arc<Pod>],
    ) -> Result<Option<Duration>, kube::Error> {
        let spec = job.spec.clone().unwrap_or_default();
        let name = job.metadata.name.clone().unwrap_or_default();
        let indexed = spec.completion_mode.as_deref() == Some("Indexed");
        let completions = spec.completions;
        let limit = completions.unwrap_or(0);
        let parallelism = spec.parallelism.unwrap_or(1).max(0);
        let per_index = spec.backoff_limit_per_index;
        let wait_for_terminal = spec.pod_replacement_policy.as_deref() == Some("Failed")
            || spec.pod_failure_policy.is_some();
        let now = jiff::Timestamp::now();
        let old_status = job.status.clone().unwrap_or_default();
        let mut status = old_status.clone();
        let uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
        let mut unc_succeeded: BTreeSet<String> = uncounted
            .succeeded
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut unc_failed: BTreeSet<String> =
            uncounted.failed.unwrap_or_default().into_iter().collect();
        let mut completed = indexes::parse(
            status.completed_indexes.as_deref().unwrap_or_default(),
            limit,
        )
        .unwrap_or_default();
        let mut failed_indexes =
            indexes::parse(status.failed_indexes.as_deref().unwrap_or_default(), limit)
                .unwrap_or_default();
        let counted = self.counted().get(key).cloned().unwrap_or_default();

        // 1. Record newly ended pods as uncounted.
        let mut fail_job: Option<String> = None;
        let mut ignored: Vec<&Pod> = Vec::new();
        let mut recorded = false;
        for pod in owned {
            let u = uid(pod);
            if !has_finalizer(pod)
                || counted.contains(&u)
                || unc_succeeded.contains(&u)
                || unc_failed.contains(&u)
            {
                continue;
            }
            match ended(pod, wait_for_terminal, now) {
                None => {}
                Some(End::Succeeded) => {
                    if indexed {
                        match index_of(pod).filter(|i| *i < limit) {
                            Some(i) if completed.insert(i) => {
                                unc_succeeded.insert(u);
                                recorded = true;
                            }
                            // A second success for an index, or no valid index: not counted.
                            _ => ignored.push(pod),
                        }
                    } else {
                        unc_succeeded.insert(u);
                        recorded = true;
                    }
                }
                Some(End::Failed) => {
                    let action = if pods::phase(pod) == "Failed" {
                        policy::failure_action(spec.pod_failure_policy.as_ref(), pod)
                    } else {
                        policy::Action::Count
                    };
                    let index = index_of(pod).filter(|i| indexed && *i < limit);
                    match action {
                        policy::Action::Ignore => {
                            ignored.push(pod);
                            continue;
                        }
                        policy::Action::FailJob(message) => {
                            fail_job.get_or_insert(message);
                        }
                        policy::Action::FailIndex => {
                            if let (Some(i), Some(_)) = (index, per_index) {
                                failed_indexes.insert(i);
                            }
                        }
                        policy::Action::Count => {
                            if let (Some(i), Some(limit)) = (index, per_index)
                                && index_failures(pod) + 1 > limit
                            {
                                failed_indexes.insert(i);
                            }
                        }
                    }
                    unc_failed.insert(u);
                    recorded = true;
                }
            }
        }
        let index_text = |set: &BTreeSet<i32>| indexes::format(set);
        if recorded {
            status.uncounted_terminated_pods = Some(UncountedTerminatedPods {
                succeeded: Some(unc_succeeded.iter().cloned().collect()),
                failed: Some(unc_failed.iter().cloned().collect()),
            });
            if indexed {
                status.completed_indexes = index_text(&completed);
            }
            if per_index.is_some() {
                status.failed_indexes = Some(index_text(&failed_indexes).unwrap_or_default());
            }
            if let Some(message) = &fail_job
                && condition(&status, "FailureTarget").is_none()
            {
                set_condition(
                    &mut status,
                    "FailureTarget",
                    true,
                    "PodFailurePolicy",
                    message,
                );
            }
            job = match self.write_status(&job, status.clone()).await {
                Ok(j) => j,
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
                Err(e) => return Err(e),
            };
        }

        // 2. Release the recorded pods; 3. count those released.
        let releasing: Vec<&Pod> = owned
            .iter()
            .map(|p| &**p)
            .filter(|p| {
                has_finalizer(p) && {
                    let u = uid(p);
                    unc_succeeded.contains(&u) || unc_failed.contains(&u)
                }
            })
            .chain(ignored.iter().copied())
            .collect();
        let released = self.release(ns, &releasing).await?;
        self.counted()
            .entry(key.to_owned())
            .or_default()
            .extend(released.iter().cloned());
        let holding_uids: HashSet<&str> = owned
            .iter()
            .filter(|p| has_finalizer(p))
            .filter_map(|p| p.metadata.uid.as_deref())
            .collect();
        let gone = |u: &String| released.contains(u) || !holding_uids.contains(u.as_str());
        let before = (unc_succeeded.len(), unc_failed.len());
        unc_succeeded.retain(|u| !gone(u));
        unc_failed.retain(|u| !gone(u));
        let newly_succeeded = i32::try_from(before.0 - unc_succeeded.len()).unwrap_or(i32::MAX);
        let newly_failed = i32::try_from(before.1 - unc_failed.len()).unwrap_or(i32::MAX);
        status.succeeded = Some(
            status
                .succeeded
                .unwrap_or(0)
                .saturating_add(newly_succeeded),
        );
        status.failed = Some(status.failed.unwrap_or(0).saturating_add(newly_failed));
        status.uncounted_terminated_pods = Some(UncountedTerminatedPods {
            succeeded: Some(unc_succeeded.iter().cloned().collect()),
            failed: Some(unc_failed.iter().cloned().collect()),
        });
        let succeeded = status.succeeded.unwrap_or(0);
        let failed = status.failed.unwrap_or(0);

        // What is running.
        let active: Vec<&Pod> = owned
            .iter()
            .map(|p| &**p)
            .filter(|p| pods::is_active(p))
            .collect();
        let terminating = owned
            .iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_some()
                    && !matches!(pods::phase(p), "Succeeded" | "Failed")
            })
            .count();
        let holding = owned.iter().filter(|p| has_finalizer(p)).count();
        status.active = Some(i32::try_from(active.len()).unwrap_or(i32::MAX));
        status.ready = Some(
            i32::try_from(active.iter().filter(|p| pods::is_ready(p)).count()).unwrap_or(i32::MAX),
        );
        status.terminating = Some(i32::try_from(terminating).unwrap_or(i32::MAX));
        let suspended = spec.suspend == Some(true);
        let deadline = spec
            .active_deadline_seconds
            .zip(status.start_time.as_ref())
            .map(|(secs, start)| start.0 + jiff::SignedDuration::from_secs(secs));

        // Has the Job met its end?
        let ending = if let Some(c) = condition(&status, "FailureTarget") {
            Some(Ending::Fail(
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            ))
        } else if let Some(c) = condition(&status, "SuccessCriteriaMet") {
            Some(Ending::Succeed(
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            ))
        } else if let Some(message) = fail_job {
            Some(Ending::Fail("PodFailurePolicy".into(), message))
        } else if failed > spec.backoff_limit.unwrap_or(6)
            || past_backoff_on_failure(&spec, &active)
        {
            Some(Ending::Fail(
                "BackoffLimitExceeded".into(),
                "Job has reached the specified backoff limit".into(),
            ))
        } else if per_index.is_some()
            && spec
                .max_failed_indexes
                .is_some_and(|m| failed_indexes.len() > usize::try_from(m).unwrap_or(0))
        {
            Some(Ending::Fail(
                "MaxFailedIndexesExceeded".into(),
                "Job has exceeded the specified maximal number of failed indexes".into(),
            ))
        } else if !suspended && deadline.is_some_and(|d| d <= now) {
            Some(Ending::Fail(
                "DeadlineExceeded".into(),
                "Job was active longer than specified deadline".into(),
            ))
        } else if let Some(i) = indexed
            .then(|| policy::success_rule(spec.success_policy.as_ref(), &completed, limit))
            .flatten()
        {
            Some(Ending::Succeed(
                "SuccessPolicy".into(),
                format!("Matched rules at index {i}"),
            ))
        } else {
            let done = match (completions, indexed) {
                (Some(c), false) => succeeded >= c,
                (Some(c), true) => {
                    usize::try_from(c).is_ok_and(|c| completed.len() + failed_indexes.len() >= c)
                }
                (None, _) => succeeded > 0 && active.is_empty(),
            };
            match done {
                true if indexed && !failed_indexes.is_empty() => Some(Ending::Fail(
                    "FailedIndexes".into(),
                    "Job has failed indexes".into(),
                )),
                true => Some(Ending::Succeed(
                    "CompletionsReached".into(),
                    "Reached expected number of succeeded pods".into(),
                )),
                false => None,
            }
        };

        let mut again: Option<Duration> = None;
        let mut failure: Option<kube::Error> = None;
        if let Some(ending) = ending {
            let (target, reason, message) = match &ending {
                Ending::Fail(r, m) => ("FailureTarget", r, m),
                Ending::Succeed(r, m) => ("SuccessCriteriaMet", r, m),
            };
            if condition(&status, target).is_none() {
                set_condition(&mut status, target, true, reason, message);
            }
            if !active.is_empty() {
                // A failing Job's stopped pods count as failed; a succeeding one's do not.
                let r = match ending {
                    Ending::Fail(..) => self.delete_pods(&job, ns, &active).await,
                    Ending::Succeed(..) => self.stop_uncounted(&job, ns, &active).await,
                };
                failure = r.err();
                again = Some(Duration::from_secs(1));
            } else if holding == 0 && unc_succeeded.is_empty() && unc_failed.is_empty() {
                match &ending {
                    Ending::Fail(reason, message) => {
                        set_condition(&mut status, "Failed", true, reason, message);
                        self.event(&job, "Warning", reason, message).await;
                    }
                    Ending::Succeed(reason, message) => {
                        set_condition(&mut status, "Complete", true, reason, message);
                        status.completion_time = Some(Time(now));
                        self.event(&job, "Normal", "Completed", "Job completed")
                            .await;
                    }
                }
            } else {
                again = Some(Duration::from_secs(1));
            }
        } else if suspended {
            if !active.is_empty() {
                failure = self.stop_uncounted(&job, ns, &active).await.err();
            }
            if condition(&status, "Suspended").is_none() {
                set_condition(
                    &mut status,
                    "Suspended",
                    true,
                    "JobSuspended",
                    "Job suspended",
                );
                self.event(&job, "Normal", "Suspended", "Job suspended")
                    .await;
            }
        } else {
            if condition(&status, "Suspended").is_some() {
                set_condition(&mut status, "Suspended", false, "JobResumed", "Job resumed");
                status.start_time = Some(Time(now));
                self.event(&job, "Normal", "Resumed", "Job resumed").await;
            }
            if status.start_time.is_none() {
                status.start_time = Some(Time(now));
            }
            if let Some(d) = spec.active_deadline_seconds {
                let start = status.start_time.as_ref().map_or(now, |t| t.0);
                let left = (start + jiff::SignedDuration::from_secs(d)).duration_since(now);
                again =
                    Some(Duration::try_from(left).unwrap_or_default() + Duration::from_millis(10));
            }
            if self.satisfied(key, ns) {
                let plan = Plan {
                    name: &name,
                    indexed,
                    completions,
                    parallelism,
                    succeeded,
                    completed: &completed,
                    failed_indexes: &failed_indexes,
                    wait_for_terminal,
                };
                match self.manage(key, ns, &job, owned, &active, &plan, now).await {
                    Ok(wait) => {
                        again = match (again, wait) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        }
                    }
                    Err(e) => failure = Some(e),
                }
            } else {
                // Look again soon: the expectation may time out without an event.
                again =
                    Some(again.map_or(Duration::from_secs(1), |a| a.min(Duration::from_secs(1))));
            }
        }

        if indexed {
            status.completed_indexes = index_text(&completed);
        }
        if per_index.is_some() {
            status.failed_indexes = Some(index_text(&failed_indexes).unwrap_or_default());
        }
        let current = job.status.clone().unwrap_or_default();
        if serde_json::to_value(&status).ok() != serde_json::to_value(&current).ok() {
            match self.write_status(&job, status).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(again),
        }
    }

    /// Creates the missing pods and deletes the extra ones; how long until a back-off
    /// ends, if one holds creations back.
    #[allow(clippy::too_many_arguments, reason = "one sync's state, borrowed")]
    async fn manage(
        &self,
        key: &str,
        ns: &str,
        job: &Job,
        owned: &[Arc<Pod>],
        active: &[&Pod],
        plan: &Plan<'_>,
        now: jiff::Timestamp,
    ) -> Result<Option<Duration>, kube::Error> {
        let terminating: Vec<&Pod> = owned
            .iter()
            .map(|p| &**p)
            .filter(|p| {
                p.metadata.deletion_timestamp.is_some()
                    && !matches!(pods::phase(p), "Succeeded" | "Failed")
            })
            .collect();
        let occupied = if plan.wait_for_terminal {
            terminating.len()
        } else {
            0
        };
        let parallelism = usize::try_from(plan.parallelism).unwrap_or(0);
        let mut extra: Vec<&Pod> = Vec::new();
        let mut create: Vec<Option<i32>> = Vec::new();
        if plan.indexed {
            let limit = plan.completions.unwrap_or(0);
            let mut running: HashMap<i32, Vec<&Pod>> = HashMap::new();
            for p in active {
                match index_of(p).filter(|i| *i < limit && !plan.completed.contains(i)) {
                    Some(i) => running.entry(i).or_default().push(p),
                    None => extra.push(p),
                }
            }
            // One pod per index: the oldest stays.
            for list in running.values_mut() {
                list.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
                extra.extend(list.drain(1..));
            }
            let mut keep: Vec<i32> = running.keys().copied().collect();
            keep.sort_unstable();
            while keep.len() + occupied > parallelism {
                let Some(i) = keep.pop() else { break };
                extra.extend(running.remove(&i).unwrap_or_default());
            }
            let busy: HashSet<i32> = running
                .keys()
                .copied()
                .chain(if plan.wait_for_terminal {
                    terminating.iter().filter_map(|p| index_of(p)).collect()
                } else {
                    Vec::new()
                })
                .collect();
            let room = parallelism.saturating_sub(running.len() + occupied);
            create = (0..limit)
                .filter(|i| {
                    !plan.completed.contains(i)
                        && !plan.failed_indexes.contains(i)
                        && !busy.contains(i)
                })
                .take(room)
                .map(Some)
                .collect();
        } else {
            let want = match plan.completions {
                Some(c) => usize::try_from((c - plan.succeeded).max(0))
                    .unwrap_or(0)
                    .min(parallelism),
                None if plan.succeeded > 0 => 0,
                None => parallelism,
            };
            let have = active.len() + occupied;
            if have > want {
                let mut victims = active.to_vec();
                victims.sort_by(|a, b| pods::deletion_order(a, b));
                victims.truncate(have - want);
                extra = victims;
            } else {
                create = vec![None; want - have];
            }
        }
        if !extra.is_empty() {
            self.stop_uncounted(job, ns, &extra).await?;
        }
        if create.is_empty() {
            return Ok(None);
        }
        // Back-off after failures since the last success: 10 s, doubling, 6 min at most.
        let last_success = owned
            .iter()
            .filter(|p| pods::phase(p) == "Succeeded")
            .filter_map(|p| finished_at(p))
            .max();
        let failures: Vec<jiff::Timestamp> = owned
            .iter()
            .filter(|p| pods::phase(p) == "Failed" || p.metadata.deletion_timestamp.is_some())
            .filter_map(|p| finished_at(p))
            .filter(|t| last_success.is_none_or(|s| *t > s))
            .collect();
        if let Some(last) = failures.iter().max() {
            let n = u32::try_from(failures.len()).unwrap_or(u32::MAX);
            let delay = BACKOFF_BASE
                .saturating_mul(1u32 << (n - 1).min(10))
                .min(BACKOFF_MAX);
            let ready_at = *last + jiff::SignedDuration::try_from(delay).unwrap_or_default();
            if ready_at > now {
                let left = Duration::try_from(ready_at.duration_since(now)).unwrap_or_default();
                return Ok(Some(left));
            }
        }
        create.truncate(BURST);
        self.create_pods(key, ns, job, plan, &create, owned).await?;
        Ok(None)
    }

    async fn create_pods(
        &self,
        key: &str,
        ns: &str,
        job: &Job,
        plan: &Plan<'_>,
        indexes: &[Option<i32>],
        owned: &[Arc<Pod>],
    ) -> Result<(), kube::Error> {
        let Some(template) = job.spec.as_ref().map(|s| &s.template) else {
            return Ok(());
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let owner = pods::owner_ref("batch/v1", "Job", &job.metadata);
        // Failures so far of each index (backoffLimitPerIndex), from its failed pods.
        let mut index_failed: HashMap<i32, i32> = HashMap::new();
        if plan.indexed {
            let policy = job
                .spec
                .as_ref()
                .and_then(|s| s.pod_failure_policy.as_ref());
            for p in owned.iter().filter(|p| pods::phase(p) == "Failed") {
                if let Some(i) = index_of(p) {
                    // A failure an Ignore rule matched does not use up a retry.
                    let ignored = policy::failure_action(policy, p) == policy::Action::Ignore;
                    let n = index_failed.entry(i).or_insert(0);
                    *n = (*n).max(index_failures(p) + i32::from(!ignored));
                }
            }
        }
        let make = |index: Option<i32>| {
            let prefix = match index {
                Some(i) => format!("{}-{i}-", plan.name),
                None => format!("{}-", plan.name),
            };
            let mut pod = pods::from_template(template, &prefix, owner.clone());
            pod.metadata
                .finalizers
                .get_or_insert_with(Vec::new)
                .push(TRACKING_FINALIZER.into());
            if let Some(i) = index {
                let text = i.to_string();
                pod.metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(INDEX_KEY.into(), text.clone());
                pod.metadata
                    .labels
                    .get_or_insert_with(Default::default)
                    .insert(INDEX_KEY.into(), text);
                if let Some(n) = index_failed.get(&i).filter(|n| **n > 0) {
                    pod.metadata
                        .annotations
                        .get_or_insert_with(Default::default)
                        .insert(INDEX_FAILURES.into(), n.to_string());
                }
                if let Some(spec) = pod.spec.as_mut() {
                    if spec.hostname.is_none() {
                        spec.hostname = Some(format!("{}-{i}", plan.name));
                    }
                    let env = EnvVar {
                        name: "JOB_COMPLETION_INDEX".into(),
                        value: None,
                        value_from: Some(EnvVarSource {
                            field_ref: Some(ObjectFieldSelector {
                                api_version: Some("v1".into()),
                                field_path: format!("metadata.annotations['{INDEX_KEY}']"),
                            }),
                            ..Default::default()
                        }),
                    };
                    let containers = spec
                        .containers
                        .iter_mut()
                        .chain(spec.init_containers.iter_mut().flatten());
                    for c in containers {
                        let vars = c.env.get_or_insert_with(Vec::new);
                        if !vars.iter().any(|v| v.name == env.name) {
                            vars.push(env.clone());
                        }
                    }
                }
            }
            pod
        };
        let pp = PostParams::default();
        let mut created = HashSet::new();
        let mut failure = None;
        let mut batch = 1;
        let mut rest = indexes;
        // Slow start: a batch doubles only when the one before it fully succeeded.
        while !rest.is_empty() && failure.is_none() {
            let (now, later) = rest.split_at(batch.min(rest.len()));
            rest = later;
            let pods: Vec<Pod> = now.iter().map(|i| make(*i)).collect();
            let results =
                futures_util::future::join_all(pods.iter().map(|p| api.create(&pp, p))).await;
            for r in results {
                match r {
                    Ok(p) => {
                        let pname = p.metadata.name.clone().unwrap_or_default();
                        self.event(
                            job,
                            "Normal",
                            "SuccessfulCreate",
                            &format!("Created pod: {pname}"),
                        )
                        .await;
                        created.insert(pname);
                    }
                    Err(e) => failure = Some(e),
                }
            }
            batch *= 2;
        }
        self.expect(key, created, HashSet::new());
        if let Some(err) = failure {
            self.event(
                job,
                "Warning",
                "FailedCreate",
                &format!("Error creating: {err}"),
            )
            .await;
            return Err(err);
        }
        Ok(())
    }
}

/// What `manage` needs to know of the Job.
struct Plan<'a> {
    name: &'a str,
    indexed: bool,
    completions: Option<i32>,
    parallelism: i32,
    succeeded: i32,
    completed: &'a BTreeSet<i32>,
    failed_indexes: &'a BTreeSet<i32>,
    wait_for_terminal: bool,
}

/// With `restartPolicy: OnFailure` failed containers restart in place and pods never
/// fail: the restarts of the active pods count against `backoffLimit` (upstream's
/// `pastBackoffLimitOnFailure`).
fn past_backoff_on_failure(spec: &k8s_openapi::api::batch::v1::JobSpec, active: &[&Pod]) -> bool {
    let on_failure = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure");
    if !on_failure {
        return false;
    }
    let restarts: i64 = active
        .iter()
        .filter(|p| matches!(pods::phase(p), "Running" | "Pending"))
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        })
        .map(|c| i64::from(c.restart_count))
        .sum();
    match spec.backoff_limit.unwrap_or(6) {
        0 => restarts > 0,
        limit => restarts >= i64::from(limit),
    }
}

/// The failures of an Indexed Job pod's index before this pod.
fn index_failures(pod: &Pod) -> i32 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INDEX_FAILURES))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(phase: &str, deleted: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "deletionTimestamp": deleted},
            "status": {"phase": phase},
        }))
        .expect("pod")
    }

    #[test]
    fn restarts_in_place_count_against_the_backoff_limit_with_on_failure() {
        let spec = |policy: &str, limit: i32| -> k8s_openapi::api::batch::v1::JobSpec {
            serde_json::from_value(json!({"backoffLimit": limit,
                "template": {"spec": {"restartPolicy": policy, "containers": []}}}))
            .expect("spec")
        };
        let restarting: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "status": {"phase": "Running", "containerStatuses": [{"name": "c", "image": "x",
                "imageID": "", "ready": false, "restartCount": 2}]},
        }))
        .expect("pod");
        let active = [&restarting];
        assert!(past_backoff_on_failure(&spec("OnFailure", 2), &active));
        assert!(!past_backoff_on_failure(&spec("OnFailure", 3), &active));
        assert!(past_backoff_on_failure(&spec("OnFailure", 0), &active));
        assert!(!past_backoff_on_failure(&spec("Never", 1), &active));
    }

    #[test]
    fn deleted_pods_end_at_once_or_after_their_grace_period() {
        let now: jiff::Timestamp = "2026-01-01T00:00:10Z".parse().expect("time");
        assert_eq!(
            ended(&pod("Succeeded", None), false, now),
            Some(End::Succeeded)
        );
        assert_eq!(ended(&pod("Failed", None), true, now), Some(End::Failed));
        assert_eq!(ended(&pod("Running", None), false, now), None);
        let soon = Some("2026-01-01T00:00:20Z");
        assert_eq!(ended(&pod("Running", soon), false, now), Some(End::Failed));
        assert_eq!(ended(&pod("Running", soon), true, now), None);
        let past = Some("2026-01-01T00:00:05Z");
        assert_eq!(ended(&pod("Running", past), true, now), Some(End::Failed));
    }
}

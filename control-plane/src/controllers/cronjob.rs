//! The CronJob controller (kube-controller-manager's `cronjob_controllerv2.go` and
//! `utils.go`): at each time of `spec.schedule` (in `spec.timeZone`, else this
//! process's zone) it creates a Job named `<cronjob>-<scheduled minutes since the
//! epoch>` from `spec.jobTemplate`, honouring `suspend`, `startingDeadlineSeconds`
//! (and the "more than 100 missed start times" rule), and `concurrencyPolicy`
//! (Allow, Forbid: skip while a job is active, Replace: delete the active jobs first).
//! It keeps `status.active`, `lastScheduleTime` and `lastSuccessfulTime`, and deletes
//! the oldest finished jobs beyond `successfulJobsHistoryLimit`/`failedJobsHistoryLimit`.
//! Each sync requeues the CronJob at its next schedule time. [`start`] runs it; the
//! scheduling decisions are the pure [`plan`] and [`most_recent_schedule_time`], which
//! take `now` from the controller's injectable [`Clock`].

pub mod schedule;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams, PropagationPolicy};
use kube::runtime::reflector::{ObjectRef, Store};

use super::pods;
use super::queue::{Queue, key_of, split_key};
use crate::client::{Informers, Involved, record_event};
use schedule::Schedule;

const COMPONENT: &str = "cronjob-controller";
/// The annotation with the time a job was scheduled for (RFC 3339, in the CronJob's
/// zone, UTC without one).
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// Requeues land this long after the schedule time, against clock skew (upstream's
/// nextScheduleDelta).
const NEXT_SCHEDULE_DELTA: Duration = Duration::from_millis(100);

/// Where the controller reads the time: `Timestamp::now` in production, a fixed or
/// stepped clock in tests.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// How many start times were missed since the last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    None,
    Few,
    /// More than 100: a `TooManyMissedTimes` warning.
    Many,
}

/// What [`most_recent_schedule_time`] finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recent {
    /// `lastScheduleTime`, else the creation time (moved up to `now -
    /// startingDeadlineSeconds` when asked to).
    pub earliest: Timestamp,
    /// The latest schedule time not after `now`, if any is after `earliest`.
    pub most_recent: Option<Timestamp>,
    pub missed: Missed,
}

fn ts(t: &Option<Time>) -> Option<Timestamp> {
    t.as_ref().map(|t| t.0)
}

/// Upstream's `mostRecentScheduleTime`: the number of missed times is estimated from
/// the interval between the first two times after `earliest`, then the most recent one
/// is found by stepping from just before it.
pub fn most_recent_schedule_time(
    cj: &CronJob,
    now: Timestamp,
    sched: &Schedule,
    zone: &TimeZone,
    include_deadline: bool,
) -> Result<Recent, String> {
    let mut earliest = ts(&cj.metadata.creation_timestamp).unwrap_or(Timestamp::UNIX_EPOCH);
    if let Some(last) = cj.status.as_ref().and_then(|s| ts(&s.last_schedule_time)) {
        earliest = last;
    }
    if include_deadline && let Some(deadline) = cj.spec.starting_deadline_seconds {
        let limit = now - jiff::SignedDuration::from_secs(deadline);
        if limit > earliest {
            earliest = limit;
        }
    }
    let none = |missed| Recent {
        earliest,
        most_recent: None,
        missed,
    };
    let bad = || "time difference between two schedules is less than 1 second".to_owned();
    let Some(t1) = sched.next(earliest, zone) else {
        return Err(bad());
    };
    if now < t1 {
        return Ok(none(Missed::None));
    }
    let Some(t2) = sched.next(t1, zone) else {
        return Err(bad());
    };
    if now < t2 {
        return Ok(Recent {
            earliest,
            most_recent: Some(t1),
            missed: Missed::None,
        });
    }
    let between = t2.duration_since(t1).as_secs_f64().round() as i64;
    if between < 1 {
        return Err(bad());
    }
    let elapsed = now.duration_since(t1).as_secs();
    let missed_count = elapsed / between + 1;
    let potential_earliest =
        t1 + jiff::SignedDuration::from_secs((missed_count - 2).saturating_mul(between));
    let mut most_recent = None;
    let mut t = sched.next(potential_earliest, zone);
    while let Some(at) = t
        && at <= now
    {
        most_recent = Some(at);
        t = sched.next(at, zone);
    }
    let missed = if missed_count > 100 {
        Missed::Many
    } else if missed_count > 0 {
        Missed::Few
    } else {
        Missed::None
    };
    Ok(Recent {
        earliest,
        most_recent,
        missed,
    })
}

/// Upstream's `nextScheduleTimeDuration`: how long until the next schedule time (plus
/// [`NEXT_SCHEDULE_DELTA`]); `None` when the schedule has no next time.
pub fn next_schedule_time_duration(
    cj: &CronJob,
    now: Timestamp,
    sched: &Schedule,
    zone: &TimeZone,
) -> Option<Duration> {
    let from = match most_recent_schedule_time(cj, now, sched, zone, false) {
        Err(_) => now,
        Ok(Recent {
            most_recent: Some(t),
            ..
        }) => t,
        Ok(Recent {
            earliest,
            missed: Missed::None,
            ..
        }) => earliest,
        Ok(_) => now,
    };
    let next = sched.next(from, zone)?;
    let wait = Duration::try_from(next.duration_since(now)).unwrap_or(Duration::ZERO);
    Some(wait + NEXT_SCHEDULE_DELTA)
}

/// An Event to record on the CronJob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

fn note(warning: bool, reason: &'static str, message: String) -> Note {
    Note {
        warning,
        reason,
        message,
    }
}

/// What a sync does once the active list is up to date.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Nothing until the CronJob changes (deleting, suspended, bad schedule or zone).
    Stop,
    /// No job now; look again after this long.
    Wait(Option<Duration>),
    /// Create the job for `scheduled` (deleting the active jobs first when `replace`).
    Start {
        scheduled: Timestamp,
        replace: bool,
        schedule: Box<Schedule>,
        zone: TimeZone,
    },
}

/// The zone the schedule is read in and whether `spec.timeZone` names a known zone.
fn zone_of(cj: &CronJob, local: &TimeZone) -> Result<TimeZone, String> {
    match cj.spec.time_zone.as_deref() {
        Some(name) => TimeZone::get(name).map_err(|_| format!("unknown time zone {name}")),
        None => Ok(local.clone()),
    }
}

/// Upstream's scheduling decision in `syncCronJob`, after the active list has been
/// reconciled: suspended, time zone, schedule, missed times and deadline, a time
/// already processed, and the concurrency policy.
pub fn plan(cj: &CronJob, now: Timestamp, local: &TimeZone) -> (Decision, Vec<Note>) {
    let mut notes = Vec::new();
    if cj.metadata.deletion_timestamp.is_some() {
        return (Decision::Stop, notes);
    }
    let spec = cj.spec.clone();
    let zone = match zone_of(cj, local) {
        Ok(z) => z,
        Err(e) => {
            let tz = spec.time_zone.unwrap_or_default();
            notes.push(note(
                true,
                "UnknownTimeZone",
                format!("invalid timeZone: \"{tz}\": {e}"),
            ));
            return (Decision::Stop, notes);
        }
    };
    if spec.suspend == Some(true) {
        return (Decision::Stop, notes);
    }
    if spec.schedule.contains("TZ") {
        notes.push(note(true, "UnsupportedSchedule", format!(
            "CRON_TZ or TZ used in schedule \"{}\" is not officially supported, see https://kubernetes.io/docs/concepts/workloads/controllers/cron-jobs/ for more details",
            spec.schedule
        )));
    }
    let sched = match schedule::parse(&spec.schedule) {
        Ok(s) => s,
        Err(e) => {
            notes.push(note(
                true,
                "UnparseableSchedule",
                format!("unparseable schedule: \"{}\" : {e}", spec.schedule),
            ));
            return (Decision::Stop, notes);
        }
    };
    let wait = || Decision::Wait(next_schedule_time_duration(cj, now, &sched, &zone));
    let recent = match most_recent_schedule_time(cj, now, &sched, &zone, true) {
        Ok(r) => r,
        Err(e) => {
            notes.push(note(
                true,
                "InvalidSchedule",
                format!("invalid schedule: {} : {e}", spec.schedule),
            ));
            return (Decision::Stop, notes);
        }
    };
    let Some(scheduled) = recent.most_recent.filter(|t| *t <= now) else {
        return (wait(), notes);
    };
    if recent.missed == Missed::Many {
        notes.push(note(
            true,
            "TooManyMissedTimes",
            "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into(),
        ));
    }
    if let Some(deadline) = spec.starting_deadline_seconds
        && scheduled + jiff::SignedDuration::from_secs(deadline) < now
    {
        notes.push(note(
            true,
            "MissSchedule",
            format!(
                "Missed scheduled time to start a job: {}",
                scheduled.strftime("%a, %d %b %Y %H:%M:%S %z")
            ),
        ));
        return (wait(), notes);
    }
    let status = cj.status.clone().unwrap_or_default();
    let active = status.active.unwrap_or_default();
    let name = job_name(cj, scheduled);
    let ns = cj.metadata.namespace.as_deref();
    let processed = active
        .iter()
        .any(|r| r.name.as_deref() == Some(&name) && r.namespace.as_deref() == ns)
        || ts(&status.last_schedule_time) == Some(scheduled);
    if processed {
        return (wait(), notes);
    }
    let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
    if policy == "Forbid" && !active.is_empty() {
        notes.push(note(
            false,
            "JobAlreadyActive",
            "Not starting job because prior execution is running and concurrency policy is Forbid"
                .into(),
        ));
        return (wait(), notes);
    }
    (
        Decision::Start {
            scheduled,
            replace: policy == "Replace",
            schedule: Box::new(sched),
            zone,
        },
        notes,
    )
}

/// `<cronjob>-<scheduled time in minutes since the epoch>`: one name per scheduled
/// time, so a job is never created twice for it.
pub fn job_name(cj: &CronJob, scheduled: Timestamp) -> String {
    format!(
        "{}-{}",
        cj.metadata.name.as_deref().unwrap_or_default(),
        scheduled.as_second().div_euclid(60)
    )
}

/// Go's RFC 3339 (`Z` for UTC, else `+hh:mm`).
fn rfc3339(t: Timestamp, zone: &TimeZone) -> String {
    let z = t.to_zoned(zone.clone());
    if z.offset().seconds() == 0 {
        z.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
    }
}

/// The Job for `scheduled` (upstream's `getJobFromTemplate2`).
pub fn job_from_template(cj: &CronJob, scheduled: Timestamp) -> Job {
    let spec = cj.spec.clone();
    let template = spec.job_template;
    let meta = template.metadata.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    let zone = spec
        .time_zone
        .as_deref()
        .and_then(|tz| TimeZone::get(tz).ok())
        .unwrap_or(TimeZone::UTC);
    annotations.insert(SCHEDULED_TIMESTAMP.into(), rfc3339(scheduled, &zone));
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(cj, scheduled)),
            namespace: cj.metadata.namespace.clone(),
            labels: meta.labels.filter(|l| !l.is_empty()),
            annotations: Some(annotations),
            owner_references: Some(vec![pods::owner_ref("batch/v1", "CronJob", &cj.metadata)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// `Complete` or `Failed`, when the job has that condition with status True.
pub fn finished(job: &Job) -> Option<&str> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| c.type_.as_str())
}

/// The finished jobs to delete to keep `limit`: the oldest by `status.startTime`
/// (jobs without one last), ties broken by name.
pub fn to_prune<'a>(jobs: &[&'a Job], limit: i32) -> Vec<&'a Job> {
    let keep = usize::try_from(limit.max(0)).unwrap_or(0);
    if jobs.len() <= keep {
        return Vec::new();
    }
    let mut sorted = jobs.to_vec();
    sorted.sort_by(|a, b| {
        let start = |j: &Job| j.status.as_ref().and_then(|s| ts(&s.start_time));
        match (start(a), start(b)) {
            (Some(x), Some(y)) if x != y => x.cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            _ => a.metadata.name.cmp(&b.metadata.name),
        }
    });
    sorted.truncate(jobs.len() - keep);
    sorted
}

fn uid(meta: &ObjectMeta) -> String {
    meta.uid.clone().unwrap_or_default()
}

fn active_mut(cj: &mut CronJob) -> &mut Vec<ObjectReference> {
    cj.status
        .get_or_insert_with(Default::default)
        .active
        .get_or_insert_with(Vec::new)
}

fn in_active(cj: &CronJob, uid: &str) -> bool {
    cj.status
        .as_ref()
        .and_then(|s| s.active.as_ref())
        .is_some_and(|a| a.iter().any(|r| r.uid.as_deref() == Some(uid)))
}

fn remove_active(cj: &mut CronJob, uid: &str) {
    active_mut(cj).retain(|r| r.uid.as_deref() != Some(uid));
}

fn job_ref(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..Default::default()
    }
}

struct Controller {
    client: Client,
    cronjobs: Store<CronJob>,
    jobs: Store<Job>,
    now: Clock,
    local: TimeZone,
}

/// Runs the controller with the real clock and this process's time zone.
pub fn start(
    client: Client,
    informers: &mut Informers,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    start_with(
        client,
        informers,
        Arc::new(Timestamp::now),
        TimeZone::system(),
    )
}

/// Runs the controller reading the time from `now`, with schedules lacking a
/// `timeZone` read in `local`.
pub fn start_with(
    client: Client,
    informers: &mut Informers,
    now: Clock,
    local: TimeZone,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let queue = Queue::new();
    let cronjobs = informers.add(Api::<CronJob>::all(client.clone()), {
        let q = queue.clone();
        move |cj: &CronJob| q.add(key_of(&cj.metadata))
    });
    let jobs = informers.add(Api::<Job>::all(client.clone()), {
        let q = queue.clone();
        move |job: &Job| {
            if let Some(r) = pods::controller_ref(&job.metadata)
                && r.kind == "CronJob"
                && let Some(ns) = &job.metadata.namespace
            {
                q.add(format!("{ns}/{}", r.name));
            }
        }
    });
    async move {
        let _ = cronjobs.wait_until_ready().await;
        let _ = jobs.wait_until_ready().await;
        let ctl = Arc::new(Controller {
            client,
            cronjobs,
            jobs,
            now,
            local,
        });
        queue
            .work("cronjob", move |key| {
                let ctl = ctl.clone();
                async move { ctl.sync(&key).await }
            })
            .await;
    }
}

fn gone(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl Controller {
    async fn event(&self, cj: &CronJob, n: &Note) {
        let kind = if n.warning { "Warning" } else { "Normal" };
        record_event(
            &self.client,
            COMPONENT,
            &Involved::of(cj),
            kind,
            n.reason,
            &n.message,
        )
        .await;
    }

    async fn sync(&self, key: &str) -> Result<Option<Duration>, kube::Error> {
        let (Some(ns), name) = split_key(key) else {
            return Ok(None);
        };
        let Some(cached) = self.cronjobs.get(&ObjectRef::new(name).within(ns)) else {
            return Ok(None);
        };
        let mut cj = (*cached).clone();
        let jobs: Vec<Arc<Job>> = self
            .jobs
            .state()
            .into_iter()
            .filter(|j| {
                j.metadata.namespace.as_deref() == Some(ns)
                    && pods::controller_ref(&j.metadata)
                        .is_some_and(|r| r.kind == "CronJob" && r.name == name)
            })
            .collect();
        let mut update = self.cleanup_finished_jobs(&mut cj, &jobs).await;
        let result = self.sync_cronjob(&mut cj, &jobs, &mut update).await;
        if update {
            if let Some(status) = cj.status.as_mut()
                && status.active.as_ref().is_some_and(Vec::is_empty)
            {
                status.active = None;
            }
            Api::<CronJob>::namespaced(self.client.clone(), ns)
                .replace_status(name, &PostParams::default(), &cj)
                .await?;
        }
        result
    }

    /// Upstream's `syncCronJob`: reconcile the active list with the jobs, then act on
    /// [`plan`].
    async fn sync_cronjob(
        &self,
        cj: &mut CronJob,
        jobs: &[Arc<Job>],
        update: &mut bool,
    ) -> Result<Option<Duration>, kube::Error> {
        let now = (self.now)();
        let ns = cj.metadata.namespace.clone().unwrap_or_default();
        let name = cj.metadata.name.clone().unwrap_or_default();
        let cj_api: Api<CronJob> = Api::namespaced(self.client.clone(), &ns);
        let job_api: Api<Job> = Api::namespaced(self.client.clone(), &ns);
        let mut children = HashSet::new();
        for j in jobs {
            let juid = uid(&j.metadata);
            children.insert(juid.clone());
            let found = in_active(cj, &juid);
            let jname = j.metadata.name.clone().unwrap_or_default();
            match finished(j) {
                None if !found => {
                    // Perhaps only our cache is behind: ask for the CronJob itself.
                    let fresh = cj_api.get(&name).await?;
                    if in_active(&fresh, &juid) {
                        *cj = fresh;
                        continue;
                    }
                    let n = note(
                        true,
                        "UnexpectedJob",
                        format!("Saw a job that the controller did not create or forgot: {jname}"),
                    );
                    self.event(cj, &n).await;
                }
                None => {}
                Some(condition) => {
                    if found {
                        remove_active(cj, &juid);
                        let n = note(
                            false,
                            "SawCompletedJob",
                            format!("Saw completed job: {jname}, condition: {condition}"),
                        );
                        self.event(cj, &n).await;
                        *update = true;
                    }
                    if condition == "Complete" {
                        let done = j.status.as_ref().and_then(|s| s.completion_time.clone());
                        let status = cj.status.get_or_insert_with(Default::default);
                        match (&status.last_successful_time, &done) {
                            (None, _) => {
                                status.last_successful_time = done;
                                *update = true;
                            }
                            (Some(last), Some(d)) if d.0 > last.0 => {
                                status.last_successful_time = done;
                                *update = true;
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        // Active jobs that no longer exist (asked of the apiserver, not the cache).
        let active = cj
            .status
            .as_ref()
            .and_then(|s| s.active.clone())
            .unwrap_or_default();
        for r in active {
            let ruid = r.uid.clone().unwrap_or_default();
            if children.contains(&ruid) {
                continue;
            }
            let rname = r.name.clone().unwrap_or_default();
            let rns = r.namespace.clone().unwrap_or_else(|| ns.clone());
            match Api::<Job>::namespaced(self.client.clone(), &rns)
                .get(&rname)
                .await
            {
                Err(e) if gone(&e) => {
                    let n = note(
                        false,
                        "MissingJob",
                        format!("Active job went missing: {rname}"),
                    );
                    self.event(cj, &n).await;
                    remove_active(cj, &ruid);
                    *update = true;
                }
                Err(e) => return Err(e),
                Ok(_) => {}
            }
        }

        let (decision, notes) = plan(cj, now, &self.local);
        for n in &notes {
            self.event(cj, n).await;
        }
        let Decision::Start {
            scheduled,
            replace,
            schedule,
            zone,
        } = decision
        else {
            return Ok(match decision {
                Decision::Wait(d) => d,
                _ => None,
            });
        };
        if replace {
            let active = cj
                .status
                .as_ref()
                .and_then(|s| s.active.clone())
                .unwrap_or_default();
            for r in active {
                let rname = r.name.clone().unwrap_or_default();
                let job = match job_api.get(&rname).await {
                    Ok(j) => j,
                    Err(e) => {
                        let n = note(true, "FailedGet", format!("Get job: {e}"));
                        self.event(cj, &n).await;
                        return Err(e);
                    }
                };
                self.delete_job(cj, &job).await?;
                *update = true;
            }
        }
        let request = job_from_template(cj, scheduled);
        let jname = request.metadata.name.clone().unwrap_or_default();
        let created = match job_api.create(&PostParams::default(), &request).await {
            Ok(job) => {
                let n = note(false, "SuccessfulCreate", format!("Created job {jname}"));
                self.event(cj, &n).await;
                job
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Made by an earlier sync whose status update was lost, or by someone else.
                let job = job_api.get(&jname).await?;
                let ours = pods::controller_ref(&job.metadata)
                    .is_some_and(|r| Some(&r.uid) == cj.metadata.uid.as_ref());
                if !ours || in_active(cj, &uid(&job.metadata)) {
                    return Ok(None);
                }
                job
            }
            Err(kube::Error::Api(s)) if s.message.contains("is being terminated") => {
                return Err(kube::Error::Api(s));
            }
            Err(e) => {
                let n = note(true, "FailedCreate", format!("Error creating job: {e}"));
                self.event(cj, &n).await;
                return Err(e);
            }
        };
        active_mut(cj).push(job_ref(&created));
        cj.status
            .get_or_insert_with(Default::default)
            .last_schedule_time = Some(Time(scheduled));
        *update = true;
        Ok(next_schedule_time_duration(cj, now, &schedule, &zone))
    }

    /// Deletes the oldest finished jobs beyond the history limits.
    async fn cleanup_finished_jobs(&self, cj: &mut CronJob, jobs: &[Arc<Job>]) -> bool {
        let spec = cj.spec.clone();
        let mut update = false;
        for (condition, limit) in [
            ("Complete", spec.successful_jobs_history_limit),
            ("Failed", spec.failed_jobs_history_limit),
        ] {
            let Some(limit) = limit else { continue };
            let matching: Vec<&Job> = jobs
                .iter()
                .map(|j| &**j)
                .filter(|j| finished(j) == Some(condition))
                .collect();
            for job in to_prune(&matching, limit) {
                if self.delete_job(cj, job).await.is_ok() {
                    update = true;
                }
            }
        }
        update
    }

    /// Deletes `job` (its pods follow in the background) and drops it from the active
    /// list.
    async fn delete_job(&self, cj: &mut CronJob, job: &Job) -> Result<(), kube::Error> {
        let ns = job.metadata.namespace.clone().unwrap_or_default();
        let jname = job.metadata.name.clone().unwrap_or_default();
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        match Api::<Job>::namespaced(self.client.clone(), &ns)
            .delete(&jname, &dp)
            .await
        {
            Ok(_) => {}
            // Already gone: a stale cache, nothing to report.
            Err(e) if gone(&e) => {
                remove_active(cj, &uid(&job.metadata));
                return Ok(());
            }
            Err(e) => {
                let n = note(true, "FailedDelete", format!("Deleted job: {e}"));
                self.event(cj, &n).await;
                return Err(e);
            }
        }
        remove_active(cj, &uid(&job.metadata));
        let n = note(false, "SuccessfulDelete", format!("Deleted job {jname}"));
        self.event(cj, &n).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests;

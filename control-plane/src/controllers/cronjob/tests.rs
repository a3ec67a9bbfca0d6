//! The CronJob controller's decisions with an injected clock: next times, missed and
//! too many missed times, deadlines, concurrency policies, job names and templates,
//! and which finished jobs the history limits delete.

use super::*;
use serde_json::{Value, json};

fn t(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

fn cronjob(schedule: &str, created: &str, spec: Value, status: Value) -> CronJob {
    let mut s = json!({"schedule": schedule, "concurrencyPolicy": "Allow",
        "jobTemplate": {"metadata": {"labels": {"app": "x"}, "annotations": {"a": "b"}},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}],
                "restartPolicy": "Never"}}}}});
    if let (Some(s), Some(extra)) = (s.as_object_mut(), spec.as_object()) {
        s.extend(extra.clone());
    }
    serde_json::from_value(json!({
        "metadata": {"name": "cj", "namespace": "default", "uid": "u1",
            "creationTimestamp": created},
        "spec": s,
        "status": status,
    }))
    .expect("cronjob")
}

fn parse(s: &str) -> Schedule {
    schedule::parse(s).expect("schedule")
}

#[test]
fn most_recent_time_and_missed_counts() {
    let sched = parse("*/1 * * * *");
    let utc = TimeZone::UTC;
    let cj = cronjob("*/1 * * * *", "2024-01-01T00:00:10Z", json!({}), json!({}));
    // Before the first time: nothing.
    let r =
        most_recent_schedule_time(&cj, t("2024-01-01T00:00:50Z"), &sched, &utc, true).expect("ok");
    assert_eq!((r.most_recent, r.missed), (None, Missed::None));
    // Just after it: that time, none missed.
    let r =
        most_recent_schedule_time(&cj, t("2024-01-01T00:01:05Z"), &sched, &utc, true).expect("ok");
    assert_eq!(
        (r.most_recent, r.missed),
        (Some(t("2024-01-01T00:01:00Z")), Missed::None)
    );
    // Ten minutes on: the latest of them, a few missed.
    let r =
        most_recent_schedule_time(&cj, t("2024-01-01T00:10:30Z"), &sched, &utc, true).expect("ok");
    assert_eq!(
        (r.most_recent, r.missed),
        (Some(t("2024-01-01T00:10:00Z")), Missed::Few)
    );
    // Two hours on: more than 100.
    let r =
        most_recent_schedule_time(&cj, t("2024-01-01T02:00:30Z"), &sched, &utc, true).expect("ok");
    assert_eq!(
        (r.most_recent, r.missed),
        (Some(t("2024-01-01T02:00:00Z")), Missed::Many)
    );
    // lastScheduleTime wins over the creation time.
    let cj = cronjob(
        "*/1 * * * *",
        "2024-01-01T00:00:10Z",
        json!({}),
        json!({"lastScheduleTime": "2024-01-01T01:59:00Z"}),
    );
    let r =
        most_recent_schedule_time(&cj, t("2024-01-01T02:00:30Z"), &sched, &utc, true).expect("ok");
    assert_eq!(
        (r.most_recent, r.missed),
        (Some(t("2024-01-01T02:00:00Z")), Missed::None)
    );
    // A deadline bounds the look back: 200 s is at most four missed minutes.
    let cj = cronjob(
        "*/1 * * * *",
        "2024-01-01T00:00:10Z",
        json!({"startingDeadlineSeconds": 200}),
        json!({}),
    );
    let r =
        most_recent_schedule_time(&cj, t("2024-01-01T02:00:30Z"), &sched, &utc, true).expect("ok");
    assert_eq!(r.missed, Missed::Few);
    assert_eq!(r.earliest, t("2024-01-01T01:57:10Z"));
    // An impossible date is an error, not a loop.
    let sched = parse("0 0 31 2 *");
    assert!(most_recent_schedule_time(&cj, t("2024-06-01T00:00:00Z"), &sched, &utc, true).is_err());
}

#[test]
fn irregular_schedules_are_estimated_as_upstream_does() {
    // 06:30, 10:30, 14:30 on weekdays; 2024-01-05 is a Friday.
    let sched = parse("30 6-16/4 * * 1-5");
    let cj = cronjob("", "2024-01-01T00:00:00Z", json!({}), json!({}));
    let utc = TimeZone::UTC;
    let r =
        most_recent_schedule_time(&cj, t("2024-01-05T15:00:00Z"), &sched, &utc, true).expect("ok");
    assert_eq!(r.most_recent, Some(t("2024-01-05T14:30:00Z")));
    // Over the weekend the interval estimate (4 h) overshoots to Monday, so upstream
    // finds no recent time and waits for the next one; so does berth.
    let r =
        most_recent_schedule_time(&cj, t("2024-01-07T12:00:00Z"), &sched, &utc, true).expect("ok");
    assert_eq!((r.most_recent, r.missed), (None, Missed::Few));
}

#[test]
fn requeue_lands_just_after_the_next_time() {
    let sched = parse("*/5 * * * *");
    let cj = cronjob(
        "*/5 * * * *",
        "2024-01-01T00:00:00Z",
        json!({}),
        json!({"lastScheduleTime": "2024-01-01T00:05:00Z"}),
    );
    let d = next_schedule_time_duration(&cj, t("2024-01-01T00:06:00Z"), &sched, &TimeZone::UTC);
    assert_eq!(d, Some(Duration::from_secs(240) + NEXT_SCHEDULE_DELTA));
}

fn start_time(d: &Decision) -> Option<(Timestamp, bool)> {
    match d {
        Decision::Start {
            scheduled, replace, ..
        } => Some((*scheduled, *replace)),
        _ => None,
    }
}

fn reasons(notes: &[Note]) -> Vec<&str> {
    notes.iter().map(|n| n.reason).collect()
}

#[test]
fn plan_starts_once_per_time() {
    let utc = TimeZone::UTC;
    let cj = cronjob("*/1 * * * *", "2024-01-01T00:00:10Z", json!({}), json!({}));
    let (d, notes) = plan(&cj, t("2024-01-01T00:01:00.2Z"), &utc);
    assert_eq!(start_time(&d), Some((t("2024-01-01T00:01:00Z"), false)));
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(job_name(&cj, t("2024-01-01T00:01:00Z")), "cj-28401121");
    // Once lastScheduleTime says so, the same time is not started again.
    let done = cronjob(
        "*/1 * * * *",
        "2024-01-01T00:00:10Z",
        json!({}),
        json!({"lastScheduleTime": "2024-01-01T00:01:00Z"}),
    );
    let (d, _) = plan(&done, t("2024-01-01T00:01:30Z"), &utc);
    assert!(
        matches!(d, Decision::Wait(Some(w)) if w > Duration::from_secs(29) && w < Duration::from_secs(31)),
        "{d:?}"
    );
    // Nor when the active list already holds its job.
    let active = cronjob(
        "*/1 * * * *",
        "2024-01-01T00:00:10Z",
        json!({}),
        json!({"active": [{"name": "cj-28401121", "namespace": "default", "uid": "j1"}]}),
    );
    let (d, _) = plan(&active, t("2024-01-01T00:01:30Z"), &utc);
    assert!(matches!(d, Decision::Wait(_)), "{d:?}");
}

#[test]
fn plan_honours_suspend_deadline_and_too_many_missed() {
    let utc = TimeZone::UTC;
    let suspended = cronjob(
        "*/1 * * * *",
        "2024-01-01T00:00:00Z",
        json!({"suspend": true}),
        json!({}),
    );
    assert!(matches!(
        plan(&suspended, t("2024-01-01T00:05:00Z"), &utc).0,
        Decision::Stop
    ));
    // Ten seconds late with a five-second deadline: skipped (the deadline already
    // bounds the look back, so no time is found), and requeued for the next hour.
    let late = cronjob(
        "0 * * * *",
        "2024-01-01T00:00:00Z",
        json!({"startingDeadlineSeconds": 5}),
        json!({"lastScheduleTime": "2024-01-01T00:00:00Z"}),
    );
    let (d, notes) = plan(&late, t("2024-01-01T01:00:10Z"), &utc);
    assert!(
        matches!(d, Decision::Wait(Some(w)) if w > Duration::from_secs(3589)),
        "{d:?}"
    );
    assert!(notes.is_empty(), "{notes:?}");
    // Three seconds late: still started.
    let (d, _) = plan(&late, t("2024-01-01T01:00:03Z"), &utc);
    assert_eq!(start_time(&d), Some((t("2024-01-01T01:00:00Z"), false)));
    // A day of minutes missed: a warning, and the latest one is started.
    let behind = cronjob("*/1 * * * *", "2024-01-01T00:00:00Z", json!({}), json!({}));
    let (d, notes) = plan(&behind, t("2024-01-02T00:00:30Z"), &utc);
    assert_eq!(reasons(&notes), ["TooManyMissedTimes"]);
    assert_eq!(start_time(&d), Some((t("2024-01-02T00:00:00Z"), false)));
    // A bad schedule or zone stops with a warning.
    let bad = cronjob("61 * * * *", "2024-01-01T00:00:00Z", json!({}), json!({}));
    assert_eq!(
        reasons(&plan(&bad, t("2024-01-02T00:00:00Z"), &utc).1),
        ["UnparseableSchedule"]
    );
    let zone = cronjob(
        "* * * * *",
        "2024-01-01T00:00:00Z",
        json!({"timeZone": "Mars/Olympus"}),
        json!({}),
    );
    let (d, notes) = plan(&zone, t("2024-01-02T00:00:00Z"), &utc);
    assert!(matches!(d, Decision::Stop));
    assert_eq!(
        notes[0].message,
        "invalid timeZone: \"Mars/Olympus\": unknown time zone Mars/Olympus"
    );
}

#[test]
fn concurrency_policies() {
    let utc = TimeZone::UTC;
    let now = t("2024-01-01T00:02:00Z");
    let status = json!({"lastScheduleTime": "2024-01-01T00:01:00Z",
        "active": [{"name": "cj-28401121", "namespace": "default", "uid": "j1"}]});
    let forbid = cronjob(
        "*/1 * * * *",
        "2024-01-01T00:00:00Z",
        json!({"concurrencyPolicy": "Forbid"}),
        status.clone(),
    );
    let (d, notes) = plan(&forbid, now, &utc);
    assert!(matches!(d, Decision::Wait(Some(_))), "{d:?}");
    assert_eq!(reasons(&notes), ["JobAlreadyActive"]);
    // Once the active job is gone, Forbid starts the next one.
    let idle = cronjob(
        "*/1 * * * *",
        "2024-01-01T00:00:00Z",
        json!({"concurrencyPolicy": "Forbid"}),
        json!({"lastScheduleTime": "2024-01-01T00:01:00Z"}),
    );
    assert_eq!(start_time(&plan(&idle, now, &utc).0), Some((now, false)));
    let replace = cronjob(
        "*/1 * * * *",
        "2024-01-01T00:00:00Z",
        json!({"concurrencyPolicy": "Replace"}),
        status.clone(),
    );
    assert_eq!(start_time(&plan(&replace, now, &utc).0), Some((now, true)));
    let allow = cronjob("*/1 * * * *", "2024-01-01T00:00:00Z", json!({}), status);
    assert_eq!(start_time(&plan(&allow, now, &utc).0), Some((now, false)));
}

#[test]
fn time_zones_move_the_schedule_and_the_annotation() {
    // 03:00 in Tokyo is 18:00 UTC the day before.
    let cj = cronjob(
        "0 3 * * *",
        "2024-01-01T00:00:00Z",
        json!({"timeZone": "Asia/Tokyo"}),
        json!({}),
    );
    let (d, _) = plan(&cj, t("2024-01-01T18:00:01Z"), &TimeZone::UTC);
    let (at, _) = start_time(&d).expect("starts");
    assert_eq!(at, t("2024-01-01T18:00:00Z"));
    let job = job_from_template(&cj, at);
    let annotations = job.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations.get(SCHEDULED_TIMESTAMP).map(String::as_str),
        Some("2024-01-02T03:00:00+09:00")
    );
    assert_eq!(annotations.get("a").map(String::as_str), Some("b"));
    let owner = &job.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("CronJob", "u1", Some(true))
    );
    assert_eq!(
        job.metadata
            .labels
            .unwrap_or_default()
            .get("app")
            .map(String::as_str),
        Some("x")
    );
    // Without a zone the annotation is in UTC.
    let utc = cronjob("0 3 * * *", "2024-01-01T00:00:00Z", json!({}), json!({}));
    let job = job_from_template(&utc, t("2024-01-02T03:00:00Z"));
    assert_eq!(
        job.metadata.annotations.unwrap_or_default()[SCHEDULED_TIMESTAMP],
        "2024-01-02T03:00:00Z"
    );
}

fn job(name: &str, started: Option<&str>, condition: &str) -> Job {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "status": {"startTime": started,
            "conditions": [{"type": condition, "status": "True"}]},
    }))
    .expect("job")
}

#[test]
fn history_limits_delete_the_oldest_first() {
    let a = job("a", Some("2024-01-01T00:03:00Z"), "Complete");
    let b = job("b", Some("2024-01-01T00:01:00Z"), "Complete");
    let c = job("c", None, "Complete");
    let d = job("d", Some("2024-01-01T00:02:00Z"), "Complete");
    let e = job("e", Some("2024-01-01T00:01:00Z"), "Failed");
    let jobs = [&a, &b, &c, &d, &e];
    let names = |v: Vec<&Job>| -> Vec<String> {
        v.iter()
            .map(|j| j.metadata.name.clone().unwrap_or_default())
            .collect()
    };
    // Oldest start first, jobs without a start time last, ties by name.
    assert_eq!(names(to_prune(&jobs[..4], 2)), ["b", "d"]);
    assert_eq!(names(to_prune(&jobs[..4], 0)), ["b", "d", "a", "c"]);
    assert!(to_prune(&jobs[..4], 4).is_empty());
    assert_eq!(names(to_prune(&[&e, &b], 1)), ["b"]);
    assert_eq!(finished(&e), Some("Failed"));
    let running: Job = serde_json::from_value(json!({"metadata": {"name": "r"},
        "status": {"conditions": [{"type": "Complete", "status": "False"}]}}))
    .expect("job");
    assert_eq!(finished(&running), None);
}

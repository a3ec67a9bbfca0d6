//! The CronJob and TTL-after-finished controllers inside a real berth-server: a
//! `*/1 * * * *` CronJob creates `<name>-<minutes>` Jobs and tracks them in its status;
//! finished Jobs beyond the history limits are deleted oldest first; a finished Job
//! with `ttlSecondsAfterFinished` is deleted; the apiserver refuses bad CronJobs with
//! upstream's field paths and messages; `kubectl create job --from=cronjob/x` (a
//! protobuf body) copies the template. The Job controller is not in this tree, so
//! Jobs are finished here by writing their status.

mod hollow;

use std::time::Duration;

use berth_control_plane::client::from_kubeconfig;
use berth_testkit::{BerthServer, Kubectl};
use hollow::eventually;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

fn server(dir: &std::path::Path) -> BerthServer {
    BerthServer::start_with(env!("CARGO_BIN_EXE_berth-server").as_ref(), dir, &[])
}

fn cronjob(name: &str, schedule: &str, extra: Value) -> CronJob {
    let mut spec = json!({
        "schedule": schedule,
        "jobTemplate": {
            "metadata": {"labels": {"app": name}},
            "spec": {"template": {
                "metadata": {"labels": {"app": name},
                    "annotations": {"hollow.berth.io/exit-code": "0"}},
                "spec": {"restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "berth.local/testserver:v1",
                        "command": ["true"]}]}}}},
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).expect("cronjob")
}

/// Marks a Job finished as the Job controller would: the condition (with its
/// transition time), completionTime for Complete, and the counters.
async fn finish(jobs: &Api<Job>, name: &str, condition: &str, started: &str) {
    let now = jiff::Timestamp::now().to_string();
    let mut status = json!({
        "startTime": started,
        "active": 0,
        "conditions": [{"type": condition, "status": "True", "lastTransitionTime": now,
            "lastProbeTime": now}],
    });
    if condition == "Complete" {
        status["completionTime"] = json!(now);
        status["succeeded"] = json!(1);
    } else {
        status["failed"] = json!(1);
    }
    jobs.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await
    .unwrap_or_else(|e| panic!("finish job {name}: {e}"));
}

/// The messages of events with `reason`, once every one of `wanted` is among them
/// (events are recorded in the background), or what there is after 10 s.
async fn events_with(client: &Client, reason: &str, wanted: &[String]) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen = events(client, reason).await;
        if wanted.iter().all(|w| seen.contains(w)) || std::time::Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn events(client: &Client, reason: &str) -> Vec<String> {
    let api: Api<Event> = Api::namespaced(client.clone(), "default");
    api.list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.message)
        .collect()
}

#[test]
fn an_every_minute_cronjob_creates_named_jobs_and_tracks_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = server(dir.path());
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async {
        let client = from_kubeconfig(&server.kubeconfig(), "e2e.test")
            .await
            .expect("client");
        let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), "default");
        let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
        let cj = cronjobs
            .create(
                &PostParams::default(),
                &cronjob("tick", "*/1 * * * *", json!({"timeZone": "Asia/Tokyo"})),
            )
            .await
            .expect("create cronjob");
        let uid = cj.metadata.uid.clone().expect("uid");
        let job = eventually("a job from the cronjob", Duration::from_secs(65), || {
            let jobs = jobs.clone();
            async move {
                let list = jobs.list(&ListParams::default()).await.ok()?;
                list.items.into_iter().find(|j| {
                    j.metadata
                        .name
                        .as_deref()
                        .is_some_and(|n| n.starts_with("tick-"))
                })
            }
        })
        .await;
        let name = job.metadata.name.clone().expect("name");
        let minutes: i64 = name["tick-".len()..].parse().expect("minutes suffix");
        let now = jiff::Timestamp::now().as_second() / 60;
        assert!((now - 1..=now).contains(&minutes), "{name} vs minute {now}");
        let owner = job.metadata.owner_references.clone().unwrap_or_default();
        assert!(
            owner
                .iter()
                .any(|r| r.kind == "CronJob" && r.uid == uid && r.controller == Some(true)),
            "{owner:?}"
        );
        let annotations = job.metadata.annotations.clone().unwrap_or_default();
        let stamp = annotations
            .get("batch.kubernetes.io/cronjob-scheduled-timestamp")
            .expect("scheduled-timestamp annotation");
        assert!(stamp.ends_with(":00+09:00"), "{stamp}");
        let scheduled: jiff::Timestamp = stamp.parse().expect("RFC 3339");
        assert_eq!(scheduled.as_second() / 60, minutes);
        let labels = job.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("app").map(String::as_str), Some("tick"));

        // The CronJob's status lists it as active, with the schedule time.
        let cj = eventually("status.active", Duration::from_secs(10), || {
            let cronjobs = cronjobs.clone();
            async move {
                let cj = cronjobs.get("tick").await.ok()?;
                let active = cj.status.as_ref()?.active.as_ref()?;
                (!active.is_empty()).then_some(cj)
            }
        })
        .await;
        let status = cj.status.clone().expect("status");
        let active = status.active.clone().unwrap_or_default();
        assert_eq!(active[0].name.as_deref(), Some(name.as_str()));
        assert_eq!(active[0].kind.as_deref(), Some("Job"));
        assert_eq!(
            status.last_schedule_time.map(|t| t.0.as_second()),
            Some(minutes * 60)
        );
        let created = events_with(
            &client,
            "SuccessfulCreate",
            &[format!("Created job {name}")],
        )
        .await;
        assert!(
            created.contains(&format!("Created job {name}")),
            "{created:?}"
        );

        // Finished: out of the active list, and lastSuccessfulTime set.
        finish(
            &jobs,
            &name,
            "Complete",
            &jiff::Timestamp::now().to_string(),
        )
        .await;
        eventually(
            "the job leaves status.active",
            Duration::from_secs(10),
            || {
                let cronjobs = cronjobs.clone();
                let name = name.clone();
                async move {
                    let s = cronjobs.get("tick").await.ok()?.status?;
                    let idle = s
                        .active
                        .as_ref()
                        .is_none_or(|a| a.iter().all(|r| r.name.as_deref() != Some(name.as_str())));
                    (idle && s.last_successful_time.is_some()).then_some(())
                }
            },
        )
        .await;
        let seen = events_with(
            &client,
            "SawCompletedJob",
            &[format!("Saw completed job: {name}, condition: Complete")],
        )
        .await;
        assert!(
            seen.contains(&format!("Saw completed job: {name}, condition: Complete")),
            "{seen:?}"
        );
    });
}

#[test]
fn finished_jobs_beyond_the_history_limits_are_deleted_oldest_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = server(dir.path());
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async {
        let client = from_kubeconfig(&server.kubeconfig(), "e2e.test")
            .await
            .expect("client");
        let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), "default");
        let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
        // Never due during the test: only the history is at work.
        let cj = cronjobs
            .create(
                &PostParams::default(),
                &cronjob(
                    "hist",
                    "0 0 1 1 *",
                    json!({"successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 0,
                        "concurrencyPolicy": "Forbid"}),
                ),
            )
            .await
            .expect("create cronjob");
        let owner = json!([{"apiVersion": "batch/v1", "kind": "CronJob", "name": "hist",
            "uid": cj.metadata.uid, "controller": true, "blockOwnerDeletion": true}]);
        let runs = [
            ("hist-1", "Complete", "2024-01-01T00:01:00Z"),
            ("hist-2", "Complete", "2024-01-01T00:03:00Z"),
            ("hist-3", "Complete", "2024-01-01T00:02:00Z"),
            ("hist-4", "Failed", "2024-01-01T00:04:00Z"),
        ];
        for (name, _, _) in runs {
            let job: Job = serde_json::from_value(json!({
                "metadata": {"name": name, "ownerReferences": owner},
                "spec": {"template": {"spec": {"restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "berth.local/testserver:v1"}]}}},
            }))
            .expect("job");
            jobs.create(&PostParams::default(), &job)
                .await
                .expect("create job");
        }
        for (name, condition, started) in runs {
            finish(&jobs, name, condition, started).await;
        }
        // One success kept (the latest start, hist-2), no failure kept.
        let left = eventually("the history pruned", Duration::from_secs(15), || {
            let jobs = jobs.clone();
            async move {
                let mut names: Vec<String> = jobs
                    .list(&ListParams::default())
                    .await
                    .ok()?
                    .items
                    .into_iter()
                    .filter(|j| j.metadata.deletion_timestamp.is_none())
                    .filter_map(|j| j.metadata.name)
                    .collect();
                names.sort();
                (names.len() == 1).then_some(names)
            }
        })
        .await;
        assert_eq!(left, ["hist-2"]);
        let wanted: Vec<String> = ["hist-1", "hist-3", "hist-4"]
            .iter()
            .map(|n| format!("Deleted job {n}"))
            .collect();
        let deleted = events_with(&client, "SuccessfulDelete", &wanted).await;
        for name in ["hist-1", "hist-3", "hist-4"] {
            assert!(
                deleted.contains(&format!("Deleted job {name}")),
                "{deleted:?}"
            );
        }
        // A running job the controller did not create: reported.
        let stray: Job = serde_json::from_value(json!({
            "metadata": {"name": "hist-stray", "ownerReferences": owner},
            "spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "c", "image": "berth.local/testserver:v1"}]}}},
        }))
        .expect("job");
        jobs.create(&PostParams::default(), &stray)
            .await
            .expect("create stray");
        eventually("an UnexpectedJob event", Duration::from_secs(10), || {
            let client = client.clone();
            async move {
                events(&client, "UnexpectedJob")
                    .await
                    .iter()
                    .any(|m| {
                        m == "Saw a job that the controller did not create or forgot: hist-stray"
                    })
                    .then_some(())
            }
        })
        .await;
    });
}

#[test]
fn finished_jobs_with_a_ttl_are_deleted_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = server(dir.path());
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async {
        let client = from_kubeconfig(&server.kubeconfig(), "e2e.test")
            .await
            .expect("client");
        let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
        for (name, ttl) in [("short", 2), ("long", 3600), ("marker", 2)] {
            let job: Job = serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"ttlSecondsAfterFinished": ttl,
                    "template": {"spec": {"restartPolicy": "Never",
                        "containers": [{"name": "c", "image": "berth.local/testserver:v1"}]}}},
            }))
            .expect("job");
            jobs.create(&PostParams::default(), &job)
                .await
                .expect("create job");
        }
        // Unfinished, it stays past its TTL: a job made after it with the same TTL but
        // finished at once is deleted first.
        let marker_started = jiff::Timestamp::now().to_string();
        finish(&jobs, "marker", "Complete", &marker_started).await;
        eventually(
            "the finished marker job deleted after its TTL",
            Duration::from_secs(10),
            || {
                let jobs = jobs.clone();
                async move { jobs.get_opt("marker").await.ok()?.is_none().then_some(()) }
            },
        )
        .await;
        let short = jobs
            .get_opt("short")
            .await
            .expect("get")
            .expect("the unfinished job stays");
        assert!(short.metadata.deletion_timestamp.is_none());
        let started = jiff::Timestamp::now().to_string();
        finish(&jobs, "short", "Complete", &started).await;
        finish(&jobs, "long", "Failed", &started).await;
        // The finish time is the condition's lastTransitionTime, kept to the second.
        let finished_at = jobs
            .get("short")
            .await
            .expect("get job")
            .status
            .and_then(|s| s.conditions)
            .and_then(|c| c.into_iter().next())
            .and_then(|c| c.last_transition_time)
            .expect("lastTransitionTime")
            .0;
        eventually(
            "the job deleted after its TTL",
            Duration::from_secs(6),
            || {
                let jobs = jobs.clone();
                async move { jobs.get_opt("short").await.ok()?.is_none().then_some(()) }
            },
        )
        .await;
        let gone_at = jiff::Timestamp::now();
        assert!(
            gone_at >= finished_at + jiff::SignedDuration::from_secs(2),
            "deleted at {gone_at}, before the TTL from {finished_at}"
        );
        let long = jobs.get("long").await.expect("the long-TTL job stays");
        assert!(long.metadata.deletion_timestamp.is_none());
    });
}

#[test]
fn kubectl_sees_validation_and_creates_jobs_from_cronjobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = server(dir.path());
    let Some(kubectl) = Kubectl::find(&server.kubeconfig(), dir.path()) else {
        return;
    };
    let bad = |spec: &str| {
        let manifest = format!(
            "apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: bad}}\nspec:\n{spec}\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers: [{{name: c, image: busybox}}]\n"
        );
        let mut child = kubectl
            .cmd(&["apply", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(manifest.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("kubectl apply");
        assert!(!out.status.success(), "{spec} should be refused");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for (spec, expected) in [
        (
            "  schedule: \"61 * * * *\"",
            "spec.schedule: Invalid value: \"61 * * * *\": end of range (61) above maximum (59): 61",
        ),
        (
            "  schedule: \"CRON_TZ=UTC 0 * * * *\"",
            "spec.schedule: Invalid value: \"CRON_TZ=UTC 0 * * * *\": cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
        ),
        (
            "  schedule: \"@hourly\"\n  timeZone: Europe/Pariss",
            "spec.timeZone: Invalid value: \"Europe/Pariss\": unknown time zone Europe/Pariss",
        ),
        (
            "  schedule: \"@daily\"\n  startingDeadlineSeconds: -5",
            "spec.startingDeadlineSeconds: Invalid value: -5: must be greater than or equal to 0",
        ),
        (
            "  schedule: \"@daily\"\n  successfulJobsHistoryLimit: -1",
            "spec.successfulJobsHistoryLimit: Invalid value: -1: must be greater than or equal to 0",
        ),
        (
            "  schedule: \"@daily\"\n  concurrencyPolicy: Sometimes",
            "spec.concurrencyPolicy: Unsupported value: \"Sometimes\": supported values: \"Allow\", \"Forbid\", \"Replace\"",
        ),
    ] {
        let err = bad(spec);
        assert!(err.contains("The CronJob \"bad\" is invalid"), "{err}");
        assert!(err.contains(expected), "{spec}: {err}");
    }
    let long = "x".repeat(53);
    let err = kubectl.fails(&[
        "create",
        "cronjob",
        &long,
        "--image=busybox",
        "--schedule=@daily",
    ]);
    assert!(
        err.contains(&format!(
            "metadata.name: Invalid value: \"{long}\": must be no more than 52 characters"
        )),
        "{err}"
    );
    // `@every` is accepted, as robfig's ParseStandard accepts it.
    kubectl.ok(&[
        "create",
        "cronjob",
        "every",
        "--image=busybox",
        "--schedule=@every 1h",
    ]);

    kubectl.apply(
        "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: nightly}\nspec:\n  schedule: \"0 3 * * *\"\n  suspend: true\n  jobTemplate:\n    metadata: {labels: {team: a}}\n    spec:\n      backoffLimit: 2\n      ttlSecondsAfterFinished: 600\n      template:\n        metadata: {labels: {app: nightly}}\n        spec:\n          restartPolicy: OnFailure\n          containers:\n          - name: c\n            image: busybox\n            command: [sh, -c, \"echo hi\"]\n            env: [{name: A, value: b}]\n",
    );
    kubectl.ok(&["create", "job", "manual", "--from=cronjob/nightly"]);
    let job = kubectl.json(&["get", "job", "manual"]);
    assert_eq!(
        job.pointer("/metadata/annotations/cronjob.kubernetes.io~1instantiate"),
        Some(&json!("manual")),
        "{job}"
    );
    let owner = &job["metadata"]["ownerReferences"][0];
    assert_eq!(
        (&owner["kind"], &owner["name"]),
        (&json!("CronJob"), &json!("nightly"))
    );
    let spec = &job["spec"];
    assert_eq!(spec["backoffLimit"], json!(2), "{spec}");
    assert_eq!(spec["ttlSecondsAfterFinished"], json!(600), "{spec}");
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], json!("OnFailure"), "{pod}");
    let c = &pod["containers"][0];
    assert_eq!(c["command"], json!(["sh", "-c", "echo hi"]), "{c}");
    assert_eq!(c["env"], json!([{"name": "A", "value": "b"}]), "{c}");
    assert_eq!(
        job.pointer("/metadata/labels/team"),
        Some(&json!("a")),
        "{job}"
    );
    assert_eq!(
        spec.pointer("/template/metadata/labels/app"),
        Some(&json!("nightly")),
        "{spec}"
    );
    // Suspended: the controller made no job of its own.
    let all = kubectl.json(&["get", "jobs"]);
    let names: Vec<&str> = all["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|j| j["metadata"]["name"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(names, ["manual"]);
}

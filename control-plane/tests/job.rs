//! The Job controller inside a real berth-server, with hollow nodes whose fake kubelet
//! ends pods with the exit code their template's `hollow.berth.io/exit-code`
//! annotation names: completions and parallelism (never more than `parallelism` pods
//! at once, checked by a watcher), the back-off limit, Indexed Jobs, a podFailurePolicy
//! FailJob rule, activeDeadlineSeconds, suspend and resume, `kubectl wait`, and the
//! apiserver's validation of Jobs — all through the real kubectl.

mod hollow;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_control_plane::client::from_kubeconfig;
use berth_testkit::{BerthServer, Kubectl};
use futures_util::StreamExt;
use hollow::{Kubelet, eventually, node};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::json;

fn server(dir: &std::path::Path) -> BerthServer {
    BerthServer::start_with(env!("CARGO_BIN_EXE_berth-server").as_ref(), dir, &[])
}

/// A Job manifest: its pods end with `exit` after `run_ms`.
fn job(name: &str, exit: i32, run_ms: u64, spec: serde_json::Value) -> String {
    let mut s = json!({
        "template": {
            "metadata": {"annotations": {
                "hollow.berth.io/exit-code": exit.to_string(),
                "hollow.berth.io/run-ms": run_ms.to_string()}},
            "spec": {"restartPolicy": "Never",
                "containers": [{"name": "main", "image": "busybox"}]},
        },
    });
    if let (Some(base), Some(extra)) = (s.as_object_mut(), spec.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": s})
        .to_string()
}

fn condition(job: &Job, type_: &str) -> Option<(String, String)> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

async fn wait_condition(api: &Api<Job>, name: &str, type_: &str, timeout: Duration) -> Job {
    eventually(&format!("job {name} {type_}"), timeout, || async {
        let j = api.get(name).await.ok()?;
        condition(&j, type_).map(|_| j)
    })
    .await
}

async fn job_pods(pods: &Api<Pod>, name: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={name}")))
        .await
        .expect("list pods")
        .items
}

fn with_cluster(test: impl AsyncFnOnce(kube::Client, Kubectl)) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = server(dir.path());
    let Some(kubectl) = Kubectl::find(&server.kubeconfig(), dir.path()) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async {
        let client = from_kubeconfig(&server.kubeconfig(), "e2e.test")
            .await
            .expect("client");
        for n in ["n1", "n2"] {
            node(&client, n, "64", json!({}), json!([])).await;
        }
        let _kubelet = Kubelet::start(client.clone(), &["n1", "n2"]);
        test(client, kubectl).await;
    });
}

#[test]
fn completions_and_parallelism_complete_with_every_success_counted_once() {
    with_cluster(async |client, kubectl| {
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
        // A watcher records the most pods of the Job running at once.
        let most = Arc::new(Mutex::new(0usize));
        let watch = tokio::spawn({
            let (pods, most) = (pods.clone(), most.clone());
            async move {
                let mut active: HashSet<String> = HashSet::new();
                let config = watcher::Config::default().labels("batch.kubernetes.io/job-name=five");
                let mut stream = std::pin::pin!(watcher(pods, config));
                while let Some(Ok(ev)) = stream.next().await {
                    if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = ev {
                        let name = p.metadata.name.clone().unwrap_or_default();
                        let phase = p.status.as_ref().and_then(|s| s.phase.clone());
                        if p.metadata.deletion_timestamp.is_none()
                            && !matches!(phase.as_deref(), Some("Succeeded" | "Failed"))
                        {
                            active.insert(name);
                        } else {
                            active.remove(&name);
                        }
                        let mut m = most.lock().expect("lock");
                        *m = (*m).max(active.len());
                    }
                }
            }
        });
        kubectl.apply(&job(
            "five",
            0,
            300,
            json!({"completions": 5, "parallelism": 2}),
        ));
        let out = kubectl.ok(&[
            "wait",
            "--for=condition=Complete",
            "job/five",
            "--timeout=60s",
        ]);
        assert!(out.contains("condition met"), "{out}");
        let j = jobs.get("five").await.expect("job");
        let status = j.status.clone().expect("status");
        assert_eq!(status.succeeded, Some(5));
        assert_eq!(status.failed.unwrap_or(0), 0);
        assert_eq!(status.active.unwrap_or(0), 0);
        assert!(status.completion_time.is_some() && status.start_time.is_some());
        assert_eq!(
            condition(&j, "SuccessCriteriaMet").map(|c| c.0).as_deref(),
            Some("CompletionsReached")
        );
        let all = job_pods(&pods, "five").await;
        assert_eq!(all.len(), 5, "exactly five pods ran");
        // Every result counted: no pod keeps the tracking finalizer.
        assert!(
            all.iter()
                .all(|p| p.metadata.finalizers.as_ref().is_none_or(|f| f.is_empty()))
        );
        assert!(
            status.uncounted_terminated_pods.is_none_or(|u| u
                .succeeded
                .unwrap_or_default()
                .is_empty()
                && u.failed.unwrap_or_default().is_empty())
        );
        watch.abort();
        let most = *most.lock().expect("lock");
        assert!(most <= 2, "{most} pods ran at once with parallelism 2");
        // The generated selector and labels.
        let selector = j
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .expect("selector");
        let uid = j.metadata.uid.clone().expect("uid");
        assert_eq!(
            selector.match_labels,
            Some(BTreeMap::from([(
                "batch.kubernetes.io/controller-uid".into(),
                uid
            )]))
        );
    });
}

#[test]
fn failing_pods_exhaust_the_backoff_limit_and_a_failjob_rule_fails_at_once() {
    with_cluster(async |client, kubectl| {
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
        kubectl.apply(&job("flaky", 1, 0, json!({"backoffLimit": 1})));
        kubectl.apply(&job(
            "fatal",
            42,
            0,
            json!({"backoffLimit": 6, "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}}]}}),
        ));
        let fatal = wait_condition(&jobs, "fatal", "Failed", Duration::from_secs(30)).await;
        let (reason, message) = condition(&fatal, "Failed").expect("Failed");
        assert_eq!(reason, "PodFailurePolicy");
        assert!(
            message.contains("failed with exit code 42 matching FailJob rule at index 0"),
            "{message}"
        );
        assert!(condition(&fatal, "FailureTarget").is_some());
        assert_eq!(job_pods(&pods, "fatal").await.len(), 1, "no pod replaced");
        assert_eq!(fatal.status.and_then(|s| s.failed), Some(1));

        // backoffLimit 1: two pods fail (the second after a 10 s back-off), then no more.
        let flaky = wait_condition(&jobs, "flaky", "Failed", Duration::from_secs(60)).await;
        let (reason, message) = condition(&flaky, "Failed").expect("Failed");
        assert_eq!(reason, "BackoffLimitExceeded");
        assert_eq!(message, "Job has reached the specified backoff limit");
        assert_eq!(flaky.status.and_then(|s| s.failed), Some(2));
        // No third pod: the sync that ends the Job makes none, and the controller
        // returns before planning pods for a Job it sees finished.
        assert_eq!(job_pods(&pods, "flaky").await.len(), 2);
        let events = kubectl.ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=flaky",
        ]);
        assert!(events.contains("BackoffLimitExceeded"), "{events}");
    });
}

#[test]
fn indexed_jobs_run_each_index_once() {
    with_cluster(async |client, kubectl| {
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
        kubectl.apply(&job(
            "idx",
            0,
            200,
            json!({"completions": 6, "parallelism": 3, "completionMode": "Indexed"}),
        ));
        let j = wait_condition(&jobs, "idx", "Complete", Duration::from_secs(60)).await;
        let status = j.status.clone().expect("status");
        assert_eq!(status.completed_indexes.as_deref(), Some("0-5"));
        assert_eq!(status.succeeded, Some(6));
        let all = job_pods(&pods, "idx").await;
        let mut seen: Vec<i32> = Vec::new();
        for p in &all {
            let index: i32 = p.metadata.annotations.as_ref().expect("annotations")
                ["batch.kubernetes.io/job-completion-index"]
                .parse()
                .expect("index");
            assert_eq!(
                p.metadata.labels.as_ref().expect("labels")["batch.kubernetes.io/job-completion-index"],
                index.to_string()
            );
            let spec = p.spec.as_ref().expect("spec");
            assert_eq!(
                spec.hostname.as_deref(),
                Some(format!("idx-{index}").as_str())
            );
            let env = spec.containers[0].env.clone().unwrap_or_default();
            let var = env
                .iter()
                .find(|e| e.name == "JOB_COMPLETION_INDEX")
                .expect("env");
            let path = var
                .value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.clone());
            assert_eq!(
                path.as_deref(),
                Some("metadata.annotations['batch.kubernetes.io/job-completion-index']")
            );
            assert!(
                p.metadata
                    .name
                    .as_deref()
                    .unwrap_or_default()
                    .starts_with(&format!("idx-{index}-"))
            );
            seen.push(index);
        }
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2, 3, 4, 5], "each index exactly once");
    });
}

#[test]
fn deadlines_fail_and_suspended_jobs_keep_no_pods() {
    with_cluster(async |client, kubectl| {
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
        kubectl.apply(&job(
            "slow",
            0,
            600_000,
            json!({"activeDeadlineSeconds": 2, "parallelism": 2, "completions": 2}),
        ));
        kubectl.apply(&job(
            "later",
            0,
            600_000,
            json!({"suspend": true, "parallelism": 2, "completions": 4}),
        ));
        let slow = wait_condition(&jobs, "slow", "Failed", Duration::from_secs(30)).await;
        let (reason, message) = condition(&slow, "Failed").expect("Failed");
        assert_eq!(reason, "DeadlineExceeded");
        assert_eq!(message, "Job was active longer than specified deadline");
        eventually("slow's pods deleted", Duration::from_secs(20), || async {
            let left = job_pods(&pods, "slow").await;
            left.is_empty().then_some(())
        })
        .await;

        // Suspended: no pods, a Suspended condition, no startTime; resumed: pods run;
        // suspended again: they are deleted and not counted as failures.
        let later = wait_condition(&jobs, "later", "Suspended", Duration::from_secs(20)).await;
        assert!(
            later
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .is_none()
        );
        assert!(job_pods(&pods, "later").await.is_empty());
        kubectl.ok(&[
            "patch",
            "job",
            "later",
            "--type=merge",
            "-p",
            r#"{"spec":{"suspend":false}}"#,
        ]);
        eventually("later running", Duration::from_secs(20), || async {
            let j = jobs.get("later").await.ok()?;
            (j.status?.active == Some(2)).then_some(())
        })
        .await;
        let resumed = jobs.get("later").await.expect("later");
        let c = resumed
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Suspended").cloned())
            .expect("Suspended condition");
        assert_eq!(
            (c.status.as_str(), c.reason.as_deref()),
            ("False", Some("JobResumed"))
        );
        jobs.patch(
            "later",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": true}})),
        )
        .await
        .expect("suspend");
        eventually("later's pods gone", Duration::from_secs(20), || async {
            let live = job_pods(&pods, "later").await;
            live.iter()
                .all(|p| p.metadata.deletion_timestamp.is_some())
                .then_some(())
        })
        .await;
        let j = wait_condition(&jobs, "later", "Suspended", Duration::from_secs(20)).await;
        assert_eq!(j.status.as_ref().and_then(|s| s.failed).unwrap_or(0), 0);
    });
}

#[test]
fn invalid_and_immutable_jobs_are_refused_with_their_field() {
    with_cluster(async |_client, kubectl| {
        let always = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "bad"},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}})
        .to_string();
        let path = std::env::temp_dir().join(format!("job-bad-{}.json", std::process::id()));
        std::fs::write(&path, &always).expect("write");
        let out = kubectl.fails(&["create", "-f", path.to_str().unwrap_or_default()]);
        assert!(
            out.contains("spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""),
            "{out}"
        );
        let negative = job("neg", 0, 0, json!({"parallelism": -1}));
        std::fs::write(&path, &negative).expect("write");
        let out = kubectl.fails(&["create", "-f", path.to_str().unwrap_or_default()]);
        assert!(
            out.contains("spec.parallelism: Invalid value: -1: must be greater than or equal to 0"),
            "{out}"
        );
        let indexed = job(
            "noc",
            0,
            0,
            json!({"completionMode": "Indexed", "parallelism": 1}),
        );
        std::fs::write(&path, &indexed).expect("write");
        let out = kubectl.fails(&["create", "-f", path.to_str().unwrap_or_default()]);
        assert!(
            out.contains("spec.completions: Required value: when completion mode is Indexed"),
            "{out}"
        );
        kubectl.apply(&job("fixed", 0, 600_000, json!({"completions": 3})));
        let out = kubectl.fails(&[
            "patch",
            "job",
            "fixed",
            "--type=merge",
            "-p",
            r#"{"spec":{"completions":4}}"#,
        ]);
        assert!(
            out.contains("spec.completions: Invalid value: 4: field is immutable"),
            "{out}"
        );
        let _ = std::fs::remove_file(&path);
    });
}

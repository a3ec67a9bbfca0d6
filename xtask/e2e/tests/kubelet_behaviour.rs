//! What the README says the node agent does as a kubelet does, checked against
//! upstream kubelet behaviour with the real kubectl on a one-node cluster: the node
//! Lease renewed every 10 s for 40 s; a postStart exec hook runs in the container and a
//! failing one kills it with a `FailedPostStartHook` event; a startup probe holds back
//! readiness and liveness until it succeeds, and restarts a container it gives up on;
//! subPath mounts of a configMap and an emptyDir show only their sub-path; and
//! `/etc/resolv.conf` for each dnsPolicy, with a dnsConfig alone (`None`) and merged
//! into `ClusterFirst` as the kubelet merges it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use berth_testkit::{CLUSTER_DNS, require_root};
use serde_json::Value;

mod common;
use common::{Cluster, cluster, events_of, ready};

fn seconds(v: &Value) -> i64 {
    v.as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .unwrap_or_else(|| panic!("an RFC 3339 time: {v}"))
        .as_second()
}

#[test]
fn lease_renewals_hooks_and_startup_probes_follow_the_kubelet() {
    require_root!();
    let Some(c) = cluster() else { return };
    // The Lease is watched while the pods below run: three renewTimes in a row (two
    // renewals) within 35 s, read to the microsecond from the Lease itself.
    let kubectl = c.kubectl.clone();
    let lease_watch = std::thread::spawn(move || {
        let mut renewals: Vec<(jiff::Timestamp, Value)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(35);
        while renewals.len() < 3 && Instant::now() < deadline {
            let out = kubectl.run(&[
                "get",
                "lease",
                "-n",
                "kube-node-lease",
                "node-e2e",
                "-o",
                "json",
            ]);
            let lease: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            if let Some(t) = lease["spec"]["renewTime"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                && renewals.last().is_none_or(|(last, _)| *last != t)
            {
                renewals.push((t, lease));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        renewals
    });
    c.kubectl.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: hooked}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: berth.local/busybox:1.35
    command: [sleep, "3600"]
    lifecycle:
      postStart: {exec: {command: [sh, -c, "echo hooked > /tmp/poststart"]}}
---
apiVersion: v1
kind: Pod
metadata: {name: hook-fails}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: berth.local/busybox:1.35
    command: [sleep, "3600"]
    lifecycle:
      postStart: {exec: {command: [sh, -c, "exit 7"]}}
---
apiVersion: v1
kind: Pod
metadata: {name: slow-start}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: berth.local/busybox:1.35
    command: [sh, -c, "sleep 6; touch /tmp/started; exec sleep 3600"]
    startupProbe: {exec: {command: [test, -f, /tmp/started]}, periodSeconds: 1, failureThreshold: 30}
    livenessProbe: {exec: {command: [test, -f, /tmp/started]}, periodSeconds: 1, failureThreshold: 1}
    readinessProbe: {exec: {command: ["true"]}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: never-starts}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: berth.local/busybox:1.35
    command: [sleep, "3600"]
    startupProbe: {exec: {command: ["false"]}, periodSeconds: 1, failureThreshold: 3}
"#,
    );

    // Startup probe: until it succeeds (after ~6 s) the container is neither started
    // nor Ready, and the liveness probe — which would fail at once — is not run.
    let mut seen_unstarted = 0;
    let pod = c.wait_pod("slow-start", "started and Ready", |p| {
        let s = Cluster::container_status(p, "c");
        assert_eq!(
            s["restartCount"].as_i64().unwrap_or(0),
            0,
            "killed before its startup: {s}"
        );
        if s["state"]["running"].is_object() && s["started"] == false {
            assert_eq!(s["ready"], false, "Ready before its startup probe: {s}");
            assert!(!ready(p), "the pod Ready before its startup probe: {p}");
            seen_unstarted += 1;
        }
        s["started"] == true && ready(p)
    });
    assert!(seen_unstarted > 0, "never seen running and not yet started");
    let s = Cluster::container_status(&pod, "c");
    let since_start =
        jiff::Timestamp::now().as_second() - seconds(&s["state"]["running"]["startedAt"]);
    assert!(
        since_start >= 5,
        "started {since_start} s after the container, before its startup probe could pass: {s}"
    );
    // A startup probe that never passes: the container is killed after
    // failureThreshold × periodSeconds (3 s) and restarted.
    let pod = c.wait_pod("never-starts", "restarted by its startup probe", |p| {
        Cluster::container_status(p, "c")["restartCount"]
            .as_i64()
            .unwrap_or(0)
            >= 1
    });
    let s = Cluster::container_status(&pod, "c");
    let ran = seconds(&s["lastState"]["terminated"]["finishedAt"])
        - seconds(&s["lastState"]["terminated"]["startedAt"]);
    assert!(
        (2..=8).contains(&ran),
        "the first instance ran {ran} s, not the startup probe's 3 failures 1 s apart: {s}"
    );
    assert_eq!(s["started"], false, "{s}");
    let events = events_of(&c, "never-starts");
    assert!(
        events
            .iter()
            .any(|(r, m)| r == "Unhealthy" && m.starts_with("Startup probe failed:")),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|(r, m)| r == "Killing"
                && m == "Container c failed startup probe, will be restarted"),
        "{events:?}"
    );

    // postStart: the hook ran in the container.
    c.wait_pod("hooked", "Ready", ready);
    assert_eq!(
        c.kubectl
            .ok(&["exec", "hooked", "--", "cat", "/tmp/poststart"])
            .trim(),
        "hooked"
    );
    // A failing postStart: the kubelet records FailedPostStartHook ("PostStartHook
    // failed") and kills the container, which is then restarted.
    let pod = c.wait_pod("hook-fails", "killed by its failing hook", |p| {
        Cluster::container_status(p, "c")["restartCount"]
            .as_i64()
            .unwrap_or(0)
            >= 1
    });
    let s = Cluster::container_status(&pod, "c");
    assert!(s["lastState"]["terminated"].is_object(), "{s}");
    let events = events_of(&c, "hook-fails");
    assert!(
        events
            .iter()
            .any(|(r, m)| r == "FailedPostStartHook" && m.starts_with("PostStartHook failed")),
        "{events:?}"
    );

    // The Lease: renewed every 10 s (kubelet's renewInterval = 0.25 × 40 s).
    let renewals = lease_watch.join().expect("the lease watch");
    assert!(
        renewals.len() >= 3,
        "fewer than two renewals in 35 s: {:?}",
        renewals.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    for pair in renewals.windows(2) {
        let gap = (pair[1].0 - pair[0].0)
            .total(jiff::Unit::Millisecond)
            .expect("a span in milliseconds");
        assert!(
            (8_000.0..=12_000.0).contains(&gap),
            "renewals {} and {} are {gap} ms apart, not 10 s ± 2 s",
            pair[0].0,
            pair[1].0
        );
    }
    for (_, lease) in &renewals {
        assert_eq!(lease["spec"]["leaseDurationSeconds"], 40, "{lease}");
        assert_eq!(lease["spec"]["holderIdentity"], "node-e2e", "{lease}");
    }
    c.kubectl.ok(&[
        "delete",
        "pod",
        "hooked",
        "hook-fails",
        "slow-start",
        "never-starts",
        "--wait=true",
        "--timeout=60s",
    ]);
    c.wait_clean();
}

/// `/etc/resolv.conf` read back: (nameservers, searches, options).
fn resolv(text: &str) -> (Vec<String>, Vec<String>, BTreeSet<String>) {
    let (mut ns, mut search, mut opts) = (Vec::new(), Vec::new(), BTreeSet::new());
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        match parts.next() {
            Some("nameserver") => ns.extend(parts.map(str::to_owned)),
            Some("search") => search.extend(parts.map(str::to_owned)),
            Some("options") => opts.extend(parts.map(str::to_owned)),
            _ => {}
        }
    }
    (ns, search, opts)
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn subpath_mounts_and_resolv_conf_per_dns_policy() {
    require_root!();
    let Some(c) = cluster() else { return };
    c.kubectl.apply(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: app}
data: {greeting: hello, other: not-mounted}
---
apiVersion: v1
kind: Pod
metadata: {name: subpaths}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: berth.local/busybox:1.35
    command: [sh, -c, "echo in-sub > /all/sub/file; mkdir -p /all/other; echo elsewhere > /all/other/file; exec sleep 3600"]
    volumeMounts:
    - {name: scratch, mountPath: /all}
    - {name: scratch, mountPath: /sub, subPath: sub}
    - {name: cfg, mountPath: /etc/app/greeting.txt, subPath: greeting}
  volumes:
  - {name: scratch, emptyDir: {}}
  - {name: cfg, configMap: {name: app}}
---
apiVersion: v1
kind: Pod
metadata: {name: dns-cluster-first}
spec:
  terminationGracePeriodSeconds: 1
  containers: [{name: c, image: berth.local/busybox:1.35, command: [sleep, "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: dns-default}
spec:
  terminationGracePeriodSeconds: 1
  dnsPolicy: Default
  containers: [{name: c, image: berth.local/busybox:1.35, command: [sleep, "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: dns-none}
spec:
  terminationGracePeriodSeconds: 1
  dnsPolicy: None
  dnsConfig:
    nameservers: [192.0.2.1, 192.0.2.2]
    searches: [a.example, b.example]
    options: [{name: ndots, value: "2"}, {name: edns0}]
  containers: [{name: c, image: berth.local/busybox:1.35, command: [sleep, "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: dns-merged}
spec:
  terminationGracePeriodSeconds: 1
  dnsConfig:
    nameservers: [192.0.2.9]
    searches: [my.example, svc.cluster.local]
    options: [{name: ndots, value: "2"}, {name: single-request}]
  containers: [{name: c, image: berth.local/busybox:1.35, command: [sleep, "3600"]}]
"#,
    );
    for pod in [
        "subpaths",
        "dns-cluster-first",
        "dns-default",
        "dns-none",
        "dns-merged",
    ] {
        c.wait_pod(pod, "Ready", ready);
    }
    let sh = |pod: &str, script: &str| c.kubectl.ok(&["exec", pod, "--", "sh", "-c", script]);

    // subPath: the emptyDir's `sub` alone at /sub, the configMap's `greeting` key alone
    // as a file, and writes through the sub-path land in the volume.
    let mut listing = String::new();
    c.wait("the pod's files", Duration::from_secs(20), || {
        listing = sh("subpaths", "ls -A /sub; echo --; ls -A /all");
        listing.contains("other")
    });
    assert_eq!(listing, "file\n--\nother\nsub\n", "/sub then /all");
    assert_eq!(sh("subpaths", "cat /sub/file"), "in-sub\n");
    sh("subpaths", "echo through-sub > /sub/new");
    assert_eq!(sh("subpaths", "cat /all/sub/new"), "through-sub\n");
    assert_eq!(sh("subpaths", "cat /etc/app/greeting.txt"), "hello");
    assert_eq!(
        sh("subpaths", "ls -A /etc/app"),
        "greeting.txt\n",
        "only the key the subPath names"
    );

    // dnsPolicy. The host's resolv.conf, as Default gives it (without loopback
    // resolvers, unreachable from a pod's network namespace).
    let (mut host_ns, host_search, host_opts) =
        resolv(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
    host_ns.retain(|n| !n.starts_with("127.") && n != "::1");
    let read = |pod: &str| {
        resolv(
            &c.kubectl
                .ok(&["exec", pod, "--", "cat", "/etc/resolv.conf"]),
        )
    };

    // ClusterFirst: the cluster DNS, `<ns>.svc.<domain> svc.<domain> <domain>` then the
    // host's searches, ndots:5.
    let mut cluster_search = strings(&[
        "default.svc.cluster.local",
        "svc.cluster.local",
        "cluster.local",
    ]);
    cluster_search.extend(host_search.iter().cloned());
    assert_eq!(
        read("dns-cluster-first"),
        (
            strings(&[CLUSTER_DNS]),
            cluster_search.clone(),
            BTreeSet::from(["ndots:5".to_owned()])
        ),
        "ClusterFirst"
    );
    // Default: the node's resolv.conf.
    assert_eq!(
        read("dns-default"),
        (host_ns, host_search, host_opts),
        "Default"
    );
    // None: exactly the pod's dnsConfig.
    assert_eq!(
        read("dns-none"),
        (
            strings(&["192.0.2.1", "192.0.2.2"]),
            strings(&["a.example", "b.example"]),
            BTreeSet::from(["ndots:2".to_owned(), "edns0".to_owned()])
        ),
        "None with dnsConfig"
    );
    // dnsConfig merged into ClusterFirst as the kubelet's appendDNSConfig does:
    // nameservers and searches appended without duplicates, options by name (the
    // pod's ndots:2 replaces ndots:5).
    let mut merged_search = cluster_search;
    merged_search.push("my.example".to_owned());
    assert_eq!(
        read("dns-merged"),
        (
            strings(&[CLUSTER_DNS, "192.0.2.9"]),
            merged_search,
            BTreeSet::from(["ndots:2".to_owned(), "single-request".to_owned()])
        ),
        "ClusterFirst merged with dnsConfig"
    );
    c.kubectl
        .ok(&["delete", "pod", "--all", "--wait=true", "--timeout=60s"]);
    c.wait_clean();
}

/// `runAsNonRoot` as the kubelet checks it (CreateContainerConfigError with its words;
/// `runAsUser` 1000 runs as 1000); sysctls
/// admitted as the kubelet admits them (a safe one set in the pod's network namespace,
/// an unsafe one rejected: phase Failed, reason SysctlForbidden); an AppArmor profile
/// rejected (reason AppArmor) on this host without AppArmor; a subPath leading out of
/// its volume refused, subPathExpr expanded; `kubectl cp` both ways.
#[test]
fn run_as_non_root_sysctls_and_host_namespaces_as_the_kubelet_admits_them() {
    require_root!();
    let Some(c) = cluster() else { return };
    c.kubectl.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: nonroot-image-root}
spec:
  terminationGracePeriodSeconds: 1
  securityContext: {runAsNonRoot: true}
  containers:
  - {name: c, image: berth.local/busybox:1.35, command: [sleep, "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: nonroot-as-1000}
spec:
  terminationGracePeriodSeconds: 1
  securityContext: {runAsNonRoot: true, runAsUser: 1000}
  containers:
  - name: c
    image: berth.local/busybox:1.35
    command: [sleep, "3600"]
    resources: {limits: {memory: 64Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: nonroot-user-zero}
spec:
  terminationGracePeriodSeconds: 1
  securityContext: {runAsNonRoot: true}
  containers:
  - name: c
    image: berth.local/busybox:1.35
    command: [sleep, "3600"]
    securityContext: {runAsUser: 0}
---
apiVersion: v1
kind: Pod
metadata: {name: safe-sysctl}
spec:
  terminationGracePeriodSeconds: 1
  securityContext:
    sysctls: [{name: net.ipv4.ip_local_port_range, value: "20000 30000"}]
  containers:
  - {name: c, image: berth.local/busybox:1.35, command: [sleep, "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: unsafe-sysctl}
spec:
  terminationGracePeriodSeconds: 1
  securityContext:
    sysctls: [{name: kernel.msgmax, value: "65536"}]
  containers:
  - {name: c, image: berth.local/busybox:1.35, command: [sleep, "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: apparmor}
spec:
  terminationGracePeriodSeconds: 1
  securityContext:
    appArmorProfile: {type: RuntimeDefault}
  containers:
  - {name: c, image: berth.local/busybox:1.35, command: [sleep, "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: selinux}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: berth.local/busybox:1.35
    command: [sleep, "3600"]
    securityContext: {seLinuxOptions: {level: "s0:c123,c456"}}
---
apiVersion: v1
kind: Pod
metadata: {name: subpath-escape}
spec:
  terminationGracePeriodSeconds: 1
  initContainers:
  - name: plant
    image: berth.local/busybox:1.35
    command: [sh, -c, "ln -s / /data/sub"]
    volumeMounts: [{name: data, mountPath: /data}]
  containers:
  - name: c
    image: berth.local/busybox:1.35
    command: [sleep, "3600"]
    volumeMounts: [{name: data, mountPath: /host, subPath: sub}]
  volumes: [{name: data, emptyDir: {}}]
---
apiVersion: v1
kind: Pod
metadata: {name: subpath-expr}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: writer
    image: berth.local/busybox:1.35
    command: [sh, -c, "echo written > /out/f; exec sleep 3600"]
    env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
    volumeMounts: [{name: data, mountPath: /out, subPathExpr: "$(POD_NAME)"}]
  - name: reader
    image: berth.local/busybox:1.35
    command: [sleep, "3600"]
    volumeMounts: [{name: data, mountPath: /all}]
  volumes: [{name: data, emptyDir: {}}]
"#,
    );
    let waiting = |name: &str| {
        let pod = c.wait_pod(name, "CreateContainerConfigError", |p| {
            Cluster::container_status(p, "c")["state"]["waiting"]["reason"]
                == "CreateContainerConfigError"
        });
        Cluster::container_status(&pod, "c")["state"]["waiting"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let uid = |name: &str| {
        c.kubectl.json(&["get", "pod", name])["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(
        waiting("nonroot-image-root"),
        format!(
            "container has runAsNonRoot and image will run as root (pod: \"nonroot-image-root_default({})\", container: c)",
            uid("nonroot-image-root")
        )
    );
    assert_eq!(
        waiting("nonroot-user-zero"),
        format!(
            "container's runAsUser breaks non-root policy (pod: \"nonroot-user-zero_default({})\", container: c)",
            uid("nonroot-user-zero")
        )
    );
    c.wait_pod("nonroot-as-1000", "Ready", ready);
    let out = c
        .kubectl
        .run(&["exec", "nonroot-as-1000", "--", "id", "-u"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1000");
    // The container sees its own cgroup: its 64Mi limit (v1 layout here; memory.max on
    // a pure v2 host).
    let out = c.kubectl.run(&[
        "exec",
        "nonroot-as-1000",
        "--",
        "sh",
        "-c",
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "67108864");

    c.wait_pod("safe-sysctl", "Ready", ready);
    let out = c.kubectl.run(&[
        "exec",
        "safe-sysctl",
        "--",
        "cat",
        "/proc/sys/net/ipv4/ip_local_port_range",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["20000", "30000"]
    );
    let pod = c.wait_pod("unsafe-sysctl", "rejected", |p| {
        p["status"]["phase"] == "Failed"
    });
    assert_eq!(pod["status"]["reason"], "SysctlForbidden", "{pod}");
    assert_eq!(
        pod["status"]["message"],
        r#"Pod was rejected: forbidden sysctl: "kernel.msgmax" not allowlisted"#
    );
    assert!(
        pod["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|s| !s["state"]["running"].is_object()),
        "{pod}"
    );
    let events = events_of(&c, "unsafe-sysctl");
    assert!(
        events.iter().any(|(r, m)| r == "SysctlForbidden"
            && m == r#"forbidden sysctl: "kernel.msgmax" not allowlisted"#),
        "{events:?}"
    );

    // subPath: a symlink an init container planted to lead out of the volume is not
    // followed; the container waits in CreateContainerConfigError, as under the kubelet.
    let pod = c.wait_pod("subpath-escape", "CreateContainerConfigError", |p| {
        Cluster::container_status(p, "c")["state"]["waiting"]["reason"]
            == "CreateContainerConfigError"
    });
    assert_eq!(
        Cluster::container_status(&pod, "c")["state"]["waiting"]["message"],
        r#"failed to prepare subPath for volumeMount "data" of container "c""#
    );
    // subPathExpr: the pod's name from the environment picks the directory.
    c.wait_pod("subpath-expr", "Ready", ready);
    // kubectl cp both ways (tar through exec).
    let local = tempfile::tempdir().expect("tempdir");
    std::fs::write(local.path().join("in.txt"), "copied in\n").expect("write");
    let src = local.path().join("in.txt").display().to_string();
    c.kubectl
        .ok(&["cp", &src, "subpath-expr:/tmp/in.txt", "-c", "reader"]);
    let out = c.kubectl.run(&[
        "exec",
        "subpath-expr",
        "-c",
        "reader",
        "--",
        "cat",
        "/tmp/in.txt",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "copied in\n");
    let back = local.path().join("out.txt").display().to_string();
    c.kubectl.ok(&[
        "cp",
        "subpath-expr:/all/subpath-expr/f",
        &back,
        "-c",
        "reader",
    ]);
    assert_eq!(
        std::fs::read_to_string(local.path().join("out.txt")).expect("copied out"),
        "written\n"
    );
    let out = c.kubectl.run(&[
        "exec",
        "subpath-expr",
        "-c",
        "reader",
        "--",
        "cat",
        "/all/subpath-expr/f",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "written");

    // AppArmor: not on this host, so a pod asking for a profile is rejected as the
    // kubelet rejects it, never run unconfined.
    let pod = c.wait_pod("apparmor", "rejected", |p| p["status"]["phase"] == "Failed");
    assert_eq!(pod["status"]["reason"], "AppArmor", "{pod}");
    let message = pod["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("Pod was rejected: Cannot enforce AppArmor: "),
        "{message}"
    );
    let events = events_of(&c, "apparmor");
    assert!(
        events
            .iter()
            .any(|(r, m)| r == "AppArmor" && m.starts_with("Cannot enforce AppArmor: ")),
        "{events:?}"
    );
    // SELinux options likewise: this host has no SELinux, and berth labels nothing.
    let pod = c.wait_pod("selinux", "rejected", |p| p["status"]["phase"] == "Failed");
    assert_eq!(pod["status"]["reason"], "SELinux", "{pod}");
    assert_eq!(
        pod["status"]["message"],
        "Pod was rejected: Cannot enforce SELinux: SELinux is not enabled on the host",
        "{pod}"
    );

    c.kubectl.ok(&[
        "delete",
        "pod",
        "nonroot-image-root",
        "nonroot-as-1000",
        "nonroot-user-zero",
        "safe-sysctl",
        "unsafe-sysctl",
        "apparmor",
        "selinux",
        "subpath-escape",
        "subpath-expr",
        "--wait=false",
    ]);
}

/// Container GC: with `--maximum-dead-containers-per-container=0` a restarted
/// container's dead instance is removed with its log at once, so `kubectl logs
/// --previous` finds none (the default, 1, keeps it: `node_agent.rs` reads it).
#[test]
fn maximum_dead_containers_per_container_zero_keeps_no_previous_instance() {
    require_root!();
    let Some(c) = common::cluster_full(
        &["--controllers=false"],
        &["--maximum-dead-containers-per-container=0"],
    ) else {
        return;
    };
    c.kubectl.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: berth.local/busybox:1.35, command: [sh, -c, "echo crashing; sleep 1; exit 3"]}
"#,
    );
    c.wait_pod("crasher", "a restart", |p| {
        Cluster::container_status(p, "c")["restartCount"]
            .as_i64()
            .unwrap_or(0)
            >= 1
    });
    let out = c.kubectl.run(&["logs", "crasher", "--previous"]);
    assert!(!out.status.success(), "a previous instance was kept");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"previous terminated container "c" in pod "crasher" not found"#),
        "{err}"
    );
    c.kubectl.ok(&["logs", "crasher"]);
    c.kubectl.ok(&["delete", "pod", "crasher", "--wait=false"]);
}

/// httpGet over HTTPS (no certificate verification), custom headers, redirects (same
/// host followed, another host not followed and counted as success) and grpc probes
/// against the testserver's HTTPS and gRPC health endpoints, with the kubelet's failure
/// messages in the `Unhealthy` events.
#[test]
fn https_grpc_header_and_redirect_probes_as_the_kubelet_runs_them() {
    require_root!();
    let Some(c) = cluster() else { return };
    c.kubectl.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: secure}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: berth.local/testserver:v1
    imagePullPolicy: Never
    startupProbe:
      httpGet:
        path: /header?name=X-Probe
        port: 8080
        httpHeaders: [{name: X-Probe, value: "yes"}]
      periodSeconds: 1
      failureThreshold: 10
    readinessProbe: {httpGet: {scheme: HTTPS, path: /healthz, port: 8443}, periodSeconds: 1}
    livenessProbe: {grpc: {port: 9090, service: testserver}, periodSeconds: 1, failureThreshold: 3}
---
apiVersion: v1
kind: Pod
metadata: {name: redirect-away}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: berth.local/testserver:v1
    imagePullPolicy: Never
    readinessProbe: {httpGet: {path: "/redirect?to=http://elsewhere.invalid:8080/healthz", port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: redirect-404}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: berth.local/testserver:v1
    imagePullPolicy: Never
    readinessProbe: {httpGet: {path: "/redirect?to=/missing", port: 8080}, periodSeconds: 1}
    livenessProbe: {grpc: {port: 9090, service: no-such-service}, periodSeconds: 1, failureThreshold: 100}
"#,
    );
    // All three probes of `secure` pass: Ready, never restarted.
    c.wait_pod("secure", "Ready", ready);
    // A redirect to another host is not followed: its 302 counts as success.
    c.wait_pod("redirect-away", "Ready", ready);
    // A same-host redirect is followed to a 404: never Ready; an unknown gRPC service
    // fails the liveness probe with the kubelet's message.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut readiness, mut liveness) = (false, false);
    while !(readiness && liveness) && Instant::now() < deadline {
        for (reason, msg) in events_of(&c, "redirect-404") {
            if reason != "Unhealthy" {
                continue;
            }
            readiness |= msg == "Readiness probe failed: HTTP probe failed with statuscode: 404";
            liveness |= msg.starts_with(
                "Liveness probe failed: error: health rpc probe failed: rpc error: code = NotFound",
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let events = events_of(&c, "redirect-404");
    assert!(readiness, "a followed redirect to a 404: {events:?}");
    assert!(liveness, "an unknown gRPC service: {events:?}");
    let pod = c.kubectl.json(&["get", "pod", "redirect-404"]);
    assert!(!ready(&pod), "Ready behind a 404: {pod}");

    let pod = c.kubectl.json(&["get", "pod", "secure"]);
    assert_eq!(
        Cluster::container_status(&pod, "c")["restartCount"],
        0,
        "{pod}"
    );
    // /healthz fails: the HTTPS readiness probe takes the pod out, and the gRPC liveness
    // probe (NOT_SERVING) restarts the container, whose new process is healthy again.
    c.kubectl.ok(&[
        "exec",
        "secure",
        "--",
        "wget",
        "-qO-",
        "http://127.0.0.1:8080/healthz/fail",
    ]);
    c.wait_pod("secure", "restarted by its gRPC liveness probe", |p| {
        Cluster::container_status(p, "c")["restartCount"]
            .as_i64()
            .unwrap_or(0)
            >= 1
    });
    let events = events_of(&c, "secure");
    assert!(
        events.iter().any(|(r, m)| r == "Unhealthy"
            && m == r#"Liveness probe failed: service unhealthy (responded with "NOT_SERVING")"#),
        "{events:?}"
    );
    assert!(
        events.iter().any(|(r, m)| r == "Unhealthy"
            && m == "Readiness probe failed: HTTP probe failed with statuscode: 500"),
        "{events:?}"
    );
    c.wait_pod("secure", "Ready again after the restart", ready);
    c.kubectl.ok(&[
        "delete",
        "pod",
        "secure",
        "redirect-away",
        "redirect-404",
        "--wait=false",
    ]);
}

/// hostNetwork, hostPID and hostIPC pods run in the node's namespaces: a hostNetwork
/// testserver has the node's network namespace, hostname and resolver, its pod IP is the
/// node's, it serves on the node's address and its probe passes there; a hostPID pod
/// sees the host's PID 1; a hostIPC pod has the host's IPC namespace. Deleting them
/// leaves the node's namespaces as they were.
#[test]
fn host_network_pid_and_ipc_pods_run_in_the_nodes_namespaces() {
    require_root!();
    let Some(c) = cluster() else { return };
    c.kubectl.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: host-net}
spec:
  terminationGracePeriodSeconds: 1
  hostNetwork: true
  containers:
  - name: c
    image: berth.local/testserver:v1
    imagePullPolicy: Never
    args: [--http-port, "18081", --https-port, "18443", --grpc-port, "19090", --tcp-port, "19000", --udp-port, "19001"]
    ports: [{containerPort: 18081}]
    readinessProbe: {httpGet: {path: /healthz, port: 18081}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: host-pid}
spec:
  terminationGracePeriodSeconds: 1
  hostPID: true
  containers:
  - {name: c, image: berth.local/busybox:1.35, command: [sleep, "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: host-ipc}
spec:
  terminationGracePeriodSeconds: 1
  hostIPC: true
  containers:
  - {name: c, image: berth.local/busybox:1.35, command: [sleep, "3600"]}
"#,
    );
    let ns = |kind: &str| {
        std::fs::read_link(format!("/proc/self/ns/{kind}"))
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    let inside = |pod: &str, cmd: &[&str]| {
        let mut args = vec!["exec", pod, "--"];
        args.extend_from_slice(cmd);
        c.kubectl.ok(&args).trim().to_string()
    };

    let pod = c.wait_pod("host-net", "Ready", ready);
    let host_ip = pod["status"]["hostIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!host_ip.is_empty(), "{pod}");
    assert_eq!(
        pod["status"]["podIP"], host_ip,
        "the pod IP is the node's: {pod}"
    );
    assert_eq!(
        inside("host-net", &["readlink", "/proc/self/ns/net"]),
        ns("net")
    );
    let node_hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    assert_eq!(inside("host-net", &["hostname"]), node_hostname);
    // ClusterFirst on the host's network is the node's resolver (dnsPolicy Default).
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let servers = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("nameserver"))
            .map(String::from)
            .collect()
    };
    assert_eq!(
        servers(&inside("host-net", &["cat", "/etc/resolv.conf"])),
        servers(&host_resolv)
    );
    // The testserver answers on the node's address, from outside the pod.
    let mut s = std::net::TcpStream::connect((host_ip.as_str(), 18081)).expect("node port");
    use std::io::{Read, Write};
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(&node_hostname), "{answer}");

    c.wait_pod("host-pid", "Running", |p| p["status"]["phase"] == "Running");
    assert_eq!(
        inside("host-pid", &["readlink", "/proc/self/ns/pid"]),
        ns("pid")
    );
    let host_init = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    assert_eq!(
        inside("host-pid", &["cat", "/proc/1/comm"]),
        host_init.trim()
    );

    c.wait_pod("host-ipc", "Running", |p| p["status"]["phase"] == "Running");
    assert_eq!(
        inside("host-ipc", &["readlink", "/proc/self/ns/ipc"]),
        ns("ipc")
    );
    assert_ne!(
        inside("host-pid", &["readlink", "/proc/self/ns/ipc"]),
        ns("ipc")
    );

    c.kubectl.ok(&[
        "delete",
        "pod",
        "host-net",
        "host-pid",
        "host-ipc",
        "--wait=true",
        "--timeout=60s",
    ]);
    // The node's namespaces and name are untouched.
    assert_eq!(
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        node_hostname
    );
    assert!(std::net::TcpStream::connect((host_ip.as_str(), 18081)).is_err());
    c.wait_clean();
}

/// Ephemeral containers as `kubectl debug` makes them: one targeting a container shares
/// its PID namespace (sees its process as PID 1), `-i` attaches to it, the apiserver
/// refuses changing or removing one and the fields an ephemeral container cannot have
/// (422 with upstream's messages), and `kubectl debug node/…` runs a pod in the node's
/// namespaces with the node's root at /host.
#[test]
fn kubectl_debug_ephemeral_containers_and_node_debugging() {
    require_root!();
    let Some(c) = cluster() else { return };
    c.kubectl.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: target}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: app, image: berth.local/busybox:1.35, command: [sh, -c, "exec sleep 3601"]}
"#,
    );
    c.wait_pod("target", "Running", |p| p["status"]["phase"] == "Running");
    // -i: kubectl waits for the container to run and attaches to its output.
    let out = c.kubectl.ok(&[
        "debug",
        "-i",
        "target",
        "--image=berth.local/busybox:1.35",
        "--image-pull-policy=Never",
        "--target=app",
        "-c",
        "dbg",
        "--",
        "sh",
        "-c",
        "sleep 5; cat /proc/1/cmdline | tr '\\0' ' '; echo; echo done",
    ]);
    let pod = c.wait_pod("target", "the ephemeral container finished", |p| {
        p["status"]["ephemeralContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    });
    // What the attach printed; on a loaded machine the attach may come after the
    // output, which the container's log still has.
    let logs = c.kubectl.ok(&["logs", "target", "-c", "dbg"]);
    assert!(
        out.contains("sleep 3601") || logs.contains("sleep 3601"),
        "the target's PID namespace: {out}\nlog: {logs}"
    );
    let st = &pod["status"]["ephemeralContainerStatuses"][0];
    assert_eq!(st["name"], "dbg", "{st}");
    assert_eq!(st["ready"], false, "{st}");
    assert_eq!(
        pod["spec"]["ephemeralContainers"][0]["targetContainerName"],
        "app"
    );
    // Never restarted, and the pod stays Running and Ready.
    std::thread::sleep(Duration::from_secs(2));
    let pod = c.kubectl.json(&["get", "pod", "target"]);
    assert_eq!(
        pod["status"]["ephemeralContainerStatuses"][0]["restartCount"], 0,
        "{pod}"
    );
    assert!(ready(&pod), "{pod}");

    // The subresource's validation, as kube-apiserver's.
    let raw = |patch: &str| {
        c.kubectl.run(&[
            "patch",
            "pod",
            "target",
            "--subresource=ephemeralcontainers",
            "--type=json",
            "-p",
            patch,
        ])
    };
    let err = |out: std::process::Output| String::from_utf8_lossy(&out.stderr).into_owned();
    let out =
        raw(r#"[{"op":"replace","path":"/spec/ephemeralContainers/0/image","value":"other"}]"#);
    assert!(!out.status.success());
    let e = err(out);
    assert!(
        e.contains(r#"spec.ephemeralContainers[0]: Forbidden: existing ephemeral containers "dbg" may not be changed"#),
        "{e}"
    );
    let out = raw(r#"[{"op":"remove","path":"/spec/ephemeralContainers/0"}]"#);
    assert!(
        err(out).contains(r#"existing ephemeral containers "dbg" may not be removed"#),
        "removal"
    );
    let out = raw(
        r#"[{"op":"add","path":"/spec/ephemeralContainers/-","value":{"name":"app","image":"x","ports":[{"containerPort":80}],"targetContainerName":"nope"}}]"#,
    );
    let e = err(out);
    for want in [
        r#"spec.ephemeralContainers[1].name: Duplicate value: "app""#,
        "spec.ephemeralContainers[1].ports: Forbidden: cannot be set for an Ephemeral Container",
        r#"spec.ephemeralContainers[1].targetContainerName: Not found: "nope""#,
    ] {
        assert!(e.contains(want), "{want} in {e}");
    }

    // A node debugging pod: the node's PID and network namespaces, its root at /host.
    let out = c.kubectl.ok(&[
        "debug",
        "node/node-e2e",
        "--image=berth.local/busybox:1.35",
        "--image-pull-policy=Never",
        "--",
        "sh",
        "-c",
        "cat /host/proc/1/comm; readlink /proc/self/ns/net; sleep 3600",
    ]);
    let name = out
        .split_whitespace()
        .find(|w| w.starts_with("node-debugger-node-e2e-"))
        .unwrap_or_else(|| panic!("no debugger pod named in {out}"))
        .trim_end_matches('.')
        .to_string();
    let pod = c.wait_pod(&name, "Running", |p| p["status"]["phase"] == "Running");
    assert_eq!(pod["spec"]["hostPID"], true, "{pod}");
    assert_eq!(pod["spec"]["hostNetwork"], true, "{pod}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let host_init = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    let net = std::fs::read_link("/proc/self/ns/net")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    loop {
        let logs = c.kubectl.ok(&["logs", &name]);
        if logs.contains(host_init.trim()) && logs.contains(&net) {
            break;
        }
        assert!(Instant::now() < deadline, "{logs}");
        std::thread::sleep(Duration::from_millis(500));
    }
    c.kubectl.ok(&[
        "delete",
        "pod",
        "target",
        &name,
        "--wait=true",
        "--timeout=60s",
    ]);
    c.wait_clean();
}

/// `hostUsers: false`: the pod gets its own user namespace with a 65 536-id range from
/// the node's allocator — root inside is an unprivileged uid on the host (its
/// `/proc/<pid>/uid_map` and `Uid:` read from the host), the image's files and an
/// emptyDir are root's inside (idmapped mounts) and writable; `procMount: Unmasked`
/// leaves /proc unmasked there; the apiserver refuses Unmasked without it; nothing is
/// left after deletion.
#[test]
fn host_users_false_runs_the_pod_in_its_own_user_namespace() {
    require_root!();
    let Some(c) = cluster() else { return };
    c.kubectl.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: userns}
spec:
  terminationGracePeriodSeconds: 1
  hostUsers: false
  containers:
  - name: c
    image: berth.local/busybox:1.35
    command: [sh, -c, "exec sleep 3602"]
    volumeMounts: [{name: data, mountPath: /data}]
  - name: unmasked
    image: berth.local/busybox:1.35
    command: [sleep, "3600"]
    securityContext: {procMount: Unmasked}
  volumes: [{name: data, emptyDir: {}}]
"#,
    );
    c.wait_pod("userns", "Running", |p| {
        p["status"]["phase"] == "Running"
            && p["status"]["containerStatuses"]
                .as_array()
                .is_some_and(|cs| cs.iter().all(|s| s["ready"] == true))
    });
    let inside = |container: &str, script: &str| {
        c.kubectl
            .ok(&["exec", "userns", "-c", container, "--", "sh", "-c", script])
            .trim()
            .to_string()
    };
    let map = inside("c", "cat /proc/self/uid_map");
    let fields: Vec<u64> = map
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    assert_eq!(fields.len(), 3, "{map}");
    let (base, size) = (fields[1], fields[2]);
    assert_eq!((fields[0], size), (0, 65_536), "{map}");
    assert!(base >= 65_536 && base % 65_536 == 0, "{map}");
    assert_eq!(
        inside("c", "cat /proc/self/gid_map")
            .split_whitespace()
            .nth(1),
        Some(base.to_string().as_str())
    );
    assert_eq!(inside("c", "id -u; id -g"), "0\n0");
    // The image's files are root's inside, and root can write its rootfs and its volume.
    assert_eq!(inside("c", "stat -c %u:%g /bin /etc/hostname"), "0:0\n0:0");
    assert_eq!(
        inside(
            "c",
            "echo ok > /tmp/f && cat /tmp/f && echo vol > /data/x && stat -c %u /data/x"
        ),
        "ok\n0"
    );
    // From the host: the container's process runs as the range's first uid.
    let host_uid = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x003602\x00")
        })
        .find_map(|e| {
            let map = std::fs::read_to_string(e.path().join("uid_map")).ok()?;
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            let uid = status
                .lines()
                .find(|l| l.starts_with("Uid:"))?
                .split_whitespace()
                .nth(1)?
                .to_string();
            Some((map, uid))
        })
        .expect("the container's process on the host");
    assert_eq!(
        host_uid.0.split_whitespace().collect::<Vec<_>>(),
        ["0", base.to_string().as_str(), "65536"],
        "{host_uid:?}"
    );
    assert_eq!(host_uid.1, base.to_string(), "{host_uid:?}");
    // procMount: Unmasked leaves nothing mounted over /proc's files; the default masks
    // /proc/kcore and the rest and makes /proc/sys read-only.
    let over_proc = "grep -c ' /proc/' /proc/self/mountinfo || true";
    assert_eq!(inside("unmasked", over_proc), "0");
    assert_ne!(inside("c", over_proc), "0");

    // Unmasked without a user namespace is refused by the apiserver.
    let out = c.kubectl.run_with_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: Pod
metadata: {name: unmasked-host-users}
spec:
  containers:
  - {name: c, image: berth.local/busybox:1.35, command: [sleep, "1"], securityContext: {procMount: Unmasked}}
"#,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.containers[0].securityContext.procMount: Invalid value: \"Unmasked\": `hostUsers` must be false to use `Unmasked`"),
        "{err}"
    );

    c.kubectl
        .ok(&["delete", "pod", "userns", "--wait=true", "--timeout=60s"]);
    c.wait_clean();
}

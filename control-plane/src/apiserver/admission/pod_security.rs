//! Pod Security admission, as kube-apiserver's built-in PodSecurity plugin: a
//! namespace's `pod-security.kubernetes.io/{enforce,warn,audit}[-version]` labels pick a
//! level — `privileged` (no checks), `baseline`, `restricted` — and the Pod Security
//! Standards checks of the latest version run on pods as they are created or updated
//! significantly (containers added or removed, an image changed). Enforce refuses with
//! 403 and upstream's message (`pods "x" is forbidden: violates PodSecurity
//! "restricted:latest": <reason> (<detail>), …`); warn adds a `Warning` (`would violate
//! PodSecurity "…": …`), audit adds `pod-security.kubernetes.io/audit-violations` to the
//! request's audit event, and on a workload's pod template only warn applies. Checks run
//! in upstream's order, with its reasons and details word for word. Invalid labels are
//! refused on the namespace (422); on a namespace that has them anyway, enforce fails
//! closed (`restricted`). No labels: privileged. Versions are accepted as written
//! (`latest` or `v1.x`) and evaluated with the latest checks.

use serde_json::{Map, Value};

use crate::apiserver::status::{ApiError, Cause};
use crate::apiserver::watch_cache::WatchCache;

const PREFIX: &str = "pod-security.kubernetes.io/";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "privileged" => Some(Self::Privileged),
            "baseline" => Some(Self::Baseline),
            "restricted" => Some(Self::Restricted),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Privileged => "privileged",
            Self::Baseline => "baseline",
            Self::Restricted => "restricted",
        }
    }
}

/// A level and the version as the label wrote it (`restricted:latest`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct LevelVersion {
    level: Level,
    version: String,
}

impl std::fmt::Display for LevelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.level.name(), self.version)
    }
}

fn valid_version(v: &str) -> bool {
    v == "latest"
        || v.strip_prefix("v1.").is_some_and(|n| {
            !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
                && (n == "0" || !n.starts_with('0'))
        })
}

/// The namespace label errors, as causes on `metadata.labels[<label>]`.
pub fn validate_labels(labels: Option<&Map<String, Value>>) -> Vec<Cause> {
    let mut causes = Vec::new();
    for mode in ["enforce", "audit", "warn"] {
        let key = format!("{PREFIX}{mode}");
        if let Some(v) = labels.and_then(|l| l.get(&key)).and_then(Value::as_str)
            && Level::parse(v).is_none()
        {
            causes.push(Cause::invalid(
                format!("metadata.labels[{key}]"),
                format!("Invalid value: {v:?}: must be one of privileged, baseline, restricted"),
            ));
        }
        let key = format!("{PREFIX}{mode}-version");
        if let Some(v) = labels.and_then(|l| l.get(&key)).and_then(Value::as_str)
            && !valid_version(v)
        {
            causes.push(Cause::invalid(
                format!("metadata.labels[{key}]"),
                format!("Invalid value: {v:?}: must be \"latest\" or \"v1.x\""),
            ));
        }
    }
    causes
}

/// The namespace's enforce and warn policies. An invalid enforce level fails closed
/// (restricted), an invalid warn level open (privileged), an invalid version is latest;
/// warn defaults to enforce when that is stricter, as upstream.
fn policy(labels: Option<&Map<String, Value>>) -> (LevelVersion, LevelVersion) {
    let get = |k: &str| {
        labels
            .and_then(|l| l.get(&format!("{PREFIX}{k}")))
            .and_then(Value::as_str)
    };
    let version = |mode: &str| {
        get(&format!("{mode}-version"))
            .filter(|v| valid_version(v))
            .unwrap_or("latest")
            .to_owned()
    };
    let enforce_level = match get("enforce") {
        None => Level::Privileged,
        Some(v) => Level::parse(v).unwrap_or(Level::Restricted),
    };
    let enforce = LevelVersion {
        level: enforce_level,
        version: version("enforce"),
    };
    let warn = match get("warn") {
        Some(v) => LevelVersion {
            level: Level::parse(v).unwrap_or(Level::Privileged),
            version: version("warn"),
        },
        None if get("enforce").and_then(Level::parse).is_some() => LevelVersion {
            level: enforce.level,
            version: get("warn-version")
                .filter(|v| valid_version(v))
                .map_or_else(|| enforce.version.clone(), str::to_owned),
        },
        None => LevelVersion {
            level: Level::Privileged,
            version: version("warn"),
        },
    };
    (enforce, warn)
}

fn join_quote(items: &[String]) -> String {
    if items.is_empty() {
        return String::new();
    }
    format!("\"{}\"", items.join("\", \""))
}

fn pluralize<'a>(singular: &'a str, plural: &'a str, n: usize) -> &'a str {
    if n == 1 { singular } else { plural }
}

fn containers_phrase(names: &[String]) -> String {
    format!(
        "{} {}",
        pluralize("container", "containers", names.len()),
        join_quote(names)
    )
}

fn sorted_unique(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

/// (name, securityContext) of init containers, containers and ephemeral containers, in
/// that order.
fn containers(spec: &Value) -> Vec<(String, &Value)> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| spec.get(*k).and_then(Value::as_array).into_iter().flatten())
        .map(|c| {
            (
                c.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                c,
            )
        })
        .collect()
}

fn sc(c: &Value) -> Option<&Value> {
    c.get("securityContext").filter(|v| v.is_object())
}

fn str_at<'a>(v: Option<&'a Value>, path: &str) -> Option<&'a str> {
    v.and_then(|v| v.pointer(path)).and_then(Value::as_str)
}

fn bool_at(v: Option<&Value>, path: &str) -> Option<bool> {
    v.and_then(|v| v.pointer(path)).and_then(Value::as_bool)
}

type Failure = (String, String);

fn app_armor(meta: &Value, spec: &Value) -> Option<Failure> {
    let ok = |t: &str| t == "RuntimeDefault" || t == "Localhost";
    let mut setters = Vec::new();
    let mut values = Vec::new();
    if let Some(t) = str_at(spec.get("securityContext"), "/appArmorProfile/type")
        && !ok(t)
    {
        setters.push("pod".to_owned());
        values.push(t.to_owned());
    }
    let mut bad = Vec::new();
    for (name, c) in containers(spec) {
        if let Some(t) = str_at(sc(c), "/appArmorProfile/type")
            && !ok(t)
        {
            bad.push(name);
            values.push(t.to_owned());
        }
    }
    if !bad.is_empty() {
        setters.push(containers_phrase(&bad));
    }
    let mut annotations = 0;
    for (k, v) in meta
        .get("annotations")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let v = v.as_str().unwrap_or_default();
        if k.starts_with("container.apparmor.security.beta.kubernetes.io/")
            && !(v.is_empty() || v == "runtime/default" || v.starts_with("localhost/"))
        {
            annotations += 1;
            values.push(v.to_owned());
        }
    }
    if annotations > 0 {
        setters.push(pluralize("annotation", "annotations", annotations).to_owned());
    }
    if setters.is_empty() {
        return None;
    }
    let values = sorted_unique(values);
    Some((
        pluralize(
            "forbidden AppArmor profile",
            "forbidden AppArmor profiles",
            values.len(),
        )
        .to_owned(),
        format!(
            "{} must not set AppArmor profile type to {}",
            setters.join(" and "),
            join_quote(&values)
        ),
    ))
}

const BASELINE_CAPS: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

fn added_caps(c: &Value) -> Vec<String> {
    sc(c)
        .and_then(|s| s.pointer("/capabilities/add"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

fn capabilities_baseline(spec: &Value) -> Option<Failure> {
    let mut names = Vec::new();
    let mut caps = Vec::new();
    for (name, c) in containers(spec) {
        let bad: Vec<String> = added_caps(c)
            .into_iter()
            .filter(|cap| !BASELINE_CAPS.contains(&cap.as_str()))
            .collect();
        if !bad.is_empty() {
            names.push(name);
            caps.extend(bad);
        }
    }
    (!names.is_empty()).then(|| {
        (
            "non-default capabilities".to_owned(),
            format!(
                "{} must not include {} in securityContext.capabilities.add",
                containers_phrase(&names),
                join_quote(&sorted_unique(caps))
            ),
        )
    })
}

fn host_namespaces(spec: &Value) -> Option<Failure> {
    let list: Vec<&str> = ["hostNetwork", "hostPID", "hostIPC"]
        .into_iter()
        .filter(|k| spec.get(*k).and_then(Value::as_bool) == Some(true))
        .collect();
    (!list.is_empty()).then(|| {
        (
            "host namespaces".to_owned(),
            list.iter()
                .map(|k| format!("{k}=true"))
                .collect::<Vec<_>>()
                .join(", "),
        )
    })
}

fn volumes(spec: &Value) -> Vec<&Map<String, Value>> {
    spec.get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .collect()
}

fn host_path_volumes(spec: &Value) -> Option<Failure> {
    let names: Vec<String> = volumes(spec)
        .into_iter()
        .filter(|v| v.contains_key("hostPath"))
        .map(|v| {
            v.get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    (!names.is_empty()).then(|| {
        (
            "hostPath volumes".to_owned(),
            format!(
                "{} {}",
                pluralize("volume", "volumes", names.len()),
                join_quote(&names)
            ),
        )
    })
}

fn host_ports(spec: &Value) -> Option<Failure> {
    let mut names = Vec::new();
    let mut ports = Vec::new();
    for (name, c) in containers(spec) {
        let found: Vec<String> = c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("hostPort").and_then(Value::as_i64))
            .filter(|p| *p != 0)
            .map(|p| p.to_string())
            .collect();
        if !found.is_empty() {
            names.push(name);
            ports.extend(found);
        }
    }
    (!names.is_empty()).then(|| {
        let ports = sorted_unique(ports);
        (
            "hostPort".to_owned(),
            format!(
                "{} {} {} {}",
                containers_phrase(&names),
                pluralize("uses", "use", names.len()),
                pluralize("hostPort", "hostPorts", ports.len()),
                ports.join(", ")
            ),
        )
    })
}

fn host_probes(spec: &Value) -> Option<Failure> {
    let mut names = Vec::new();
    let mut hosts = Vec::new();
    for (name, c) in containers(spec) {
        let mut handlers = Vec::new();
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            handlers.extend(c.get(probe));
        }
        for hook in ["postStart", "preStop"] {
            handlers.extend(c.pointer(&format!("/lifecycle/{hook}")));
        }
        for h in handlers {
            for kind in ["httpGet", "tcpSocket"] {
                if let Some(host) = str_at(Some(h), &format!("/{kind}/host"))
                    && !host.is_empty()
                {
                    names.push(name.clone());
                    hosts.push(host.to_owned());
                }
            }
        }
    }
    (!names.is_empty()).then(|| {
        let names = sorted_unique(names);
        let hosts = sorted_unique(hosts);
        (
            "probe or lifecycle host".to_owned(),
            format!(
                "{} {} {} {}",
                containers_phrase(&names),
                pluralize("uses", "use", names.len()),
                pluralize(
                    "probe or lifecycle host",
                    "probe or lifecycle hosts",
                    hosts.len()
                ),
                join_quote(&hosts)
            ),
        )
    })
}

fn privileged(spec: &Value) -> Option<Failure> {
    let names: Vec<String> = containers(spec)
        .into_iter()
        .filter(|(_, c)| bool_at(sc(c), "/privileged") == Some(true))
        .map(|(n, _)| n)
        .collect();
    (!names.is_empty()).then(|| {
        (
            "privileged".to_owned(),
            format!(
                "{} must not set securityContext.privileged=true",
                containers_phrase(&names)
            ),
        )
    })
}

fn proc_mount(spec: &Value, relax_for_user_ns: bool) -> Option<Failure> {
    if relax_for_user_ns && spec.get("hostUsers").and_then(Value::as_bool) == Some(false) {
        return None;
    }
    let mut names = Vec::new();
    let mut types = Vec::new();
    for (name, c) in containers(spec) {
        if let Some(t) = str_at(sc(c), "/procMount")
            && t != "Default"
        {
            names.push(name);
            types.push(t.to_owned());
        }
    }
    (!names.is_empty()).then(|| {
        (
            "procMount".to_owned(),
            format!(
                "{} must not set securityContext.procMount to {}",
                containers_phrase(&names),
                join_quote(&sorted_unique(types))
            ),
        )
    })
}

fn se_linux(spec: &Value) -> Option<Failure> {
    const TYPES: &[&str] = &[
        "",
        "container_t",
        "container_init_t",
        "container_kvm_t",
        "container_engine_t",
    ];
    let mut setters = Vec::new();
    let mut bad_types = Vec::new();
    let (mut user, mut role) = (false, false);
    let mut check = |o: Option<&Value>| -> bool {
        let Some(o) = o.and_then(|s| s.get("seLinuxOptions")) else {
            return false;
        };
        let mut bad = false;
        if let Some(t) = o.get("type").and_then(Value::as_str)
            && !TYPES.contains(&t)
        {
            bad_types.push(t.to_owned());
            bad = true;
        }
        if o.get("user")
            .and_then(Value::as_str)
            .is_some_and(|u| !u.is_empty())
        {
            user = true;
            bad = true;
        }
        if o.get("role")
            .and_then(Value::as_str)
            .is_some_and(|r| !r.is_empty())
        {
            role = true;
            bad = true;
        }
        bad
    };
    if check(spec.get("securityContext")) {
        setters.push("pod".to_owned());
    }
    let names: Vec<String> = containers(spec)
        .into_iter()
        .filter(|(_, c)| check(sc(c)))
        .map(|(n, _)| n)
        .collect();
    if !names.is_empty() {
        setters.push(containers_phrase(&names));
    }
    if setters.is_empty() {
        return None;
    }
    let mut data = Vec::new();
    if !bad_types.is_empty() {
        let t = sorted_unique(bad_types);
        data.push(format!(
            "{} {}",
            pluralize("type", "types", t.len()),
            join_quote(&t)
        ));
    }
    if user {
        data.push("user may not be set".to_owned());
    }
    if role {
        data.push("role may not be set".to_owned());
    }
    Some((
        "seLinuxOptions".to_owned(),
        format!(
            "{} set forbidden securityContext.seLinuxOptions: {}",
            setters.join(" and "),
            data.join("; ")
        ),
    ))
}

fn seccomp_ok(t: &str) -> bool {
    t == "RuntimeDefault" || t == "Localhost"
}

fn seccomp_baseline(spec: &Value) -> Option<Failure> {
    let mut setters = Vec::new();
    let mut values = Vec::new();
    if let Some(t) = str_at(spec.get("securityContext"), "/seccompProfile/type")
        && !seccomp_ok(t)
    {
        setters.push("pod".to_owned());
        values.push(t.to_owned());
    }
    let mut names = Vec::new();
    for (name, c) in containers(spec) {
        if let Some(t) = str_at(sc(c), "/seccompProfile/type")
            && !seccomp_ok(t)
        {
            names.push(name);
            values.push(t.to_owned());
        }
    }
    if !names.is_empty() {
        setters.push(containers_phrase(&names));
    }
    (!setters.is_empty()).then(|| {
        (
            "seccompProfile".to_owned(),
            format!(
                "{} must not set securityContext.seccompProfile.type to {}",
                setters.join(" and "),
                join_quote(&sorted_unique(values))
            ),
        )
    })
}

const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.ipv4.tcp_slow_start_after_idle",
    "net.ipv4.tcp_notsent_lowat",
];

fn sysctls(spec: &Value) -> Option<Failure> {
    let bad: Vec<String> = spec
        .pointer("/securityContext/sysctls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("name").and_then(Value::as_str))
        .filter(|n| !SAFE_SYSCTLS.contains(n))
        .map(str::to_owned)
        .collect();
    (!bad.is_empty()).then(|| ("forbidden sysctls".to_owned(), bad.join(", ")))
}

fn windows_host_process(spec: &Value) -> Option<Failure> {
    let mut setters = Vec::new();
    if bool_at(spec.get("securityContext"), "/windowsOptions/hostProcess") == Some(true) {
        setters.push("pod".to_owned());
    }
    let names: Vec<String> = containers(spec)
        .into_iter()
        .filter(|(_, c)| bool_at(sc(c), "/windowsOptions/hostProcess") == Some(true))
        .map(|(n, _)| n)
        .collect();
    if !names.is_empty() {
        setters.push(containers_phrase(&names));
    }
    (!setters.is_empty()).then(|| {
        (
            "hostProcess".to_owned(),
            format!(
                "{} must not set securityContext.windowsOptions.hostProcess=true",
                setters.join(" and ")
            ),
        )
    })
}

fn windows(spec: &Value) -> bool {
    spec.pointer("/os/name").and_then(Value::as_str) == Some("windows")
}

fn allow_privilege_escalation(spec: &Value) -> Option<Failure> {
    if windows(spec) {
        return None;
    }
    let names: Vec<String> = containers(spec)
        .into_iter()
        .filter(|(_, c)| bool_at(sc(c), "/allowPrivilegeEscalation") != Some(false))
        .map(|(n, _)| n)
        .collect();
    (!names.is_empty()).then(|| {
        (
            "allowPrivilegeEscalation != false".to_owned(),
            format!(
                "{} must set securityContext.allowPrivilegeEscalation=false",
                containers_phrase(&names)
            ),
        )
    })
}

fn capabilities_restricted(spec: &Value) -> Option<Failure> {
    if windows(spec) {
        return None;
    }
    let mut no_drop = Vec::new();
    let mut adding = Vec::new();
    let mut caps = Vec::new();
    for (name, c) in containers(spec) {
        let drops_all = sc(c)
            .and_then(|s| s.pointer("/capabilities/drop"))
            .and_then(Value::as_array)
            .is_some_and(|d| d.iter().any(|x| x.as_str() == Some("ALL")));
        if !drops_all {
            no_drop.push(name.clone());
        }
        let bad: Vec<String> = added_caps(c)
            .into_iter()
            .filter(|cap| cap != "NET_BIND_SERVICE")
            .collect();
        if !bad.is_empty() {
            adding.push(name);
            caps.extend(bad);
        }
    }
    let mut parts = Vec::new();
    if !no_drop.is_empty() {
        parts.push(format!(
            "{} must set securityContext.capabilities.drop=[\"ALL\"]",
            containers_phrase(&no_drop)
        ));
    }
    if !adding.is_empty() {
        parts.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&adding),
            join_quote(&sorted_unique(caps))
        ));
    }
    (!parts.is_empty()).then(|| ("unrestricted capabilities".to_owned(), parts.join("; ")))
}

const ALLOWED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "image",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

fn restricted_volumes(spec: &Value) -> Option<Failure> {
    let mut names = Vec::new();
    let mut types = Vec::new();
    for v in volumes(spec) {
        let source = v.keys().find(|k| k.as_str() != "name").map(String::as_str);
        let kind = source.unwrap_or("unknown");
        if !ALLOWED_VOLUMES.contains(&kind) {
            names.push(
                v.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            );
            types.push(kind.to_owned());
        }
    }
    (!names.is_empty()).then(|| {
        let types = sorted_unique(types);
        (
            "restricted volume types".to_owned(),
            format!(
                "{} {} {} {} {}",
                pluralize("volume", "volumes", names.len()),
                join_quote(&names),
                pluralize("uses", "use", names.len()),
                pluralize(
                    "restricted volume type",
                    "restricted volume types",
                    types.len()
                ),
                join_quote(&types)
            ),
        )
    })
}

fn user_ns(spec: &Value) -> bool {
    spec.get("hostUsers").and_then(Value::as_bool) == Some(false)
}

fn run_as_non_root(spec: &Value) -> Option<Failure> {
    if user_ns(spec) {
        return None;
    }
    let reason = "runAsNonRoot != true".to_owned();
    let mut setters = Vec::new();
    let mut pod_non_root = false;
    match bool_at(spec.get("securityContext"), "/runAsNonRoot") {
        Some(false) => setters.push("pod".to_owned()),
        Some(true) => pod_non_root = true,
        None => {}
    }
    let mut explicit = Vec::new();
    let mut implicit = Vec::new();
    for (name, c) in containers(spec) {
        match bool_at(sc(c), "/runAsNonRoot") {
            Some(false) => explicit.push(name),
            Some(true) => {}
            None if !pod_non_root => implicit.push(name),
            None => {}
        }
    }
    if !explicit.is_empty() {
        setters.push(containers_phrase(&explicit));
    }
    if !setters.is_empty() {
        return Some((
            reason,
            format!(
                "{} must not set securityContext.runAsNonRoot=false",
                setters.join(" and ")
            ),
        ));
    }
    (!implicit.is_empty()).then(|| {
        (
            reason,
            format!(
                "pod or {} must set securityContext.runAsNonRoot=true",
                containers_phrase(&implicit)
            ),
        )
    })
}

fn run_as_user(spec: &Value) -> Option<Failure> {
    if user_ns(spec) {
        return None;
    }
    let zero = |v: Option<&Value>| {
        v.and_then(|v| v.pointer("/runAsUser"))
            .and_then(Value::as_i64)
            == Some(0)
    };
    let mut setters = Vec::new();
    if zero(spec.get("securityContext")) {
        setters.push("pod".to_owned());
    }
    let names: Vec<String> = containers(spec)
        .into_iter()
        .filter(|(_, c)| zero(sc(c)))
        .map(|(n, _)| n)
        .collect();
    if !names.is_empty() {
        setters.push(containers_phrase(&names));
    }
    (!setters.is_empty()).then(|| {
        (
            "runAsUser=0".to_owned(),
            format!("{} must not set runAsUser=0", setters.join(" and ")),
        )
    })
}

fn seccomp_restricted(spec: &Value) -> Option<Failure> {
    if windows(spec) {
        return None;
    }
    let reason = "seccompProfile".to_owned();
    let mut setters = Vec::new();
    let mut values = Vec::new();
    let mut pod_ok = false;
    if let Some(t) = str_at(spec.get("securityContext"), "/seccompProfile/type") {
        if seccomp_ok(t) {
            pod_ok = true;
        } else {
            setters.push("pod".to_owned());
            values.push(t.to_owned());
        }
    }
    let mut explicit = Vec::new();
    let mut implicit = Vec::new();
    for (name, c) in containers(spec) {
        match str_at(sc(c), "/seccompProfile/type") {
            Some(t) if !seccomp_ok(t) => {
                explicit.push(name);
                values.push(t.to_owned());
            }
            Some(_) => {}
            None if !pod_ok => implicit.push(name),
            None => {}
        }
    }
    if !explicit.is_empty() {
        setters.push(containers_phrase(&explicit));
    }
    if !setters.is_empty() {
        return Some((
            reason,
            format!(
                "{} must not set securityContext.seccompProfile.type to {}",
                setters.join(" and "),
                join_quote(&sorted_unique(values))
            ),
        ));
    }
    (!implicit.is_empty()).then(|| {
        (
            reason,
            format!(
                "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
                containers_phrase(&implicit)
            ),
        )
    })
}

/// The failed checks of `level` for a pod's (or template's) metadata and spec, in
/// upstream's order (baseline's ids sorted, then restricted's).
fn evaluate(level: Level, meta: &Value, spec: &Value) -> Vec<Failure> {
    let checks: Vec<Option<Failure>> = match level {
        Level::Privileged => Vec::new(),
        Level::Baseline => vec![
            app_armor(meta, spec),
            capabilities_baseline(spec),
            host_namespaces(spec),
            host_path_volumes(spec),
            host_ports(spec),
            host_probes(spec),
            privileged(spec),
            proc_mount(spec, true),
            se_linux(spec),
            seccomp_baseline(spec),
            sysctls(spec),
            windows_host_process(spec),
        ],
        Level::Restricted => vec![
            app_armor(meta, spec),
            host_namespaces(spec),
            host_ports(spec),
            host_probes(spec),
            privileged(spec),
            se_linux(spec),
            sysctls(spec),
            windows_host_process(spec),
            allow_privilege_escalation(spec),
            capabilities_restricted(spec),
            proc_mount(spec, false),
            restricted_volumes(spec),
            run_as_non_root(spec),
            run_as_user(spec),
            seccomp_restricted(spec),
        ],
    };
    checks.into_iter().flatten().collect()
}

fn detail(failures: &[Failure]) -> String {
    failures
        .iter()
        .map(|(reason, detail)| {
            if detail.is_empty() {
                reason.clone()
            } else {
                format!("{reason} ({detail})")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn namespace_labels(cache: &WatchCache, ns: &str) -> Option<Map<String, Value>> {
    cache
        .get(&format!("/registry/core/namespaces/{ns}"))
        .and_then(|o| o.value().pointer("/metadata/labels").cloned())
        .and_then(|l| l.as_object().cloned())
}

/// Whether an update to a pod is checked: containers or init containers added or
/// removed, an image changed, an ephemeral container added or its image changed.
fn significant(old: &Value, new: &Value) -> bool {
    let images = |v: &Value, k: &str| -> Vec<Option<String>> {
        v.pointer(&format!("/spec/{k}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| c.get("image").and_then(Value::as_str).map(str::to_owned))
            .collect()
    };
    let ephemeral = |v: &Value| -> Vec<(String, Option<String>)> {
        let mut e: Vec<_> = v
            .pointer("/spec/ephemeralContainers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c.get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    c.get("image").and_then(Value::as_str).map(str::to_owned),
                )
            })
            .collect();
        e.sort();
        e
    };
    images(old, "containers") != images(new, "containers")
        || images(old, "initContainers") != images(new, "initContainers")
        || ephemeral(new).iter().any(|e| !ephemeral(old).contains(e))
}

/// Pod Security admission of a pod being created (`old` None) or updated in `ns`:
/// Err(403) when the enforce level refuses it, else the warnings for the response.
pub fn admit_pod(
    cache: &WatchCache,
    ns: &str,
    old: Option<&Value>,
    pod: &Value,
) -> Result<Vec<String>, ApiError> {
    if old.is_some_and(|o| !significant(o, pod)) {
        return Ok(Vec::new());
    }
    let labels = namespace_labels(cache, ns);
    let (enforce, warn) = policy(labels.as_ref());
    let meta = pod.get("metadata").cloned().unwrap_or(Value::Null);
    let spec = pod.get("spec").cloned().unwrap_or(Value::Null);
    let name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
    if crate::apiserver::audit::active() {
        audit_annotations(labels.as_ref(), &enforce, &meta, &spec);
    }
    let failed = evaluate(enforce.level, &meta, &spec);
    if !failed.is_empty() {
        let reason = format!("violates PodSecurity \"{enforce}\": {}", detail(&failed));
        let message = if name.is_empty() {
            format!("pods is forbidden: {reason}")
        } else {
            format!("pods \"{name}\" is forbidden: {reason}")
        };
        return Err(ApiError::forbidden(message).with_details("", "pods", name));
    }
    let failed = evaluate(warn.level, &meta, &spec);
    Ok(if failed.is_empty() {
        Vec::new()
    } else {
        vec![format!(
            "would violate PodSecurity \"{warn}\": {}",
            detail(&failed)
        )]
    })
}

/// Audit mode: the request's audit event gets the enforced policy
/// (`pod-security.kubernetes.io/enforce-policy`) and, when the namespace's `audit`
/// level would refuse the pod, `pod-security.kubernetes.io/audit-violations` — the
/// annotations kube-apiserver's PodSecurity plugin adds. An invalid audit level fails
/// open (privileged), no label is privileged, as upstream.
fn audit_annotations(
    labels: Option<&Map<String, Value>>,
    enforce: &LevelVersion,
    meta: &Value,
    spec: &Value,
) {
    use crate::apiserver::audit::annotate;
    annotate(&format!("{PREFIX}enforce-policy"), enforce.to_string());
    let get = |k: &str| {
        labels
            .and_then(|l| l.get(&format!("{PREFIX}{k}")))
            .and_then(Value::as_str)
    };
    let audit = LevelVersion {
        level: get("audit")
            .and_then(Level::parse)
            .unwrap_or(Level::Privileged),
        version: get("audit-version")
            .filter(|v| valid_version(v))
            .unwrap_or("latest")
            .to_owned(),
    };
    let failed = evaluate(audit.level, meta, spec);
    if !failed.is_empty() {
        annotate(
            &format!("{PREFIX}audit-violations"),
            format!("would violate PodSecurity \"{audit}\": {}", detail(&failed)),
        );
    }
}

/// Warn mode for a workload's pod template (Deployment, ReplicaSet, StatefulSet,
/// DaemonSet, Job, ReplicationController, PodTemplate; CronJob's job template): never
/// enforced, as upstream.
pub fn warn_template(cache: &WatchCache, ns: &str, kind: &str, obj: &Value) -> Vec<String> {
    let template = match kind {
        "Deployment"
        | "ReplicaSet"
        | "StatefulSet"
        | "DaemonSet"
        | "Job"
        | "ReplicationController" => obj.pointer("/spec/template"),
        "PodTemplate" => obj.get("template"),
        "CronJob" => obj.pointer("/spec/jobTemplate/spec/template"),
        _ => None,
    };
    let Some(template) = template else {
        return Vec::new();
    };
    let (_, warn) = policy(namespace_labels(cache, ns).as_ref());
    let meta = template.get("metadata").cloned().unwrap_or(Value::Null);
    let spec = template.get("spec").cloned().unwrap_or(Value::Null);
    let failed = evaluate(warn.level, &meta, &spec);
    if failed.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "would violate PodSecurity \"{warn}\": {}",
        detail(&failed)
    )]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn restricted_lists_every_missing_setting_in_upstreams_words() {
        let s = json!({"containers": [{"name": "c", "image": "x"}]});
        let failed = evaluate(Level::Restricted, &Value::Null, &s);
        assert_eq!(
            detail(&failed),
            r#"allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "c" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "c" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#
        );
        let good = json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}]
        });
        assert!(evaluate(Level::Restricted, &Value::Null, &good).is_empty());
    }

    #[test]
    fn baseline_refuses_host_access_and_privilege() {
        let s = json!({
            "hostNetwork": true, "hostPID": true,
            "containers": [
                {"name": "a", "securityContext": {"privileged": true, "capabilities": {"add": ["NET_ADMIN", "CHOWN"]}},
                 "ports": [{"containerPort": 80, "hostPort": 8080}]},
                {"name": "b", "securityContext": {"privileged": true}}
            ],
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}, {"name": "e", "emptyDir": {}}]
        });
        assert_eq!(
            detail(&evaluate(Level::Baseline, &Value::Null, &s)),
            r#"non-default capabilities (container "a" must not include "NET_ADMIN" in securityContext.capabilities.add), host namespaces (hostNetwork=true, hostPID=true), hostPath volumes (volume "root"), hostPort (container "a" uses hostPort 8080), privileged (containers "a", "b" must not set securityContext.privileged=true)"#
        );
        assert!(evaluate(Level::Privileged, &Value::Null, &s).is_empty());
        let r = evaluate(Level::Restricted, &Value::Null, &s);
        assert!(detail(&r).contains(
            r#"restricted volume types (volume "root" uses restricted volume type "hostPath")"#
        ));
    }

    #[test]
    fn labels_are_validated_and_warn_follows_a_stricter_enforce() {
        let labels = json!({"pod-security.kubernetes.io/enforce": "strict",
                            "pod-security.kubernetes.io/warn-version": "1.30"});
        let causes = validate_labels(labels.as_object());
        assert_eq!(causes.len(), 2);
        assert_eq!(
            causes[0].field,
            "metadata.labels[pod-security.kubernetes.io/enforce]"
        );
        assert_eq!(
            causes[0].message,
            r#"Invalid value: "strict": must be one of privileged, baseline, restricted"#
        );
        // Invalid enforce fails closed.
        assert_eq!(policy(labels.as_object()).0.level, Level::Restricted);
        let labels = json!({"pod-security.kubernetes.io/enforce": "baseline",
                            "pod-security.kubernetes.io/enforce-version": "v1.30"});
        let (enforce, warn) = policy(labels.as_object());
        assert_eq!(enforce.to_string(), "baseline:v1.30");
        assert_eq!(warn.to_string(), "baseline:v1.30");
        let (enforce, warn) = policy(None);
        assert_eq!(
            (enforce.level, warn.level),
            (Level::Privileged, Level::Privileged)
        );
        assert!(valid_version("v1.0") && valid_version("v1.37") && !valid_version("v1.07"));
    }
}

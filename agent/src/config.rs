//! `berth-agent --config`: a KubeletConfiguration file (`kubelet.config.k8s.io/v1beta1`),
//! as the kubelet reads one. The fields berth-agent supports become the flags they
//! stand for; a flag given on the command line wins over the file, as with the
//! kubelet. Fields berth-agent does not support are logged and ignored; a value of the
//! wrong type refuses the file, naming the field.

use std::ffi::OsString;
use std::path::Path;

use serde_json::Value;

/// What a supported field's value must be.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Str,
    Int,
    /// A switch flag, present when true.
    Bool,
    /// A flag that takes `true` or `false`.
    BoolValue,
    /// A list of strings, joined with commas.
    List,
    /// A map of eviction signals to thresholds, written `signal<value,…`.
    Thresholds,
    /// A map of eviction signals to grace periods, written `signal=duration,…`.
    Grace,
}

/// KubeletConfiguration fields (JSON paths, `.` between levels) and their flags.
const FIELDS: &[(&str, &str, Kind)] = &[
    ("address", "--address", Kind::Str),
    ("port", "--port", Kind::Int),
    ("staticPodPath", "--pod-manifest-path", Kind::Str),
    ("clusterDNS", "--cluster-dns", Kind::List),
    ("clusterDomain", "--cluster-domain", Kind::Str),
    ("maxPods", "--max-pods", Kind::Int),
    ("podCIDR", "--pod-cidr", Kind::Str),
    ("cgroupRoot", "--cgroup-root", Kind::Str),
    ("seccompDefault", "--seccomp-default", Kind::Bool),
    (
        "allowedUnsafeSysctls",
        "--allowed-unsafe-sysctls",
        Kind::List,
    ),
    ("evictionHard", "--eviction-hard", Kind::Thresholds),
    ("evictionSoft", "--eviction-soft", Kind::Thresholds),
    (
        "evictionSoftGracePeriod",
        "--eviction-soft-grace-period",
        Kind::Grace,
    ),
    (
        "evictionMinimumReclaim",
        "--eviction-minimum-reclaim",
        Kind::Grace,
    ),
    (
        "evictionMaxPodGracePeriod",
        "--eviction-max-pod-grace-period",
        Kind::Int,
    ),
    (
        "imageGCHighThresholdPercent",
        "--image-gc-high-threshold",
        Kind::Int,
    ),
    (
        "imageGCLowThresholdPercent",
        "--image-gc-low-threshold",
        Kind::Int,
    ),
    ("imageMinimumGCAge", "--image-minimum-gc-age", Kind::Str),
    (
        "serializeImagePulls",
        "--serialize-image-pulls",
        Kind::BoolValue,
    ),
    (
        "maxParallelImagePulls",
        "--max-parallel-image-pulls",
        Kind::Int,
    ),
    (
        "authentication.x509.clientCAFile",
        "--client-ca-file",
        Kind::Str,
    ),
];

/// A Go duration (`2m0s`, `90s`, `1h`; `0`), as the kubelet's duration flags take.
pub fn go_duration(text: &str) -> Result<std::time::Duration, String> {
    let invalid = || format!("invalid duration {text:?} (want a Go duration such as 2m0s or 90s)");
    if text == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let d: jiff::SignedDuration = text.parse().map_err(|_| invalid())?;
    std::time::Duration::try_from(d).map_err(|_| invalid())
}

/// The value of `--config` among `argv` (`--config F` or `--config=F`), if any.
pub fn config_path(argv: &[OsString]) -> Option<OsString> {
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--config" {
            return it.next().cloned();
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(v.into());
        }
    }
    None
}

/// `argv` with the flags the file at `path` stands for inserted after the program
/// name, leaving out those `argv` gives itself. Returns the warnings to log.
pub fn expand(argv: Vec<OsString>, path: &Path) -> Result<(Vec<OsString>, Vec<String>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (flags, warnings) = flags_of(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let given = |flag: &str| {
        argv.iter().any(|a| {
            let s = a.to_string_lossy();
            s == flag || s.starts_with(&format!("{flag}="))
        })
    };
    let mut out: Vec<OsString> = argv.iter().take(1).cloned().collect();
    for f in flags {
        let name = f.split('=').next().unwrap_or_default().to_owned();
        if !given(&name) {
            out.push(f.into());
        }
    }
    out.extend(argv.into_iter().skip(1));
    Ok((out, warnings))
}

/// The flags a KubeletConfiguration document stands for, and warnings for the fields
/// left out.
fn flags_of(text: &str) -> Result<(Vec<String>, Vec<String>), String> {
    let doc: Value = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    let Some(obj) = doc.as_object() else {
        return Err("not a KubeletConfiguration object".into());
    };
    match obj.get("kind").and_then(Value::as_str) {
        Some("KubeletConfiguration") => {}
        other => {
            return Err(format!(
                "kind: want \"KubeletConfiguration\", got {}",
                other.map_or("nothing".to_owned(), |k| format!("{k:?}"))
            ));
        }
    }
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some("kubelet.config.k8s.io/v1beta1" | "kubelet.config.k8s.io/v1") => {}
        other => {
            return Err(format!(
                "apiVersion: want \"kubelet.config.k8s.io/v1beta1\", got {}",
                other.map_or("nothing".to_owned(), |k| format!("{k:?}"))
            ));
        }
    }
    let mut flags = Vec::new();
    for (field, flag, kind) in FIELDS {
        let Some(v) = field.split('.').try_fold(&doc, |v, k| v.get(k)) else {
            continue;
        };
        if v.is_null() {
            continue;
        }
        let bad = |want: &str| format!("{field}: want {want}, got {v}");
        let value = match kind {
            Kind::Str => v
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| bad("a string"))?,
            Kind::Int => v
                .as_u64()
                .map(|n| n.to_string())
                .ok_or_else(|| bad("a non-negative integer"))?,
            Kind::Bool => match v.as_bool() {
                Some(true) => {
                    flags.push((*flag).to_owned());
                    continue;
                }
                Some(false) => continue,
                None => return Err(bad("true or false")),
            },
            Kind::BoolValue => v
                .as_bool()
                .map(|b| b.to_string())
                .ok_or_else(|| bad("true or false"))?,
            Kind::List => v
                .as_array()
                .and_then(|l| l.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
                .map(|l| l.join(","))
                .ok_or_else(|| bad("a list of strings"))?,
            Kind::Thresholds => v
                .as_object()
                .and_then(|m| {
                    m.iter()
                        .map(|(k, v)| v.as_str().map(|v| format!("{k}<{v}")))
                        .collect::<Option<Vec<_>>>()
                })
                .map(|l| l.join(","))
                .ok_or_else(|| bad("a map of signals to quantities or percentages"))?,
            Kind::Grace => v
                .as_object()
                .and_then(|m| {
                    m.iter()
                        .map(|(k, v)| v.as_str().map(|v| format!("{k}={v}")))
                        .collect::<Option<Vec<_>>>()
                })
                .map(|l| l.join(","))
                .ok_or_else(|| bad("a map of signals to durations"))?,
        };
        flags.push(format!("{flag}={value}"));
    }
    let mut warnings = Vec::new();
    for key in obj.keys() {
        let used = ["kind", "apiVersion"].contains(&key.as_str())
            || FIELDS
                .iter()
                .any(|(f, _, _)| f.split('.').next() == Some(key.as_str()));
        if !used {
            warnings.push(format!(
                "KubeletConfiguration field {key:?} is not supported by berth-agent; ignored"
            ));
        }
    }
    if let Some(auth) = obj.get("authentication").and_then(Value::as_object) {
        for key in auth.keys().filter(|k| *k != "x509") {
            warnings.push(format!(
                "KubeletConfiguration field \"authentication.{key}\" is not supported by berth-agent; ignored"
            ));
        }
    }
    Ok((flags, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        use std::time::Duration;
        assert_eq!(go_duration("2m0s"), Ok(Duration::from_secs(120)));
        assert_eq!(go_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(go_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(go_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(go_duration("0"), Ok(Duration::ZERO));
        assert!(go_duration("-1s").is_err());
        assert!(go_duration("soon").is_err());
    }

    const DOC: &str = r#"
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
maxPods: 7
clusterDNS: ["10.96.0.10", "10.96.0.11"]
clusterDomain: cluster.example
seccompDefault: true
evictionHard: {memory.available: 200Mi, nodefs.available: "5%"}
imageMinimumGCAge: 5m
serializeImagePulls: false
authentication: {x509: {clientCAFile: /etc/ca.pem}, webhook: {enabled: true}}
containerLogMaxSize: 10Mi
"#;

    #[test]
    fn supported_fields_become_flags_and_the_rest_are_warned() {
        let (flags, warnings) = flags_of(DOC).expect("valid");
        assert_eq!(
            flags,
            [
                "--cluster-dns=10.96.0.10,10.96.0.11",
                "--cluster-domain=cluster.example",
                "--max-pods=7",
                "--seccomp-default",
                "--eviction-hard=memory.available<200Mi,nodefs.available<5%",
                "--image-minimum-gc-age=5m",
                "--serialize-image-pulls=false",
                "--client-ca-file=/etc/ca.pem",
            ]
        );
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].contains("\"containerLogMaxSize\""),
            "{warnings:?}"
        );
        assert!(
            warnings[1].contains("\"authentication.webhook\""),
            "{warnings:?}"
        );
    }

    #[test]
    fn the_command_line_wins_over_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kubelet.yaml");
        std::fs::write(&path, DOC).expect("write");
        let argv: Vec<OsString> = ["berth-agent", "--config", "x", "--max-pods=3"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(config_path(&argv), Some(OsString::from("x")));
        let (out, _) = expand(argv, &path).expect("expand");
        let out: Vec<String> = out
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(out[0], "berth-agent");
        assert!(!out.iter().any(|a| a == "--max-pods=7"), "{out:?}");
        assert!(out.iter().any(|a| a == "--max-pods=3"), "{out:?}");
        assert!(out.iter().any(|a| a == "--cluster-domain=cluster.example"));
    }

    #[test]
    fn wrong_values_name_the_field() {
        for (doc, want) in [
            (
                "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nmaxPods: many\n",
                "maxPods: want a non-negative integer",
            ),
            (
                "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nclusterDNS: 10.0.0.1\n",
                "clusterDNS: want a list of strings",
            ),
            (
                "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nseccompDefault: maybe\n",
                "seccompDefault: want true or false",
            ),
            (
                "apiVersion: v1\nkind: KubeletConfiguration\n",
                "apiVersion: want",
            ),
            (
                "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: Pod\n",
                "kind: want \"KubeletConfiguration\"",
            ),
        ] {
            let err = flags_of(doc).expect_err(doc);
            assert!(err.contains(want), "{doc}: {err}");
        }
    }
}

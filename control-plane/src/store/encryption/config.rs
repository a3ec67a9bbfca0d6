//! kube-apiserver's `--encryption-provider-config` file: an `EncryptionConfiguration`
//! (`apiserver.config.k8s.io/v1`; the legacy `v1` `EncryptionConfig` too) in YAML or
//! JSON, validated as upstream's `ValidateEncryptionConfiguration` does — every error
//! names its field (`resources[0].providers[1].aescbc.keys[0].secret`) — and turned
//! into the per-resource provider lists [`super::Transformers`] applies.
//!
//! Entry point: [`load`]. Upstream's rules, kept here: each `resources[]` entry is a
//! rule of resource names (`secrets`, `deployments.apps`, `*.apps`, `*.` for the core
//! group, `*.*` for everything) and providers; earlier rules win, and a rule masked by
//! an earlier wildcard is refused; a resource named in two rules gets both provider
//! lists, in order. Keys: base64, 16/24/32 bytes for aescbc/aesgcm, 32 for secretbox.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use serde::Deserialize;

use super::providers::{Kind, NamedKey, Provider};

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading the encryption provider config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("encryption provider config {path} is empty")]
    Empty { path: String },
    #[error("parsing the encryption provider config {path}: {message}")]
    Parse { path: String, message: String },
    /// Upstream's field errors, joined.
    #[error("invalid encryption provider config {path}: {}", .errors.join("; "))]
    Invalid { path: String, errors: Vec<String> },
}

/// The file as written (upstream's `apiserver.config.k8s.io/v1` types).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EncryptionConfiguration {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    resources: Vec<ResourceConfiguration>,
}

#[derive(Debug, Default, Deserialize)]
struct ResourceConfiguration {
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    providers: Vec<ProviderConfiguration>,
}

#[derive(Debug, Default, Deserialize)]
struct ProviderConfiguration {
    aesgcm: Option<KeysConfiguration>,
    aescbc: Option<KeysConfiguration>,
    secretbox: Option<KeysConfiguration>,
    identity: Option<serde_json::Value>,
    kms: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
struct KeysConfiguration {
    #[serde(default)]
    keys: Vec<Key>,
}

#[derive(Debug, Default, Deserialize)]
struct Key {
    #[serde(default)]
    name: String,
    #[serde(default)]
    secret: String,
}

/// A resource as the config names it (upstream's `schema.ParseGroupResource`:
/// `deployments.apps` → group `apps`, resource `deployments`; no dot → core group).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct GroupResource {
    pub group: String,
    pub resource: String,
}

impl GroupResource {
    pub fn parse(text: &str) -> Self {
        match text.split_once('.') {
            Some((resource, group)) => Self {
                group: group.to_owned(),
                resource: resource.to_owned(),
            },
            None => Self {
                group: String::new(),
                resource: text.to_owned(),
            },
        }
    }
}

impl std::fmt::Display for GroupResource {
    /// As written in the config: `secrets`, `*.`, `deployments.apps`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() && self.resource != "*" {
            f.write_str(&self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

/// The providers of each resource a rule names, in rule order.
pub(super) type Rules = HashMap<GroupResource, Vec<Arc<Provider>>>;

/// Reads, parses and validates `path`; warns when others may read it (it holds keys).
pub(super) fn load(path: &Path) -> Result<Rules, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    warn_if_readable_by_others(path);
    parse(&text).map_err(|e| match e {
        Refused::Parse(message) => ConfigError::Parse {
            path: shown.clone(),
            message,
        },
        Refused::Invalid(errors) => ConfigError::Invalid {
            path: shown.clone(),
            errors,
        },
        Refused::Empty => ConfigError::Empty {
            path: shown.clone(),
        },
    })
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "the encryption provider config holds the encryption keys but is readable by group or others; chmod 600 it"
        );
    }
}

/// A refusal before the file's path is known to the message.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    Empty,
    Parse(String),
    Invalid(Vec<String>),
}

/// Parses and validates a config's text (YAML or JSON).
pub(super) fn parse(text: &str) -> Result<Rules, Refused> {
    if text.trim().is_empty() {
        return Err(Refused::Empty);
    }
    let config: EncryptionConfiguration =
        serde_saphyr::from_str(text).map_err(|e| Refused::Parse(e.to_string()))?;
    match (config.api_version.as_deref(), config.kind.as_deref()) {
        (Some("apiserver.config.k8s.io/v1"), Some("EncryptionConfiguration"))
        | (Some("v1"), Some("EncryptionConfig")) => {}
        (api_version, kind) => {
            return Err(Refused::Parse(format!(
                "want apiVersion: apiserver.config.k8s.io/v1 and kind: EncryptionConfiguration, got apiVersion {:?} and kind {:?}",
                api_version.unwrap_or(""),
                kind.unwrap_or("")
            )));
        }
    }
    let errors = validate(&config);
    if !errors.is_empty() {
        return Err(Refused::Invalid(errors));
    }
    build(&config).map_err(|e| Refused::Invalid(vec![e]))
}

/// Upstream's messages (`validation_encryption.go`), as `field.Error` prints them.
const STAR_RESOURCE: &str =
    "use '*.' to encrypt all the resources from core API group or *.* to encrypt all resources";
const OVERLAP: &str = "using overlapping resources such as 'secrets' and '*.' in the same resource list is not allowed as they will be masked";
const DUPLICATE_RESOURCE: &str = "the same resource cannot be specified multiple times";
const CAPITALS: &str = "resource name should not contain capital letters";
const NON_REST: &str = "resources which do not have REST API/s cannot be encrypted";
const EVENTS_GROUP: &str = "'*.events.k8s.io' objects are stored using the 'events' API group in etcd. Use 'events' instead in the config file";
const EXTENSIONS_GROUP: &str =
    "'extensions' group has been removed and cannot be used for encryption";
const ACROSS_GROUPS: &str = "encrypting the same resource across groups is not supported";
const MORE_THAN_ONE: &str = "more than one provider specified in a single element, should split into different list elements";
const NONE_OF: &str = "provider does not contain any of the expected providers: KMS, AESGCM, AESCBC, Secretbox, Identity";

fn required(path: &str, message: &str) -> String {
    format!("{path}: Required value: {message}")
}

fn invalid(path: &str, value: &str, message: &str) -> String {
    format!("{path}: Invalid value: {value:?}: {message}")
}

fn validate(config: &EncryptionConfiguration) -> Vec<String> {
    let mut errors = Vec::new();
    if config.resources.is_empty() {
        errors.push(required("resources", "at least one resources is required"));
        return errors;
    }
    for (i, rule) in config.resources.iter().enumerate() {
        let r = format!("resources[{i}].resources");
        let p = format!("resources[{i}].providers");
        if rule.resources.is_empty() {
            errors.push(required(&r, &format!("at least one {r} is required")));
        }
        validate_overlap(&rule.resources, &r, &mut errors);
        validate_names(&rule.resources, &r, &mut errors);
        if rule.providers.is_empty() {
            errors.push(required(&p, &format!("at least one {p} is required")));
        }
        for (j, provider) in rule.providers.iter().enumerate() {
            let path = format!("{p}[{j}]");
            let found = [
                provider.aesgcm.is_some(),
                provider.aescbc.is_some(),
                provider.secretbox.is_some(),
                provider.identity.is_some(),
                provider.kms.is_some(),
            ]
            .into_iter()
            .filter(|f| *f)
            .count();
            if found == 0 {
                errors.push(format!("{path}: Invalid value: {NONE_OF}"));
                continue;
            }
            if found > 1 {
                errors.push(format!("{path}: Invalid value: {MORE_THAN_ONE}"));
                continue;
            }
            if provider.kms.is_some() {
                errors.push(format!(
                    "{path}.kms: Unsupported value: berth does not support KMS providers (use aescbc, aesgcm, secretbox or identity)"
                ));
            }
            for (kind, keys) in [
                (Kind::AesGcm, &provider.aesgcm),
                (Kind::AesCbc, &provider.aescbc),
                (Kind::Secretbox, &provider.secretbox),
            ] {
                if let Some(keys) = keys {
                    validate_keys(
                        &keys.keys,
                        &format!("{path}.{}.keys", kind.name()),
                        kind,
                        &mut errors,
                    );
                }
            }
        }
    }
    errors
}

fn validate_overlap(resources: &[String], path: &str, errors: &mut Vec<String>) {
    let parsed: Vec<GroupResource> = resources.iter().map(|r| GroupResource::parse(r)).collect();
    let (mut duplicate, mut overlap) = (false, false);
    for (i, a) in parsed.iter().enumerate() {
        for (j, b) in parsed.iter().enumerate() {
            if i == j {
                continue;
            }
            if a == b {
                duplicate = true;
                continue;
            }
            if (a.group == "*" && a.resource == "*")
                || (a.group == b.group && (a.resource == "*" || b.resource == "*"))
            {
                overlap = true;
            }
        }
    }
    let shown = format!("{resources:?}");
    if duplicate {
        errors.push(format!(
            "{path}: Invalid value: {shown}: {DUPLICATE_RESOURCE}"
        ));
    }
    if overlap {
        errors.push(format!("{path}: Invalid value: {shown}: {OVERLAP}"));
    }
}

fn validate_names(resources: &[String], path: &str, errors: &mut Vec<String>) {
    for (j, res) in resources.iter().enumerate() {
        let jj = format!("{path}[{j}]");
        let gr = GroupResource::parse(res);
        let message = if res.to_lowercase() != *res {
            CAPITALS
        } else if res == "*" {
            STAR_RESOURCE
        } else if matches!(
            res.as_str(),
            "apiserveripinfo" | "serviceipallocations" | "servicenodeportallocations"
        ) {
            NON_REST
        } else if gr.group == "events.k8s.io" {
            EVENTS_GROUP
        } else if gr.group == "extensions" {
            EXTENSIONS_GROUP
        } else if gr.group == "*" && gr.resource != "*" {
            ACROSS_GROUPS
        } else {
            continue;
        };
        errors.push(invalid(&jj, res, message));
    }
}

fn validate_keys(keys: &[Key], path: &str, kind: Kind, errors: &mut Vec<String>) {
    if keys.is_empty() {
        errors.push(required(path, "at least one keys is required"));
        return;
    }
    let mut names = std::collections::HashSet::new();
    for (i, key) in keys.iter().enumerate() {
        let at = format!("{path}[{i}]");
        if key.name.is_empty() {
            errors.push(required(
                &format!("{at}.name"),
                "name is a mandatory field for a key",
            ));
        } else if !names.insert(key.name.as_str()) {
            // Stricter than upstream, which tries every key of a name in turn: two keys
            // of one name in one provider are a mistake, not a rotation.
            errors.push(format!(
                "{at}.name: Duplicate value: {:?}: key names must be unique within a provider",
                key.name
            ));
        }
        if key.secret.is_empty() {
            errors.push(required(
                &format!("{at}.secret"),
                "secret is a mandatory field for a key",
            ));
            continue;
        }
        let Ok(secret) = base64::engine::general_purpose::STANDARD.decode(key.secret.trim()) else {
            errors.push(invalid(
                &format!("{at}.secret"),
                "REDACTED",
                "secrets must be base64 encoded",
            ));
            continue;
        };
        let sizes = kind.key_sizes();
        if !sizes.contains(&secret.len()) {
            let sizes: Vec<String> = sizes.iter().map(ToString::to_string).collect();
            errors.push(invalid(
                &format!("{at}.secret"),
                "REDACTED",
                &format!(
                    "secret is not of the expected length, got {}, expected one of [{}]",
                    secret.len(),
                    sizes.join(" ")
                ),
            ));
        }
    }
}

/// The validated config as provider lists per resource (earlier rules first).
fn build(config: &EncryptionConfiguration) -> Result<Rules, String> {
    let mut rules = Rules::new();
    for rule in &config.resources {
        let mut providers = Vec::with_capacity(rule.providers.len());
        for p in &rule.providers {
            let provider = if p.identity.is_some() {
                Provider::Identity
            } else {
                let (kind, keys) = match (&p.aesgcm, &p.aescbc, &p.secretbox) {
                    (Some(k), _, _) => (Kind::AesGcm, k),
                    (_, Some(k), _) => (Kind::AesCbc, k),
                    (_, _, Some(k)) => (Kind::Secretbox, k),
                    _ => return Err(NONE_OF.to_owned()),
                };
                let keys = keys
                    .keys
                    .iter()
                    .map(|k| {
                        let secret = base64::engine::general_purpose::STANDARD
                            .decode(k.secret.trim())
                            .map_err(|e| format!("key {:?}: {e}", k.name))?;
                        NamedKey::new(kind, &k.name, &secret)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Provider::Keys { kind, keys }
            };
            providers.push(Arc::new(provider));
        }
        for resource in &rule.resources {
            let gr = GroupResource::parse(resource);
            for mask in [
                GroupResource {
                    group: gr.group.clone(),
                    resource: "*".into(),
                },
                GroupResource {
                    group: "*".into(),
                    resource: "*".into(),
                },
            ] {
                if mask != gr && rules.contains_key(&mask) {
                    return Err(format!(
                        "resource {:?} is masked by earlier rule {:?}",
                        gr.to_string(),
                        mask.to_string()
                    ));
                }
            }
            rules
                .entry(gr)
                .or_default()
                .extend(providers.iter().cloned());
        }
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY16: &str = "c2VjcmV0IGlzIHNlY3VyZQ=="; // "secret is secure"
    const KEY32: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    fn refused(text: &str) -> Vec<String> {
        match parse(text) {
            Err(Refused::Invalid(errors)) => errors,
            other => panic!("expected a validation error for\n{text}\ngot {other:?}"),
        }
    }

    fn head(body: &str) -> String {
        format!("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n{body}")
    }

    #[test]
    fn yaml_and_json_configs_parse() {
        let yaml = head(&format!(
            "resources:\n- resources: [secrets, configmaps, '*.apps']\n  providers:\n  - aescbc:\n      keys:\n      - name: key1\n        secret: {KEY32}\n  - identity: {{}}\n"
        ));
        let rules = parse(&yaml).expect("valid");
        assert_eq!(rules[&GroupResource::parse("secrets")].len(), 2);
        assert!(rules.contains_key(&GroupResource::parse("*.apps")));
        let json = format!(
            r#"{{"apiVersion":"apiserver.config.k8s.io/v1","kind":"EncryptionConfiguration","resources":[{{"resources":["secrets"],"providers":[{{"secretbox":{{"keys":[{{"name":"k","secret":"{KEY32}"}}]}}}}]}}]}}"#
        );
        parse(&json).expect("valid JSON");
        let legacy = format!(
            "kind: EncryptionConfig\napiVersion: v1\nresources:\n- resources: [secrets]\n  providers:\n  - aesgcm:\n      keys:\n      - name: k\n        secret: {KEY16}\n"
        );
        parse(&legacy).expect("the legacy kind");
    }

    #[test]
    fn bad_configs_are_refused_naming_the_field() {
        let cases: &[(&str, &str)] = &[
            ("resources: []\n", "resources: Required value"),
            (
                "resources:\n- resources: [secrets]\n",
                "resources[0].providers: Required value",
            ),
            (
                "resources:\n- resources: [Secrets]\n  providers: [{identity: {}}]\n",
                "resources[0].resources[0]: Invalid value: \"Secrets\": resource name should not contain capital letters",
            ),
            (
                "resources:\n- resources: ['*']\n  providers: [{identity: {}}]\n",
                "use '*.' to encrypt all",
            ),
            (
                "resources:\n- resources: [secrets, '*.']\n  providers: [{identity: {}}]\n",
                "overlapping resources",
            ),
            (
                "resources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n      - name: k\n        secret: 'not base64!'\n",
                "resources[0].providers[0].aescbc.keys[0].secret: Invalid value: \"REDACTED\": secrets must be base64 encoded",
            ),
            (
                &format!(
                    "resources:\n- resources: [secrets]\n  providers:\n  - secretbox:\n      keys:\n      - name: k\n        secret: {KEY16}\n"
                ),
                "resources[0].providers[0].secretbox.keys[0].secret: Invalid value: \"REDACTED\": secret is not of the expected length, got 16, expected one of [32]",
            ),
            (
                "resources:\n- resources: [secrets]\n  providers:\n  - aesgcm:\n      keys:\n      - name: k\n        secret: MTIzNDU=\n",
                "got 5, expected one of [16 24 32]",
            ),
            (
                &format!(
                    "resources:\n- resources: [secrets]\n  providers:\n  - aesgcm:\n      keys:\n      - secret: {KEY16}\n"
                ),
                "resources[0].providers[0].aesgcm.keys[0].name: Required value",
            ),
            (
                &format!(
                    "resources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n      - {{name: a, secret: {KEY16}}}\n      - {{name: a, secret: {KEY32}}}\n"
                ),
                "resources[0].providers[0].aescbc.keys[1].name: Duplicate value: \"a\"",
            ),
            (
                "resources:\n- resources: [secrets]\n  providers:\n  - aescbc: {keys: []}\n",
                "resources[0].providers[0].aescbc.keys: Required value",
            ),
            (
                &format!(
                    "resources:\n- resources: [secrets]\n  providers:\n  - aescbc: {{keys: [{{name: a, secret: {KEY16}}}]}}\n    identity: {{}}\n"
                ),
                "resources[0].providers[0]: Invalid value: more than one provider",
            ),
            (
                "resources:\n- resources: [secrets]\n  providers:\n  - aesgcmm: {keys: []}\n",
                "resources[0].providers[0]: Invalid value: provider does not contain any of the expected providers",
            ),
            (
                "resources:\n- resources: [secrets]\n  providers:\n  - kms: {name: x, endpoint: 'unix:///k.sock'}\n",
                "resources[0].providers[0].kms: Unsupported value: berth does not support KMS",
            ),
            (
                "resources:\n- resources: ['*.*']\n  providers: [{identity: {}}]\n- resources: [secrets]\n  providers: [{identity: {}}]\n",
                "resource \"secrets\" is masked by earlier rule \"*.*\"",
            ),
        ];
        for (body, want) in cases {
            let errors = refused(&head(body));
            assert!(
                errors.iter().any(|e| e.contains(want)),
                "for\n{body}\nwant an error containing {want:?}, got {errors:?}"
            );
        }
    }

    #[test]
    fn wrong_kind_empty_file_and_syntax_errors_are_refused() {
        assert!(matches!(parse("  \n"), Err(Refused::Empty)));
        let Err(Refused::Parse(msg)) = parse("apiVersion: v1\nkind: Secret\nresources: []\n")
        else {
            panic!("a Secret is not an EncryptionConfiguration");
        };
        assert!(msg.contains("EncryptionConfiguration"), "{msg}");
        let Err(Refused::Parse(msg)) = parse(&head("resources:\n- resources: [secrets\n")) else {
            panic!("a syntax error is refused");
        };
        assert!(
            msg.contains("line"),
            "the parse error names the line: {msg}"
        );
    }
}

//! The RBAC authorizer (kube-apiserver's `plugin/pkg/auth/authorizer/rbac`): a request
//! is allowed when a ClusterRoleBinding, or a RoleBinding in the request's namespace,
//! binds the user (by name, group, or ServiceAccount) to a Role or ClusterRole with a
//! rule that allows it; nothing is ever explicitly denied.
//!
//! The Roles, ClusterRoles and bindings are not read per request: [`Rbac::start`]
//! takes them from the watch cache once, parsed, and follows its changes (so a new
//! binding counts a moment after its write is acknowledged, as with kube-apiserver's
//! informers). The bindings are indexed by the subjects they name, so a request looks
//! up the cluster bindings and its namespace's bindings that name its user, one of its
//! groups or its ServiceAccount, under a read lock, and checks only those.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;

use super::{Attributes, Decision, Rule, RuleSet};
use crate::apiserver::auth::UserInfo;
use crate::apiserver::watch_cache::{Cached, ChangeKind, WatchCache};

/// Where the RBAC objects live in the store.
pub const PREFIX: &str = "/registry/rbac.authorization.k8s.io/";

/// A binding's `roleRef`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RoleRef {
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
}

/// One of a binding's `subjects`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Subject {
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
}

impl Subject {
    /// Whether the subject names `user` (`rbac.appliesToUser`); a ServiceAccount
    /// without a namespace is in the binding's.
    pub fn applies_to(&self, user: &UserInfo, binding_namespace: &str) -> bool {
        match self.kind.as_str() {
            "User" => user.name == self.name,
            "Group" => user.groups.contains(&self.name),
            "ServiceAccount" => {
                let ns = if self.namespace.is_empty() {
                    binding_namespace
                } else {
                    &self.namespace
                };
                !ns.is_empty()
                    && user
                        .name
                        .strip_prefix("system:serviceaccount:")
                        .and_then(|rest| rest.strip_prefix(ns))
                        .and_then(|rest| rest.strip_prefix(':'))
                        .is_some_and(|name| name == self.name)
            }
            _ => false,
        }
    }

    /// `User "alice"`, `ServiceAccount "default/ns"` (rbac's `describeSubject`).
    fn describe(&self, binding_namespace: &str) -> String {
        if self.kind == "ServiceAccount" {
            let ns = if self.namespace.is_empty() {
                binding_namespace
            } else {
                &self.namespace
            };
            format!("{} \"{}/{ns}\"", self.kind, self.name)
        } else {
            format!("{} \"{}\"", self.kind, self.name)
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BindingObject {
    #[serde(default)]
    role_ref: RoleRef,
    #[serde(default, deserialize_with = "null_as_empty")]
    subjects: Vec<Subject>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Subject>, D::Error> {
    Ok(Option::<Vec<Subject>>::deserialize(d)?.unwrap_or_default())
}

/// A parsed RoleBinding or ClusterRoleBinding.
#[derive(Debug, Clone)]
pub struct Binding {
    pub name: String,
    pub role_ref: RoleRef,
    pub subjects: Vec<Subject>,
}

impl Binding {
    pub fn parse(name: &str, obj: &Value) -> Self {
        let parsed: BindingObject = serde_json::from_value(obj.clone()).unwrap_or_default();
        Self {
            name: name.to_owned(),
            role_ref: parsed.role_ref,
            subjects: parsed.subjects,
        }
    }
}

/// A subject as bindings are looked up by: a user name, a group, or a ServiceAccount
/// (namespace, name).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SubjectKey {
    User(String),
    Group(String),
    ServiceAccount(String, String),
}

impl SubjectKey {
    /// The key a binding's subject is found under (`None` for kinds that name no one,
    /// and for a ServiceAccount without a namespace in a cluster binding), as
    /// [`Subject::applies_to`] matches it.
    fn of(subject: &Subject, binding_namespace: &str) -> Option<Self> {
        match subject.kind.as_str() {
            "User" => Some(Self::User(subject.name.clone())),
            "Group" => Some(Self::Group(subject.name.clone())),
            "ServiceAccount" => {
                let ns = if subject.namespace.is_empty() {
                    binding_namespace
                } else {
                    &subject.namespace
                };
                (!ns.is_empty()).then(|| Self::ServiceAccount(ns.to_owned(), subject.name.clone()))
            }
            _ => None,
        }
    }

    /// Every key a binding naming `user` is found under.
    fn for_user(user: &UserInfo) -> Vec<Self> {
        let mut keys = Vec::with_capacity(user.groups.len() + 2);
        keys.push(Self::User(user.name.clone()));
        keys.extend(user.groups.iter().cloned().map(Self::Group));
        if let Some((ns, name)) = user
            .name
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
        {
            keys.push(Self::ServiceAccount(ns.to_owned(), name.to_owned()));
        }
        keys
    }
}

/// The bindings of one namespace (or the cluster's), by name and by the subjects they
/// name: a request looks at the bindings of its user, its groups and its
/// ServiceAccount only, not at every binding (1 000 RoleBindings for other users in a
/// namespace cost a lookup, not a walk).
#[derive(Debug, Default)]
struct Bindings {
    by_name: BTreeMap<String, Binding>,
    by_subject: HashMap<SubjectKey, BTreeSet<String>>,
}

impl Bindings {
    fn insert(&mut self, namespace: &str, binding: Binding) {
        self.remove(namespace, &binding.name.clone());
        for key in binding
            .subjects
            .iter()
            .filter_map(|s| SubjectKey::of(s, namespace))
        {
            self.by_subject
                .entry(key)
                .or_default()
                .insert(binding.name.clone());
        }
        self.by_name.insert(binding.name.clone(), binding);
    }

    fn remove(&mut self, namespace: &str, name: &str) {
        let Some(old) = self.by_name.remove(name) else {
            return;
        };
        for key in old
            .subjects
            .iter()
            .filter_map(|s| SubjectKey::of(s, namespace))
        {
            if let Some(names) = self.by_subject.get_mut(&key) {
                names.remove(name);
                if names.is_empty() {
                    self.by_subject.remove(&key);
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The bindings that may name one of `keys`, in name order, each once.
    fn naming<'a>(&'a self, keys: &[SubjectKey]) -> impl Iterator<Item = &'a Binding> {
        let names: BTreeSet<&String> = keys
            .iter()
            .filter_map(|k| self.by_subject.get(k))
            .flatten()
            .collect();
        names.into_iter().filter_map(|n| self.by_name.get(n))
    }
}

/// Everything RBAC decides on.
#[derive(Debug, Default)]
struct Index {
    cluster_roles: HashMap<String, Arc<[Rule]>>,
    roles: HashMap<(String, String), Arc<[Rule]>>,
    cluster_bindings: Bindings,
    bindings: HashMap<String, Bindings>,
}

/// Which object a key under [`PREFIX`] names: (plural, namespace, name).
fn split_key(key: &str) -> Option<(&str, &str, &str)> {
    let rest = key.strip_prefix(PREFIX)?;
    let mut parts = rest.split('/');
    let plural = parts.next()?;
    match (parts.next(), parts.next(), parts.next()) {
        (Some(name), None, None) => Some((plural, "", name)),
        (Some(ns), Some(name), None) => Some((plural, ns, name)),
        _ => None,
    }
}

impl Index {
    fn apply(&mut self, key: &str, object: Option<&Value>) {
        let Some((plural, ns, name)) = split_key(key) else {
            return;
        };
        match (plural, object) {
            ("clusterroles", Some(obj)) => {
                self.cluster_roles
                    .insert(name.into(), Rule::list(obj.get("rules")).into());
            }
            ("clusterroles", None) => {
                self.cluster_roles.remove(name);
            }
            ("roles", Some(obj)) => {
                self.roles.insert(
                    (ns.into(), name.into()),
                    Rule::list(obj.get("rules")).into(),
                );
            }
            ("roles", None) => {
                self.roles.remove(&(ns.to_owned(), name.to_owned()));
            }
            ("clusterrolebindings", Some(obj)) => {
                self.cluster_bindings.insert("", Binding::parse(name, obj));
            }
            ("clusterrolebindings", None) => {
                self.cluster_bindings.remove("", name);
            }
            ("rolebindings", Some(obj)) => {
                self.bindings
                    .entry(ns.into())
                    .or_default()
                    .insert(ns, Binding::parse(name, obj));
            }
            ("rolebindings", None) => {
                if let Some(in_ns) = self.bindings.get_mut(ns) {
                    in_ns.remove(ns, name);
                    if in_ns.is_empty() {
                        self.bindings.remove(ns);
                    }
                }
            }
            _ => {}
        }
    }

    /// The rules a binding's roleRef names, or the error kube-apiserver's rule
    /// resolver reports (`clusterrole.rbac.authorization.k8s.io "x" not found`).
    fn role_rules(&self, role_ref: &RoleRef, namespace: &str) -> Result<Arc<[Rule]>, String> {
        match role_ref.kind.as_str() {
            "ClusterRole" => self
                .cluster_roles
                .get(&role_ref.name)
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "clusterrole.rbac.authorization.k8s.io \"{}\" not found",
                        role_ref.name
                    )
                }),
            "Role" => self
                .roles
                .get(&(namespace.to_owned(), role_ref.name.clone()))
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "role.rbac.authorization.k8s.io \"{}\" not found",
                        role_ref.name
                    )
                }),
            other => Err(format!("unsupported role reference kind: {other:?}")),
        }
    }

    /// Calls `visit` with each binding that applies to `user` (cluster bindings,
    /// then `namespace`'s) and its rules, until it returns true; returns the errors met.
    fn visit(
        &self,
        user: &UserInfo,
        namespace: &str,
        mut visit: impl FnMut(&str, &[Rule]) -> bool,
    ) -> Vec<String> {
        let mut errors = Vec::new();
        let keys = SubjectKey::for_user(user);
        for b in self.cluster_bindings.naming(&keys) {
            let Some(subject) = b.subjects.iter().find(|s| s.applies_to(user, "")) else {
                continue;
            };
            match self.role_rules(&b.role_ref, "") {
                Ok(rules) => {
                    let source = format!(
                        "ClusterRoleBinding \"{}\" of {} \"{}\" to {}",
                        b.name,
                        b.role_ref.kind,
                        b.role_ref.name,
                        subject.describe("")
                    );
                    if visit(&source, &rules) {
                        return errors;
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        if namespace.is_empty() {
            return errors;
        }
        let Some(in_ns) = self.bindings.get(namespace) else {
            return errors;
        };
        for b in in_ns.naming(&keys) {
            let Some(subject) = b.subjects.iter().find(|s| s.applies_to(user, namespace)) else {
                continue;
            };
            match self.role_rules(&b.role_ref, namespace) {
                Ok(rules) => {
                    let source = format!(
                        "RoleBinding \"{}/{namespace}\" of {} \"{}\" to {}",
                        b.name,
                        b.role_ref.kind,
                        b.role_ref.name,
                        subject.describe(namespace)
                    );
                    if visit(&source, &rules) {
                        return errors;
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        errors
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct Rbac {
    index: RwLock<Index>,
}

impl Rbac {
    /// Loads the RBAC objects from the watch cache and follows its changes.
    pub fn start(cache: Arc<WatchCache>) -> Arc<Self> {
        let (items, mut watch) = cache.snapshot_and_watch(PREFIX);
        let rbac = Arc::new(Self {
            index: RwLock::new(Index::default()),
        });
        rbac.reload(&items);
        let follower = Arc::downgrade(&rbac);
        tokio::spawn(async move {
            let mut after = watch.after;
            loop {
                let change = watch.live.recv().await;
                let Some(rbac) = follower.upgrade() else {
                    return;
                };
                match change {
                    Ok(change) => {
                        if change.revision <= after || !change.object.key.starts_with(PREFIX) {
                            continue;
                        }
                        let obj =
                            (change.kind != ChangeKind::Deleted).then(|| change.object.value());
                        rbac.write().apply(&change.object.key, obj.as_ref());
                    }
                    Err(RecvError::Lagged(_)) => {
                        // Fell behind the cache's live feed: start again from a snapshot.
                        let (items, again) = cache.snapshot_and_watch(PREFIX);
                        rbac.reload(&items);
                        watch = again;
                        after = watch.after;
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        rbac
    }

    fn reload(&self, items: &[Arc<Cached>]) {
        let mut index = Index::default();
        for item in items {
            index.apply(&item.key, Some(&item.value()));
        }
        *self.write() = index;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// RBAC's decision: allowed by the first binding whose role allows it; otherwise
    /// denied, naming the roles that could not be found (`RBAC: …`).
    pub fn authorize(&self, attrs: &Attributes) -> Decision {
        let mut allowed_by = None;
        let errors = self
            .read()
            .visit(&attrs.user, &attrs.namespace, |source, rules| {
                if rules.iter().any(|r| r.allows(attrs)) {
                    allowed_by = Some(source.to_owned());
                    true
                } else {
                    false
                }
            });
        if let Some(source) = allowed_by {
            return Decision::allow(format!("RBAC: allowed by {source}"));
        }
        match errors.as_slice() {
            [] => Decision::deny(""),
            [one] => Decision::deny(format!("RBAC: {one}")),
            many => Decision::deny(format!("RBAC: [{}]", many.join(", "))),
        }
    }

    /// Every rule `user` holds in `namespace` (cluster bindings included).
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> RuleSet {
        let mut rules = Vec::new();
        let errors = self.read().visit(user, namespace, |_, r| {
            rules.extend(r.iter().cloned());
            false
        });
        RuleSet { rules, errors }
    }

    /// The rules of a role reference, for the bind check (`GetRoleReferenceRules`).
    pub fn role_rules(&self, role_ref: &RoleRef, namespace: &str) -> Result<Vec<Rule>, String> {
        self.read()
            .role_rules(role_ref, namespace)
            .map(|r| r.to_vec())
    }
}

#[cfg(test)]
impl Rbac {
    /// An authorizer over fixed objects (`(key, object)` pairs), for unit tests.
    pub fn from_objects(objects: &[(&str, Value)]) -> Self {
        let mut index = Index::default();
        for (key, obj) in objects {
            index.apply(key, Some(obj));
        }
        Self {
            index: RwLock::new(index),
        }
    }

    /// A change to one object (`None`: deleted), as the watch cache delivers it.
    pub fn apply(&self, key: &str, object: Option<&Value>) {
        self.write().apply(key, object);
    }
}

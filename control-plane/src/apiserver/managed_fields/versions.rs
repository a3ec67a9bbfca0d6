//! One write compared in each manager's API version, as kube-apiserver's field manager
//! does for a kind served in versions that convert (HorizontalPodAutoscaler's
//! `autoscaling/v1` and `autoscaling/v2`). A `managedFields` entry names its fields
//! in the version it was recorded in — `f:spec.f:targetCPUUtilizationPercentage` for
//! a v1 manager, `f:spec.f:metrics` for a v2 one — so what a write changed is worked
//! out in that version, from the objects before and after converted to it, before it
//! is checked against the entry (conflicts) or taken from it.
//!
//! For every other kind all versions name fields alike (CRD versions convert with
//! `None` or keep their paths), and the request's own comparison serves every entry.
//!
//! [`Converter`] is the conversion part alone: which versions the resource is still
//! served in (an entry of any other is dropped at the next write, as upstream's field
//! manager drops a manager whose version no longer converts), and an object as
//! another version names its fields (apply's prune works in the version the
//! applier's last set was recorded in).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::typed::{self, Comparison};
use super::{ignored, root};
use crate::apiserver::registry::{Registry, ResourceDef};

/// Another version's definition, or `None` for a version that names fields as the
/// request's does.
pub type Naming = Option<Arc<ResourceDef>>;

/// The request's resource in its other served versions.
#[derive(Debug, Clone, Copy)]
pub struct Converter<'a> {
    def: &'a ResourceDef,
    registry: &'a Registry,
}

impl<'a> Converter<'a> {
    pub fn new(def: &'a ResourceDef, registry: &'a Registry) -> Self {
        Self { def, registry }
    }

    /// Whether `api_version` is still a version of the resource: one it is served in,
    /// or one its CRD lists unserved (an empty one counts as the request's). Upstream's
    /// field manager converts to every version a CRD lists, and drops only the
    /// managers of a version it cannot convert to.
    pub fn served(&self, api_version: &str) -> bool {
        if api_version.is_empty() {
            return true;
        }
        let (group, version) = split(api_version);
        (group == self.def.group
            && (version == self.def.version || self.def.lists_version(version)))
            || self
                .registry
                .get(group, version, &self.def.plural)
                .is_some()
    }

    /// The definition of another version of the request's resource, when both convert
    /// through the same storage version (`None` for the request's own version, another
    /// group, or a version the server does not serve).
    pub fn naming(&self, api_version: &str) -> Naming {
        if !self.def.renames_fields() {
            return None;
        }
        let (group, version) = split(api_version);
        if group != self.def.group || version == self.def.version {
            return None;
        }
        self.registry
            .get(group, version, &self.def.plural)
            .filter(|d| d.renames_fields())
    }

    /// Whether two namings name fields alike.
    pub fn same(a: &Naming, b: &Naming) -> bool {
        a.as_ref().map(|d| &d.version) == b.as_ref().map(|d| &d.version)
    }

    /// `obj`, with fields as `from` names them, as `to` names them.
    pub fn convert(&self, obj: Value, from: &Naming, to: &Naming) -> Value {
        if Self::same(from, to) {
            return obj;
        }
        let stored = from.as_deref().unwrap_or(self.def).internal(obj);
        to.as_deref().unwrap_or(self.def).external(stored)
    }

    /// The schema of the resource as `naming` serves it.
    pub fn node(&self, naming: &'a Naming) -> super::schema::Node<'a> {
        root(naming.as_deref().unwrap_or(self.def))
    }
}

/// `group/version` (or a core `version`) split.
fn split(api_version: &str) -> (&str, &str) {
    api_version.rsplit_once('/').unwrap_or(("", api_version))
}

/// The request's comparison, and the others computed when an entry asks for them.
#[derive(Debug)]
pub struct Versions<'a> {
    converter: Converter<'a>,
    subresource: &'a str,
    own: Comparison,
    /// The objects before (`None`: a create) and after in the storage version; kept
    /// only for a kind that converts.
    stored: Option<(Option<Value>, Value)>,
    others: HashMap<String, Comparison>,
}

impl<'a> Versions<'a> {
    /// `own` is the write's comparison in the request's version (`def`'s); `stored`
    /// gives the objects before and after in the storage version, asked for only when
    /// the kind converts.
    pub fn new(
        def: &'a ResourceDef,
        registry: &'a Registry,
        subresource: &'a str,
        own: Comparison,
        stored: impl FnOnce() -> (Option<Value>, Value),
    ) -> Self {
        let stored = def.renames_fields().then(stored);
        Self {
            converter: Converter::new(def, registry),
            subresource,
            own,
            stored,
            others: HashMap::new(),
        }
    }

    /// The write's comparison in the request's version.
    pub fn own(&self) -> &Comparison {
        &self.own
    }

    /// Whether `api_version` names fields as the request's version does.
    pub fn is_own(&self, api_version: &str) -> bool {
        self.converter.naming(api_version).is_none()
    }

    /// Whether the resource is still served in `api_version` ([`Converter::served`]).
    pub fn served(&self, api_version: &str) -> bool {
        self.converter.served(api_version)
    }

    /// The write's comparison as an entry of `api_version` names fields.
    pub fn changes(&mut self, api_version: &str) -> &Comparison {
        let Some(def) = self.converter.naming(api_version) else {
            return &self.own;
        };
        if !self.others.contains_key(api_version) {
            let comparison = match &self.stored {
                Some((old, new)) => {
                    let old = old
                        .as_ref()
                        .map_or_else(|| json!({}), |o| def.external(o.clone()));
                    let new = def.external(new.clone());
                    typed::compare(&old, &new, root(&def)).without(&ignored(&def, self.subresource))
                }
                None => self.own.clone(),
            };
            self.others.insert(api_version.to_owned(), comparison);
        }
        &self.others[api_version]
    }
}

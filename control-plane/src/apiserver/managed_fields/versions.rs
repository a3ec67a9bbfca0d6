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

use std::collections::HashMap;

use serde_json::{Value, json};

use super::typed::{self, Comparison};
use super::{ignored, root};
use crate::apiserver::registry::{Registry, ResourceDef};

/// The request's comparison, and the others computed when an entry asks for them.
#[derive(Debug)]
pub struct Versions<'a> {
    def: &'a ResourceDef,
    registry: &'a Registry,
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
        let stored = def.conversion.is_some().then(stored);
        Self {
            def,
            registry,
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
        self.other_def(api_version).is_none()
    }

    /// The write's comparison as an entry of `api_version` names fields.
    pub fn changes(&mut self, api_version: &str) -> &Comparison {
        let Some(def) = self.other_def(api_version) else {
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

    /// The definition of another version of the request's resource, when both convert
    /// through the same storage version (`None` for the request's own version, another
    /// group, or a version the server does not serve).
    fn other_def(&self, api_version: &str) -> Option<std::sync::Arc<ResourceDef>> {
        self.def.conversion?;
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        if group != self.def.group || version == self.def.version {
            return None;
        }
        self.registry
            .get(group, version, &self.def.plural)
            .filter(|d| d.conversion.is_some())
    }
}

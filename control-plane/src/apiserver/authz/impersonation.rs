//! User impersonation (kube-apiserver's `filters.WithImpersonation`): the
//! `Impersonate-User`, `Impersonate-Group`, `Impersonate-Uid` and
//! `Impersonate-Extra-<key>` headers (`kubectl --as`, `--as-group`, `--as-uid`) make
//! the request act as another user, if the requester may `impersonate` each of them:
//! `users`, `groups` and `uids` by name, `serviceaccounts` in their namespace for
//! `system:serviceaccount:<ns>:<name>`, `userextras/<key>` by value. A refusal is the
//! 403 upstream gives, e.g. `users "bob" is forbidden: User "alice" cannot impersonate
//! resource "users" in API group "" at the cluster scope`.

use std::collections::BTreeMap;

use axum::http::HeaderMap;

use super::{Attributes, Authorizer};
use crate::apiserver::auth::UserInfo;
use crate::apiserver::status::{ApiError, ApiResult};

const USER: &str = "impersonate-user";
const GROUP: &str = "impersonate-group";
const UID: &str = "impersonate-uid";
const EXTRA: &str = "impersonate-extra-";

/// The user a request acts as: `requester` unless it carries impersonation headers
/// and may impersonate everything they name.
pub fn apply(
    authorizer: &dyn Authorizer,
    requester: UserInfo,
    headers: &HeaderMap,
) -> ApiResult<UserInfo> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect()
    };
    let user = values(USER).into_iter().next();
    let groups = values(GROUP);
    let uid = values(UID).into_iter().next();
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix(EXTRA)
            && let Ok(v) = value.to_str()
        {
            let key = percent_decode(key);
            extra.entry(key).or_default().push(v.to_owned());
        }
    }
    let Some(user) = user else {
        if !groups.is_empty() || uid.is_some() || !extra.is_empty() {
            return Err(ApiError::internal(
                "Internal error occurred: impersonation headers without Impersonate-User: requested groups, uid or extra without impersonating a user",
            ));
        }
        return Ok(requester);
    };
    let check = |attrs: Attributes| -> ApiResult<()> {
        let decision = authorizer.authorize(&attrs);
        if decision.allowed {
            Ok(())
        } else {
            Err(attrs.forbidden(&decision.reason))
        }
    };
    let impersonate = |group: &str, resource: &str, namespace: &str, name: &str| {
        Attributes::resource(&requester, "impersonate", group, resource, namespace, name)
    };
    let mut out_groups = Vec::new();
    match service_account(&user) {
        Some((ns, name)) => {
            check(impersonate("", "serviceaccounts", ns, name))?;
            if groups.is_empty() {
                out_groups.push("system:serviceaccounts".to_owned());
                out_groups.push(format!("system:serviceaccounts:{ns}"));
            }
        }
        None => check(impersonate("", "users", "", &user))?,
    }
    for g in &groups {
        check(impersonate("", "groups", "", g))?;
        out_groups.push(g.clone());
    }
    for (key, vals) in &extra {
        for v in vals {
            let mut attrs = impersonate("authentication.k8s.io", "userextras", "", v);
            attrs.subresource = key.clone();
            check(attrs)?;
        }
    }
    if let Some(uid) = &uid {
        check(impersonate("authentication.k8s.io", "uids", "", uid))?;
    }
    let everyone = if user == "system:anonymous" {
        "system:unauthenticated"
    } else {
        "system:authenticated"
    };
    if !out_groups.iter().any(|g| g == everyone) {
        out_groups.push(everyone.to_owned());
    }
    Ok(UserInfo {
        name: user,
        uid: uid.unwrap_or_default(),
        groups: out_groups,
        extra,
    })
}

/// `system:serviceaccount:<ns>:<name>` → (ns, name).
fn service_account(user: &str) -> Option<(&str, &str)> {
    let rest = user.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains(':')).then_some((ns, name))
}

/// Extra keys are percent-encoded in the header name.
fn percent_decode(key: &str) -> String {
    form_urlencoded::parse(format!("k={key}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| key.to_owned())
}

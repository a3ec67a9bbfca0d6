//! RBAC's guard on its own objects (kube-apiserver's `pkg/registry/rbac/*/policybased`):
//! a Role or ClusterRole may only grant what its writer already holds, unless the
//! writer may `escalate` it; a binding may only bind a role whose permissions its
//! writer holds, unless the writer may `bind` it. `system:masters` (and the server's
//! own writes) pass. Refusals are 403s worded as upstream's `ConfirmNoEscalation`:
//! `user "alice" (groups=["system:authenticated"]) is attempting to grant RBAC
//! permissions not currently held:` and the missing rules, one per line.
//!
//! Entry points: [`check_create`], [`check_update`], called by the REST layer with the
//! object as it is about to be stored.

use serde_json::Value;

use super::rbac::{Binding, RoleRef};
use super::rules::{Rule, go_quote, uncovered};
use super::{Attributes, forbidden_error, is_master};
use crate::apiserver::auth::UserInfo;
use crate::apiserver::rest::Ctx;
use crate::apiserver::status::ApiResult;

const GROUP: &str = "rbac.authorization.k8s.io";

/// Checks a new RBAC object.
pub fn check_create(ctx: &Ctx, obj: &Value) -> ApiResult<()> {
    guard(ctx, None, obj)
}

/// Checks an update of an RBAC object from `old` to `new`.
pub fn check_update(ctx: &Ctx, old: &Value, new: &Value) -> ApiResult<()> {
    guard(ctx, Some(old), new)
}

fn guard(ctx: &Ctx, old: Option<&Value>, obj: &Value) -> ApiResult<()> {
    let def = &ctx.def;
    if def.group != GROUP {
        return Ok(());
    }
    // The server's own writes (bootstrap policy, reconciliation) and system:masters.
    let Some(user) = &ctx.user else {
        return Ok(());
    };
    if is_master(user) {
        return Ok(());
    }
    let namespace = ctx.namespace.as_deref().unwrap_or_default();
    let name = crate::apiserver::object::name(obj);
    // Changes that only touch metadata (finalizers, owner references, labels) grant
    // nothing new.
    if let Some(old) = old
        && same_but_metadata(old, obj)
    {
        return Ok(());
    }
    let forbidden = |why: &str| forbidden_error(GROUP, &def.plural, name, why);
    match def.plural.as_str() {
        "roles" | "clusterroles" => {
            if old.is_some_and(|o| o.get("rules") == obj.get("rules"))
                && old.is_some_and(|o| o.get("aggregationRule") == obj.get("aggregationRule"))
            {
                return Ok(());
            }
            let escalate =
                Attributes::resource(user, "escalate", GROUP, &def.plural, namespace, name);
            if ctx.api.authorizer.authorize(&escalate).allowed {
                return Ok(());
            }
            let aggregated = |v: &Value| v.get("aggregationRule").is_some_and(|a| !a.is_null());
            if def.plural == "clusterroles" && (aggregated(obj) || old.is_some_and(aggregated)) {
                let full = [Rule::all_resources(), Rule::all_non_resource()];
                if confirm_no_escalation(ctx, user, namespace, &full).is_err() {
                    let article = if old.is_some() { "an" } else { "the" };
                    return Err(forbidden(&format!(
                        "must have cluster-admin privileges to use {article} aggregationRule"
                    )));
                }
            }
            confirm_no_escalation(ctx, user, namespace, &Rule::list(obj.get("rules")))
                .map_err(|why| forbidden(&why))
        }
        "rolebindings" | "clusterrolebindings" => {
            let binding = Binding::parse(name, obj);
            let RoleRef { kind, name: role } = &binding.role_ref;
            let resource = match kind.as_str() {
                "Role" => "roles",
                _ => "clusterroles",
            };
            let bind = Attributes::resource(user, "bind", GROUP, resource, namespace, role);
            if ctx.api.authorizer.authorize(&bind).allowed {
                return Ok(());
            }
            let rules = ctx
                .api
                .rbac
                .role_rules(&binding.role_ref, namespace)
                .map_err(|why| forbidden(&why))?;
            confirm_no_escalation(ctx, user, namespace, &rules).map_err(|why| forbidden(&why))
        }
        _ => Ok(()),
    }
}

/// `validation.ConfirmNoEscalation`: `Err` names what `user` does not hold.
fn confirm_no_escalation(
    ctx: &Ctx,
    user: &UserInfo,
    namespace: &str,
    wanted: &[Rule],
) -> Result<(), String> {
    let held = ctx.api.authorizer.rules_for(user, namespace);
    let missing = uncovered(&held.rules, wanted);
    if missing.is_empty() {
        return Ok(());
    }
    let groups: Vec<String> = user.groups.iter().map(|g| go_quote(g)).collect();
    let mut msg = format!(
        "user {} (groups=[{}]) is attempting to grant RBAC permissions not currently held:\n{}",
        go_quote(&user.name),
        groups.join(" "),
        missing.join("\n")
    );
    if !held.errors.is_empty() {
        msg.push_str(&format!(
            "; resolution errors: [{}]",
            held.errors.join(", ")
        ));
    }
    Err(msg)
}

fn same_but_metadata(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("metadata");
        }
        v
    };
    strip(old) == strip(new)
}

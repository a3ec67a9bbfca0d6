//! Subresources: `status` (GET/PUT/PATCH of status only), `pods/ephemeralcontainers`
//! (GET/PUT/PATCH of spec.ephemeralContainers only), `scale` (an
//! `autoscaling/v1` Scale over spec.replicas), `pods/binding` (the scheduler's bind),
//! `pods/eviction` (in `eviction.rs`), `namespaces/finalize`. The streaming ones (`log`, `exec`, `attach`,
//! `portforward`, `proxy`) need the node agent's kubelet API and answer 503 until a node
//! serves it.

use axum::body::Body;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::{Ctx, Part, update_loop, value_response};
use crate::apiserver::registry::ScalePaths;
use crate::apiserver::request::{content_type, decode, read_body};
use crate::apiserver::status::{ApiError, ApiResult};
use crate::apiserver::{kubelet, object};

pub async fn handle(
    ctx: Ctx,
    method: Method,
    name: &str,
    sub: &str,
    rest: &[String],
    mut req: axum::http::Request<Body>,
) -> ApiResult<Response> {
    let upgrade = hyper::upgrade::on(&mut req);
    // Repeated keys (`command=`) matter here: the query goes on as it came.
    let raw_q = req.uri().query().map(str::to_owned);
    let body = req.into_body();
    let def = ctx.def.clone();
    let not_allowed = || {
        ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method} {}/{sub})",
            def.plural
        ))
    };
    match sub {
        "status" if def.status => match method {
            Method::GET => super::get::get(ctx, name).await,
            Method::PUT => super::update::put(ctx, name, Some(Part::Status), body).await,
            Method::PATCH => super::patch::patch(ctx, name, Some(Part::Status), body).await,
            _ => Err(not_allowed()),
        },
        "finalize" if def.kind == "Namespace" && def.group.is_empty() => match method {
            Method::PUT => super::update::put(ctx, name, Some(Part::Finalize), body).await,
            _ => Err(not_allowed()),
        },
        "approval" if def.kind == "CertificateSigningRequest" => match method {
            Method::GET => super::get::get(ctx, name).await,
            Method::PUT => super::update::put(ctx, name, Some(Part::Approval), body).await,
            Method::PATCH => super::patch::patch(ctx, name, Some(Part::Approval), body).await,
            _ => Err(not_allowed()),
        },
        "scale" if def.scale.is_some() => scale(ctx, method, name, body).await,
        "ephemeralcontainers" if def.kind == "Pod" && def.group.is_empty() => match method {
            Method::GET => super::get::get(ctx, name).await,
            Method::PUT => {
                super::update::put(ctx, name, Some(Part::EphemeralContainers), body).await
            }
            Method::PATCH => {
                super::patch::patch(ctx, name, Some(Part::EphemeralContainers), body).await
            }
            _ => Err(not_allowed()),
        },
        "binding" if def.kind == "Pod" && method == Method::POST => bind(ctx, name, body).await,
        "eviction" if def.kind == "Pod" && method == Method::POST => {
            super::eviction::evict(ctx, name, body).await
        }
        "token" if def.kind == "ServiceAccount" && method == Method::POST => {
            token(ctx, name, body).await
        }
        "log" | "exec" | "attach" | "portforward" | "proxy" if def.subresources.contains(&sub) => {
            let Some((obj, _)) = ctx.current(name).await? else {
                return Err(ctx.not_found(name));
            };
            // Admission webhooks for CONNECTs (exec, attach, portforward, proxy).
            crate::apiserver::admission::webhook::admit_connect(
                &ctx,
                name,
                sub,
                raw_q.as_deref(),
                rest,
            )
            .await?;
            let node_name = if def.kind == "Pod" {
                obj.pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("pod {name} does not have a host assigned"))
                    })?
                    .to_owned()
            } else {
                name.to_owned()
            };
            let node = ctx
                .api
                .cache
                .get(&format!("/registry/core/nodes/{node_name}"))
                .map(|c| c.value());
            let base = node.as_ref().and_then(kubelet::endpoint).ok_or_else(|| {
                ApiError::new(
                    503,
                    "ServiceUnavailable",
                    format!("node {node_name:?} has no InternalIP address to reach its kubelet"),
                )
            })?;
            match (def.kind.as_str(), sub, &method) {
                ("Pod", "log", &Method::GET) => pod_log(&ctx, name, &obj, &base).await,
                ("Pod", "exec" | "attach", &Method::GET | &Method::POST) => {
                    let container = pick_container(&ctx, name, &obj)?;
                    let ns = ctx.namespace.as_deref().unwrap_or("default");
                    let mut path = format!("/{sub}/{ns}/{name}/{container}");
                    if let Some(q) = &raw_q {
                        path.push('?');
                        path.push_str(q);
                    }
                    kubelet::upgrade(&base, &path, &ctx.headers, upgrade).await
                }
                ("Pod", "portforward", &Method::GET | &Method::POST) => {
                    let ns = ctx.namespace.as_deref().unwrap_or("default");
                    let mut path = format!("/portForward/{ns}/{name}");
                    if let Some(q) = &raw_q {
                        path.push('?');
                        path.push_str(q);
                    }
                    kubelet::upgrade(&base, &path, &ctx.headers, upgrade).await
                }
                ("Node", "proxy", &Method::GET) => {
                    let mut path = format!("/{}", rest.join("/"));
                    if let Some(q) = &raw_q {
                        path.push('?');
                        path.push_str(q);
                    }
                    kubelet::get(&base, &path).await
                }
                _ => {
                    let mut err = ApiError::new(
                        503,
                        "ServiceUnavailable",
                        format!(
                            "{}/{sub} ({method}) is not served by berth's kubelet API yet",
                            def.plural
                        ),
                    );
                    err.retry_after = Some(5);
                    Err(err)
                }
            }
        }
        _ => Err(ApiError::path_not_found(sub)),
    }
}

/// The `autoscaling/v1` Scale view of `obj`.
pub(crate) fn scale_of(paths: &ScalePaths, obj: &Value) -> Value {
    let meta = object::meta(obj).cloned().unwrap_or_default();
    let selector = match &paths.label_selector {
        Some(path) => obj
            .pointer(&ScalePaths::pointer(path))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        None => obj
            .pointer("/spec/selector")
            .map(crate::apiserver::selectors::format_selector)
            .unwrap_or_default(),
    };
    let int = |path: &str| {
        obj.pointer(&ScalePaths::pointer(path))
            .cloned()
            .unwrap_or(json!(0))
    };
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
            "creationTimestamp": meta.get("creationTimestamp"),
        },
        "spec": {"replicas": int(&paths.spec_replicas)},
        "status": {"replicas": int(&paths.status_replicas), "selector": selector},
    })
}

/// Sets the value at JSON pointer `ptr`, creating objects on the way.
fn set_pointer(obj: &mut Value, ptr: &str, value: Value) {
    let mut at = obj;
    for part in ptr.trim_start_matches('/').split('/') {
        if !at.is_object() {
            *at = json!({});
        }
        at = &mut at[part];
    }
    *at = value;
}

/// `{name}/scale`: GET gives the Scale view; PUT, and PATCH of every kind (apply
/// too), change the replicas of the live object, each attempt made on the object as
/// read then. The write is the main resource's, recorded in managedFields with
/// subresource `scale` and admitted as a Scale (`autoscaling/v1`), as upstream's.
async fn scale(ctx: Ctx, method: Method, name: &str, body: Body) -> ApiResult<Response> {
    let Some(paths) = ctx.def.scale.clone() else {
        return Err(ApiError::path_not_found("scale"));
    };
    if method == Method::GET {
        let Some((obj, _)) = ctx.current(name).await? else {
            return Err(ctx.not_found(name));
        };
        // The scale paths are the served version's.
        let obj = ctx.external(obj).await?;
        return Ok(value_response(StatusCode::OK, &scale_of(&paths, &obj)));
    }
    if !matches!(method, Method::PUT | Method::PATCH) {
        return Err(ApiError::method_not_allowed(
            "scale supports GET, PUT and PATCH",
        ));
    }
    let media = content_type(&ctx.headers);
    let apply = method == Method::PATCH && media == "application/apply-patch+yaml";
    if method == Method::PATCH {
        crate::apiserver::managed_fields::check_patch_options(&ctx, apply)?;
    }
    let bytes = read_body(body, ctx.api.max_body).await?;
    let (stored, _) = if apply {
        let config = decode(&bytes, "application/apply-patch+yaml")?;
        if !config.is_object() {
            return Err(ApiError::bad_request(
                "error decoding YAML: the apply configuration must be an object",
            ));
        }
        super::patch::check_apply_type(&config, "autoscaling", "v1", "Scale")?;
        let config_name = object::name(&config);
        if !config_name.is_empty() && config_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({config_name}) does not match the name on the URL ({name})"
            )));
        }
        // The Scale's fields are the resource's: applied as the resource, through
        // the `scale` subresource.
        let mut applied = json!({
            "apiVersion": ctx.def.api_version(),
            "kind": ctx.def.kind,
            "metadata": {"name": name},
        });
        if let Some(rv) = object::meta_str(&config, "resourceVersion") {
            applied["metadata"]["resourceVersion"] = json!(rv);
        }
        if let Some(replicas) = config.pointer("/spec/replicas") {
            check_replicas(name, replicas)?;
            set_replicas(&paths, &mut applied, replicas.clone());
        }
        update_loop(&ctx, name, Part::Scale, |old| {
            crate::apiserver::managed_fields::apply(&ctx, Some(old), &applied, "scale")
        })
        .await?
    } else if method == Method::PUT {
        let desired = decode(&bytes, &media)?;
        let replicas = desired
            .pointer("/spec/replicas")
            .cloned()
            .unwrap_or(json!(0));
        check_replicas(name, &replicas)?;
        let pinned = object::meta_str(&desired, "resourceVersion").map(str::to_owned);
        update_loop(&ctx, name, Part::Scale, |old| {
            let mut new = old.clone();
            set_replicas(&paths, &mut new, replicas.clone());
            pin(&mut new, pinned.as_deref());
            Ok(new)
        })
        .await?
    } else {
        let patch: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
        let json_patch = match media.as_str() {
            "application/json-patch+json" => Some(
                serde_json::from_value::<json_patch::Patch>(patch.clone())
                    .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?,
            ),
            // A Scale has no list to merge by key: a strategic merge is a merge.
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => None,
            other => {
                return Err(ApiError::unsupported_media_type(format!(
                    "the body of the request was in an unknown format ({other:?}) - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json"
                )));
            }
        };
        update_loop(&ctx, name, Part::Scale, |old| {
            // The patch applies to the Scale of the object as read in this attempt.
            let mut view = scale_of(&paths, old);
            let read = object::meta_str(&view, "resourceVersion").map(str::to_owned);
            match &json_patch {
                Some(p) => json_patch::patch(&mut view, p)
                    .map_err(|e| ApiError::new(422, "Invalid", e.to_string()))?,
                None => json_patch::merge(&mut view, &patch),
            }
            let replicas = view.pointer("/spec/replicas").cloned().unwrap_or(json!(0));
            check_replicas(name, &replicas)?;
            let mut new = old.clone();
            set_replicas(&paths, &mut new, replicas);
            // A resourceVersion the patch set is a precondition; the one read is not.
            let wanted = object::meta_str(&view, "resourceVersion").map(str::to_owned);
            pin(
                &mut new,
                wanted.filter(|rv| Some(rv) != read.as_ref()).as_deref(),
            );
            Ok(new)
        })
        .await?
    };
    let stored = ctx.external(stored).await?;
    Ok(value_response(StatusCode::OK, &scale_of(&paths, &stored)))
}

/// A Scale's `spec.replicas` must be a whole number, not negative.
fn check_replicas(name: &str, replicas: &Value) -> ApiResult<()> {
    match replicas.as_i64() {
        Some(r) if r >= 0 => Ok(()),
        _ => Err(ApiError::invalid(
            "autoscaling",
            "Scale",
            name,
            vec![crate::apiserver::status::Cause::invalid(
                "spec.replicas",
                format!("Invalid value: {replicas}: must be greater than or equal to 0"),
            )],
        )),
    }
}

/// Sets `obj`'s resourceVersion to the precondition `rv`, or removes it (none).
fn pin(obj: &mut Value, rv: Option<&str>) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        match rv {
            Some(rv) => m.insert("resourceVersion".into(), json!(rv)),
            None => m.remove("resourceVersion"),
        };
    }
}

/// Sets the replicas `obj`'s scale paths name to `replicas`.
pub(crate) fn set_replicas(paths: &ScalePaths, obj: &mut Value, replicas: Value) {
    set_pointer(obj, &ScalePaths::pointer(&paths.spec_replicas), replicas);
}

async fn bind(ctx: Ctx, name: &str, body: Body) -> ApiResult<Response> {
    let bytes = read_body(body, ctx.api.max_body).await?;
    let binding = decode(&bytes, &content_type(&ctx.headers))?;
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                "",
                "Binding",
                name,
                vec![crate::apiserver::status::Cause::required("target.name")],
            )
        })?
        .to_owned();
    update_loop(&ctx, name, Part::Bind, |old| {
        if object::meta(old).is_some_and(|m| m.contains_key("deletionTimestamp")) {
            return Err(ApiError::conflict("", "pods", name));
        }
        if let Some(current) = old.pointer("/spec/nodeName").and_then(Value::as_str)
            && !current.is_empty()
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!("Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{current}\""),
            ));
        }
        let mut new = old.clone();
        new["spec"]["nodeName"] = json!(node);
        if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        Ok(new)
    })
    .await?;
    Ok(value_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

/// `serviceaccounts/{name}/token`: a TokenRequest answered with a signed token.
async fn token(ctx: Ctx, name: &str, body: Body) -> ApiResult<Response> {
    let bytes = read_body(body, ctx.api.max_body).await?;
    let request = if bytes.is_empty() {
        json!({})
    } else {
        decode(&bytes, &content_type(&ctx.headers))?
    };
    let Some((account, _)) = ctx.current(name).await? else {
        return Err(ctx.not_found(name));
    };
    let ns = ctx.namespace.clone().unwrap_or_default();
    crate::apiserver::admission::node_restriction::admit_token(
        ctx.user.as_ref(),
        &ctx.def,
        &ns,
        name,
        &request,
        |pod| {
            ctx.api
                .cache
                .get(&format!("/registry/core/pods/{ns}/{pod}"))
                .map(|c| c.value())
        },
    )?;
    let uid = object::meta_str(&account, "uid")
        .unwrap_or_default()
        .to_owned();
    let spec = request.get("spec").cloned().unwrap_or_else(|| json!({}));
    let invalid = |message: String| {
        ApiError::new(
            422,
            "Invalid",
            format!("TokenRequest.authentication.k8s.io \"{name}\" is invalid: {message}"),
        )
    };
    // A bound object must exist with the uid given.
    let bound = match spec.get("boundObjectRef") {
        None | Some(Value::Null) => None,
        Some(r) => {
            let kind = r
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let oname = r
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let resource = match kind.as_str() {
                "Pod" => "pods",
                "Secret" => "secrets",
                other => {
                    return Err(invalid(format!(
                        "spec.boundObjectRef.kind: Unsupported value: \"{other}\": supported values: \"Pod\", \"Secret\""
                    )));
                }
            };
            let live = ctx
                .api
                .cache
                .get(&format!("/registry/core/{resource}/{ns}/{oname}"))
                .map(|c| c.value());
            let live_uid = live
                .as_ref()
                .and_then(|o| object::meta_str(o, "uid"))
                .map(str::to_owned);
            let want = r.get("uid").and_then(Value::as_str).map(str::to_owned);
            match (live_uid, want) {
                (Some(l), Some(w)) if l != w => {
                    return Err(ApiError::new(
                        409,
                        "Conflict",
                        format!(
                            "the UID in the bound object reference ({w}) does not match the UID in record. The object might have been deleted and then recreated"
                        ),
                    ));
                }
                (Some(l), _) => Some((kind, oname, l)),
                (None, _) => {
                    return Err(ApiError::not_found("", resource, &oname));
                }
            }
        }
    };
    let (token, exp) = ctx
        .api
        .sa_tokens
        .issue(
            &ns,
            name,
            &uid,
            &spec,
            bound
                .as_ref()
                .map(|(k, n, u)| (k.as_str(), n.as_str(), u.as_str())),
        )
        .map_err(invalid)?;
    let mut out_spec = spec.clone();
    if out_spec.get("expirationSeconds").is_none() {
        out_spec["expirationSeconds"] = json!(3600);
    }
    if out_spec
        .get("audiences")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        out_spec["audiences"] = json!([crate::apiserver::serviceaccount_token::ISSUER]);
    }
    Ok(value_response(
        StatusCode::CREATED,
        &json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": ns,
                "creationTimestamp": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()},
            "spec": out_spec,
            "status": {"token": token,
                "expirationTimestamp": exp.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()},
        }),
    ))
}

/// `pods/log`: which container (the only one, or `container=`), then the kubelet's
/// `/containerLogs` with the log options.
async fn pod_log(ctx: &Ctx, name: &str, pod: &Value, base: &str) -> ApiResult<Response> {
    let container = pick_container(ctx, name, pod)?;
    for key in ["tailLines", "sinceSeconds", "limitBytes"] {
        ctx.query.int(key)?;
    }
    let query = {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for key in [
            "follow",
            "previous",
            "timestamps",
            "tailLines",
            "sinceSeconds",
            "limitBytes",
        ] {
            if let Some(v) = ctx.query.get(key) {
                q.append_pair(key, v);
            }
        }
        q.finish()
    };
    let ns = ctx.namespace.as_deref().unwrap_or("default");
    let path = format!("/containerLogs/{ns}/{name}/{container}?{query}");
    kubelet::get(base, &path).await
}

/// The container a log or exec request is for: `container=`, or the pod's only one.
fn pick_container(ctx: &Ctx, name: &str, pod: &Value) -> ApiResult<String> {
    let names: Vec<&str> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .chain(
            pod.pointer("/spec/initContainers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        )
        .chain(
            pod.pointer("/spec/ephemeralContainers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        )
        .filter_map(|c| c["name"].as_str())
        .collect();
    let container = match ctx.query.get("container") {
        Some(c) if names.contains(&c) => c.to_owned(),
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )));
        }
        None => {
            let main: Vec<&str> = pod
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c["name"].as_str())
                .collect();
            match main.as_slice() {
                [one] => (*one).to_owned(),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "a container name must be specified for pod {name}, choose one of: [{}]",
                        main.join(" ")
                    )));
                }
            }
        }
    };
    Ok(container)
}

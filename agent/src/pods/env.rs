//! A container's environment as the kubelet builds it: `envFrom` first, then `env`
//! (value with `$(VAR)` expansion, fieldRef, resourceFieldRef, configMapKeyRef,
//! secretKeyRef), and the same expansion applied to command and args; then the
//! Services' variables (`KUBERNETES_SERVICE_HOST`…, `pkg/kubelet/envvars`) not already set.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, Service};

use super::inputs::Inputs;
use super::resources;

/// Where a downward-API value comes from that is not in the Pod object itself.
#[derive(Debug, Clone, Default)]
pub struct Runtime {
    pub pod_ip: String,
    pub host_ip: String,
    /// Node allocatable (limits default to it): milli-CPUs and bytes.
    pub node_cpu_milli: i128,
    pub node_memory: i128,
}

/// `$(NAME)` → value of NAME when defined, `$$` → `$`; anything else as it is.
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
        {
            let name = &body[..end];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The value of a downward-API `fieldRef` path.
pub fn field_value(pod: &Pod, path: &str, rt: &Runtime) -> Result<String, String> {
    let meta = &pod.metadata;
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| -> Option<String> {
        let key = path
            .strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    if let Some(v) = keyed("metadata.labels", meta.labels.as_ref()) {
        return Ok(v);
    }
    if let Some(v) = keyed("metadata.annotations", meta.annotations.as_ref()) {
        return Ok(v);
    }
    let spec = pod.spec.as_ref();
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => rt.host_ip.clone(),
        "status.podIP" | "status.podIPs" => rt.pod_ip.clone(),
        other => return Err(format!("unsupported fieldRef path {other:?}")),
    })
}

/// `key="value"` lines, as the downward API writes label and annotation maps.
pub fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.map(|m| {
        m.iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    })
    .unwrap_or_default()
}

/// The value of a `resourceFieldRef` for container `c` (limits default to the node's
/// allocatable), divided by `divisor` and rounded up.
pub fn resource_value(
    c: &Container,
    resource: &str,
    divisor: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    rt: &Runtime,
) -> Result<String, String> {
    let res = c.resources.as_ref();
    let (map, key) = match resource.split_once('.') {
        Some(("limits", k)) => (res.and_then(|r| r.limits.as_ref()), k),
        Some(("requests", k)) => (res.and_then(|r| r.requests.as_ref()), k),
        _ => return Err(format!("unsupported resourceFieldRef {resource:?}")),
    };
    let value = map.and_then(|m| m.get(key)).and_then(resources::milli);
    let value = match (value, resource) {
        (Some(v), _) => v,
        (None, "limits.cpu") => rt.node_cpu_milli,
        (None, "limits.memory") => rt.node_memory * 1000,
        (None, _) => 0,
    };
    let div = divisor
        .and_then(resources::milli)
        .filter(|d| *d > 0)
        .unwrap_or(1000);
    Ok(((value + div - 1) / div).to_string())
}

/// `my-svc` → `MY_SVC`.
fn env_name(s: &str) -> String {
    s.replace('-', "_").to_uppercase()
}

/// The kubelet's service variables (`envvars.FromServices`): for each Service with a
/// cluster IP, `<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT` (the first port),
/// `<NAME>_SERVICE_PORT_<PORT NAME>`, and Docker's link variables. A Service of the
/// pod's namespace hides one of the same name from `default`.
pub fn service_env(pod_namespace: &str, services: &[Service]) -> BTreeMap<String, String> {
    let mut by_name: BTreeMap<&str, &Service> = BTreeMap::new();
    for svc in services {
        let Some(name) = svc.metadata.name.as_deref() else {
            continue;
        };
        let local = svc.metadata.namespace.as_deref() == Some(pod_namespace);
        if local || !by_name.contains_key(name) {
            by_name.insert(name, svc);
        }
    }
    let mut out = BTreeMap::new();
    for (name, svc) in by_name {
        let Some(spec) = &svc.spec else { continue };
        let ip = spec.cluster_ip.as_deref().unwrap_or_default();
        let ports = spec.ports.as_deref().unwrap_or_default();
        if ip.is_empty() || ip == "None" || ports.is_empty() {
            continue;
        }
        let prefix = env_name(name);
        out.insert(format!("{prefix}_SERVICE_HOST"), ip.to_owned());
        out.insert(format!("{prefix}_SERVICE_PORT"), ports[0].port.to_string());
        for p in ports {
            if let Some(port_name) = p.name.as_deref().filter(|n| !n.is_empty()) {
                out.insert(
                    format!("{prefix}_SERVICE_PORT_{}", env_name(port_name)),
                    p.port.to_string(),
                );
            }
        }
        let host = |port: i32| {
            if ip.contains(':') {
                format!("[{ip}]:{port}")
            } else {
                format!("{ip}:{port}")
            }
        };
        for (i, p) in ports.iter().enumerate() {
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            let lower = proto.to_lowercase();
            let url = format!("{lower}://{}", host(p.port));
            if i == 0 {
                out.insert(format!("{prefix}_PORT"), url.clone());
            }
            let port_prefix = format!("{prefix}_PORT_{}_{}", p.port, proto.to_uppercase());
            out.insert(format!("{port_prefix}_PROTO"), lower);
            out.insert(format!("{port_prefix}_PORT"), p.port.to_string());
            out.insert(format!("{port_prefix}_ADDR"), ip.to_owned());
            out.insert(port_prefix, url);
        }
    }
    out
}

/// The container's environment, in order, or why it cannot be built (the kubelet's
/// `CreateContainerConfigError` message).
pub fn container_env(
    pod: &Pod,
    c: &Container,
    inputs: &Inputs,
    rt: &Runtime,
) -> Result<Vec<(String, String)>, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let services = service_env(ns, &inputs.services);
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut set = |vars: &mut BTreeMap<String, String>, k: String, v: String| {
        if !vars.contains_key(&k) {
            order.push(k.clone());
        }
        vars.insert(k, v);
    };
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match inputs.config_map(&r.name) {
                Some(cm) => {
                    for (k, v) in cm.data.iter().flatten() {
                        set(&mut vars, format!("{prefix}{k}"), v.clone());
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(format!("configmap \"{}\" not found", r.name)),
            }
        }
        if let Some(r) = &from.secret_ref {
            match inputs.secret(&r.name) {
                Some(s) => {
                    for (k, v) in s.data.iter().flatten() {
                        set(
                            &mut vars,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                        );
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(format!("secret \"{}\" not found", r.name)),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            // `$(VAR)` sees the variables so far, then the services' (the kubelet's
            // `MappingFuncFor(tmpEnv, serviceEnv)`).
            let mut scope = services.clone();
            scope.extend(vars.iter().map(|(k, v)| (k.clone(), v.clone())));
            expand(v, &scope)
        } else if let Some(from) = &e.value_from {
            if let Some(f) = &from.field_ref {
                field_value(pod, &f.field_path, rt)?
            } else if let Some(r) = &from.resource_field_ref {
                let target = match r.container_name.as_deref() {
                    Some(name) if !name.is_empty() => pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.containers.iter().find(|c| c.name == name))
                        .ok_or_else(|| format!("container {name:?} not found in pod {ns}"))?,
                    _ => c,
                };
                resource_value(target, &r.resource, r.divisor.as_ref(), rt)?
            } else if let Some(r) = &from.config_map_key_ref {
                match inputs.config_map(&r.name) {
                    Some(cm) => match cm.data.as_ref().and_then(|d| d.get(&r.key)) {
                        Some(v) => v.clone(),
                        None if r.optional == Some(true) => continue,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in ConfigMap {ns}/{}",
                                r.key, r.name
                            ));
                        }
                    },
                    None if r.optional == Some(true) => continue,
                    None => return Err(format!("configmap \"{}\" not found", r.name)),
                }
            } else if let Some(r) = &from.secret_key_ref {
                match inputs.secret(&r.name) {
                    Some(s) => match s.data.as_ref().and_then(|d| d.get(&r.key)) {
                        Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                        None if r.optional == Some(true) => continue,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in Secret {ns}/{}",
                                r.key, r.name
                            ));
                        }
                    },
                    None if r.optional == Some(true) => continue,
                    None => return Err(format!("secret \"{}\" not found", r.name)),
                }
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        set(&mut vars, e.name.clone(), value);
    }
    for (k, v) in services {
        if !vars.contains_key(&k) {
            set(&mut vars, k, v);
        }
    }
    Ok(order
        .into_iter()
        .map(|k| {
            let v = vars.get(&k).cloned().unwrap_or_default();
            (k, v)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion() {
        let vars: BTreeMap<String, String> =
            [("A".to_string(), "x".to_string())].into_iter().collect();
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &vars), "x-$(B)-$(A)-$");
        assert_eq!(expand("plain", &vars), "plain");
    }

    #[test]
    fn services_become_variables_as_the_kubelet_names_them() {
        let svc = |ns: &str, name: &str, ip: &str| -> Service {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": ns},
                "spec": {"clusterIP": ip, "ports": [
                    {"name": "https", "port": 443, "protocol": "TCP"},
                    {"name": "dns-udp", "port": 53, "protocol": "UDP"}]},
            }))
            .expect("a service")
        };
        let env = service_env(
            "dev",
            &[
                svc("default", "kubernetes", "10.96.0.1"),
                svc("dev", "my-db", "10.96.0.7"),
                svc("dev", "headless", "None"),
            ],
        );
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.96.0.1");
        assert_eq!(env["KUBERNETES_SERVICE_PORT"], "443");
        assert_eq!(env["KUBERNETES_SERVICE_PORT_HTTPS"], "443");
        assert_eq!(env["KUBERNETES_PORT"], "tcp://10.96.0.1:443");
        assert_eq!(env["KUBERNETES_PORT_443_TCP"], "tcp://10.96.0.1:443");
        assert_eq!(env["KUBERNETES_PORT_443_TCP_ADDR"], "10.96.0.1");
        assert_eq!(env["MY_DB_SERVICE_PORT_DNS_UDP"], "53");
        assert_eq!(env["MY_DB_PORT_53_UDP_PROTO"], "udp");
        assert!(!env.keys().any(|k| k.starts_with("HEADLESS")));
        // The pod's own `kubernetes` Service hides default's.
        let env = service_env(
            "dev",
            &[
                svc("default", "kubernetes", "10.96.0.1"),
                svc("dev", "kubernetes", "10.96.0.9"),
            ],
        );
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.96.0.9");
    }
}

//! Where a remote APIService's server is: its Service's ready endpoints, as
//! kube-apiserver finds them with `--enable-aggregator-routing` (`ResolveEndpoint`):
//! the Service port the APIService names, then an address of a ready endpoint with
//! that port's name. berth-server runs on the host, where the eBPF ClusterIP load
//! balancing (hooked on pods' sockets) does not apply, so it always dials the
//! endpoints themselves.
//!
//! Endpoints come from the Service's EndpointSlices and, for a selectorless Service
//! whose Endpoints object was written by hand, from that object — what upstream's
//! EndpointSlice mirroring controller would have made a slice of.
//!
//! Entry points: [`precheck`] (the availability controller's checks and their reasons),
//! [`ready`] and [`resolve`] (addresses to dial).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

use super::apiservice::ServiceRef;
use crate::apiserver::Api;

const SERVICE_NAME: &str = "kubernetes.io/service-name";

/// The endpoints and ports of one EndpointSlice (or of one Endpoints subset).
#[derive(Debug, Default, PartialEq)]
struct Slice {
    /// (address, ready).
    endpoints: Vec<(IpAddr, bool)>,
    /// (name, port); an unnamed port is `""`.
    ports: Vec<(String, Option<u16>)>,
}

impl Slice {
    /// Ready addresses on the port named `port_name`.
    fn ready(&self, port_name: &str) -> Vec<SocketAddr> {
        let Some(port) = self
            .ports
            .iter()
            .find(|(n, p)| n == port_name && p.is_some())
            .and_then(|(_, p)| *p)
        else {
            return Vec::new();
        };
        self.endpoints
            .iter()
            .filter(|(_, ready)| *ready)
            .map(|(ip, _)| SocketAddr::new(*ip, port))
            .collect()
    }
}

fn port(v: &Value) -> Option<u16> {
    v.as_u64().and_then(|p| u16::try_from(p).ok())
}

fn ports(list: Option<&Value>) -> Vec<(String, Option<u16>)> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                port(&p["port"]),
            )
        })
        .collect()
}

fn from_slice(slice: &Value) -> Slice {
    let endpoints = slice["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| {
            // A nil `ready` means ready (EndpointConditions).
            let ready = e.pointer("/conditions/ready").and_then(Value::as_bool) != Some(false);
            e["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str()?.parse().ok())
                .map(move |ip| (ip, ready))
        })
        .collect();
    Slice {
        endpoints,
        ports: ports(slice.get("ports")),
    }
}

fn from_endpoints(endpoints: &Value) -> Vec<Slice> {
    endpoints["subsets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|subset| {
            let ips = |key: &str, ready: bool| {
                subset[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a["ip"].as_str()?.parse().ok())
                    .map(move |ip| (ip, ready))
                    .collect::<Vec<_>>()
            };
            let mut endpoints = ips("addresses", true);
            endpoints.extend(ips("notReadyAddresses", false));
            Slice {
                endpoints,
                ports: ports(subset.get("ports")),
            }
        })
        .collect()
}

/// The Service's slices; `None` when it has neither EndpointSlices nor Endpoints.
fn slices(api: &Api, svc: &ServiceRef) -> Option<Vec<Slice>> {
    let prefix = format!(
        "/registry/discovery.k8s.io/endpointslices/{}/",
        svc.namespace
    );
    let (objs, _) = api.cache.list(&prefix, |o| {
        o.attrs.labels.get(SERVICE_NAME) == Some(svc.name.as_str())
    });
    let mut out: Vec<Slice> = objs.iter().map(|o| from_slice(&o.value())).collect();
    let key = format!("/registry/core/endpoints/{}/{}", svc.namespace, svc.name);
    let mirrored = api.cache.get(&key).map(|e| from_endpoints(&e.value()));
    if out.is_empty() && mirrored.is_none() {
        return None;
    }
    out.extend(mirrored.unwrap_or_default());
    Some(out)
}

fn service(api: &Api, svc: &ServiceRef) -> Option<Value> {
    let key = format!("/registry/core/services/{}/{}", svc.namespace, svc.name);
    api.cache.get(&key).map(|s| s.value())
}

/// The name of the Service port numbered `port`.
fn port_name(service: &Value, port: u16) -> Option<String> {
    service
        .pointer("/spec/ports")?
        .as_array()?
        .iter()
        .find(|p| p["port"].as_u64() == Some(u64::from(port)))
        .map(|p| p["name"].as_str().unwrap_or_default().to_owned())
}

fn service_type(service: &Value) -> &str {
    match service.pointer("/spec/type").and_then(Value::as_str) {
        None | Some("") => "ClusterIP",
        Some(t) => t,
    }
}

/// The availability controller's checks before it dials (kube-aggregator's remote
/// `AvailableConditionController`): `Err((reason, message))` with upstream's reasons and
/// messages when the Service, its port or its endpoints are missing. Only ClusterIP
/// Services are checked this way, as upstream.
pub fn precheck(api: &Api, svc: &ServiceRef) -> Result<(), (&'static str, String)> {
    let (name, ns) = (&svc.name, &svc.namespace);
    let Some(service) = service(api, svc) else {
        return Err((
            "ServiceNotFound",
            format!("service/{name} in \"{ns}\" is not present"),
        ));
    };
    if service_type(&service) != "ClusterIP" {
        return Ok(());
    }
    let Some(port_name) = port_name(&service, svc.port) else {
        return Err((
            "ServicePortError",
            format!(
                "service/{name} in \"{ns}\" is not listening on port {}",
                svc.port
            ),
        ));
    };
    let slices = slices(api, svc).unwrap_or_default();
    if slices.is_empty() {
        return Err((
            "EndpointsNotFound",
            format!("cannot find endpointslices for service/{name} in \"{ns}\""),
        ));
    }
    if slices.iter().all(|s| s.ready(&port_name).is_empty()) {
        return Err((
            "MissingEndpoints",
            format!(
                "endpointslices for service/{name} in \"{ns}\" have no addresses with port name \"{port_name}\""
            ),
        ));
    }
    Ok(())
}

/// Every ready address of the Service's port, or upstream's `ResolveEndpoint` error.
pub fn ready(api: &Api, svc: &ServiceRef) -> Result<Vec<SocketAddr>, String> {
    let Some(service) = service(api, svc) else {
        return Err(format!("service \"{}\" not found", svc.name));
    };
    let kind = service_type(&service);
    if !matches!(kind, "ClusterIP" | "NodePort" | "LoadBalancer") {
        return Err(format!("unsupported service type \"{kind}\""));
    }
    let Some(port_name) = port_name(&service, svc.port) else {
        return Err(format!(
            "no service port {} found for service \"{}\"",
            svc.port, svc.name
        ));
    };
    let mut out: Vec<SocketAddr> = slices(api, svc)
        .unwrap_or_default()
        .iter()
        .flat_map(|s| s.ready(&port_name))
        .collect();
    out.sort();
    out.dedup();
    if out.is_empty() {
        return Err(format!(
            "no endpoints available for service \"{}\"",
            svc.name
        ));
    }
    Ok(out)
}

/// One ready address to dial, taking turns among them.
pub fn resolve(api: &Api, svc: &ServiceRef) -> Result<SocketAddr, String> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let all = ready(api, svc)?;
    let i = NEXT.fetch_add(1, Ordering::Relaxed) % all.len();
    Ok(all[i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn slices_and_mirrored_endpoints() {
        let slice = from_slice(&json!({
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"]},
            ],
            "ports": [{"name": "https", "port": 4443}, {"port": 80}],
        }));
        assert_eq!(
            slice.ready("https"),
            [
                "10.0.0.1:4443".parse::<SocketAddr>().expect("addr"),
                "10.0.0.3:4443".parse().expect("addr"),
            ]
        );
        assert_eq!(
            slice.ready(""),
            [
                "10.0.0.1:80".parse::<SocketAddr>().expect("addr"),
                "10.0.0.3:80".parse().expect("addr")
            ]
        );
        assert!(slice.ready("metrics").is_empty());
        let mirrored = from_endpoints(&json!({"subsets": [{
            "addresses": [{"ip": "127.0.0.1"}],
            "notReadyAddresses": [{"ip": "127.0.0.2"}],
            "ports": [{"name": "https", "port": 8443}],
        }]}));
        assert_eq!(
            mirrored[0].ready("https"),
            ["127.0.0.1:8443".parse::<SocketAddr>().expect("addr")]
        );
    }

    #[test]
    fn service_ports_by_number() {
        let svc = json!({"spec": {"ports": [{"name": "https", "port": 443, "targetPort": 4443}, {"port": 80}]}});
        assert_eq!(port_name(&svc, 443).as_deref(), Some("https"));
        assert_eq!(port_name(&svc, 80).as_deref(), Some(""));
        assert_eq!(port_name(&svc, 8080), None);
        assert_eq!(service_type(&svc), "ClusterIP");
    }
}

//! The EndpointSlice and Endpoints controllers, as one loop over Services with a
//! selector: the pods it selects that have an IP become endpoints with Kubernetes'
//! conditions (ready: Ready and not terminating; serving: Ready; terminating: being
//! deleted; `publishNotReadyAddresses` makes every endpoint ready), ports resolved per
//! pod (a named targetPort through the pod's container ports), pods grouped into one
//! slice per distinct port set. Slices carry the `kubernetes.io/service-name` and
//! managed-by labels and a controller reference to their Service; the Endpoints object
//! of the same name lists ready addresses and notReadyAddresses (terminating pods left
//! out, as the endpoints controller does).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::{Value, json};

use super::pods;
use super::queue::{Queue, key_of, split_key};
use super::replicaset::ignore_gone;
use crate::client::Informers;

const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const CONTROLLER: &str = "endpointslice-controller.k8s.io";
const SERVICE_NAME: &str = "kubernetes.io/service-name";

struct Controller {
    /// Writes EndpointSlices (upstream's endpointslice controller).
    client: Client,
    /// Writes Endpoints (upstream's endpoints controller).
    endpoints_client: Client,
    services: Store<Service>,
    pods: Store<Pod>,
    slices: Store<EndpointSlice>,
}

pub fn start(
    client: Client,
    endpoints_client: Client,
    informers: &mut Informers,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let queue = Queue::new();
    let services = informers.add(Api::<Service>::all(client.clone()), {
        let q = queue.clone();
        move |s: &Service| q.add(key_of(&s.metadata))
    });
    let slices = informers.add(Api::<EndpointSlice>::all(client.clone()), {
        let q = queue.clone();
        move |s: &EndpointSlice| {
            if let (Some(ns), Some(svc)) = (
                s.metadata.namespace.as_deref(),
                s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME)),
            ) {
                q.add(format!("{ns}/{svc}"));
            }
        }
    });
    let pods = informers.add(Api::<Pod>::all(client.clone()), {
        let (q, svcs, sls) = (queue.clone(), services.clone(), slices.clone());
        move |pod: &Pod| route_pod(pod, &q, &svcs, &sls)
    });
    async move {
        let _ = services.wait_until_ready().await;
        let _ = slices.wait_until_ready().await;
        let _ = pods.wait_until_ready().await;
        let ctl = Arc::new(Controller {
            client,
            endpoints_client,
            services,
            pods,
            slices,
        });
        queue
            .work("endpointslice", move |key| {
                let ctl = ctl.clone();
                async move { ctl.sync(&key).await }
            })
            .await;
    }
}

/// A pod change wakes the services that select it now and those whose slices list it.
fn route_pod(pod: &Pod, queue: &Queue, services: &Store<Service>, slices: &Store<EndpointSlice>) {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let labels = pods::labels(&pod.metadata);
    for svc in services.state() {
        if svc.metadata.namespace.as_deref() == Some(ns)
            && selector(&svc).is_some_and(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
        {
            queue.add(key_of(&svc.metadata));
        }
    }
    let name = pod.metadata.name.as_deref();
    for s in slices.state() {
        if s.metadata.namespace.as_deref() == Some(ns)
            && s.endpoints
                .iter()
                .flatten()
                .any(|e| e.target_ref.as_ref().and_then(|r| r.name.as_deref()) == name)
            && let Some(svc) = s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME))
        {
            queue.add(format!("{ns}/{svc}"));
        }
    }
}

fn selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec
        .as_ref()?
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())
}

/// The service's ports resolved for one pod: `(name, port, protocol, appProtocol)`.
fn resolve_ports(svc: &Service, pod: &Pod) -> Vec<(String, i32, String, Option<String>)> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let mut out = Vec::new();
    for p in svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
    {
        let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
        let port = match &p.target_port {
            None => Some(p.port),
            Some(IntOrString::Int(i)) => Some(*i),
            Some(IntOrString::String(name)) => pod
                .spec
                .as_ref()
                .into_iter()
                .flat_map(|s| s.containers.iter())
                .flat_map(|c| c.ports.iter().flatten())
                .find(|cp| {
                    cp.name.as_deref() == Some(name.as_str())
                        && cp.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|cp| cp.container_port),
        };
        if let Some(port) = port {
            out.push((
                p.name.clone().unwrap_or_default(),
                port,
                protocol,
                p.app_protocol.clone(),
            ));
        }
    }
    out
}

/// A short, stable name suffix for a port set.
fn port_set_suffix(ports: &Value) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in ports.to_string().bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

impl Controller {
    async fn sync(&self, key: &str) -> Result<Option<Duration>, kube::Error> {
        let (Some(ns), name) = split_key(key) else {
            return Ok(None);
        };
        let slice_api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), ns);
        let ep_api: Api<Endpoints> = Api::namespaced(self.endpoints_client.clone(), ns);
        let existing: Vec<Arc<EndpointSlice>> = self
            .slices
            .state()
            .into_iter()
            .filter(|s| {
                s.metadata.namespace.as_deref() == Some(ns)
                    && s.metadata.labels.as_ref().is_some_and(|l| {
                        l.get(SERVICE_NAME).map(String::as_str) == Some(name)
                            && l.get(MANAGED_BY).map(String::as_str) == Some(CONTROLLER)
                    })
            })
            .collect();
        let svc = self.services.get(&ObjectRef::new(name).within(ns));
        let Some(svc) = svc.filter(|s| selector(s).is_some()) else {
            // Deleted, or a service without selector: its endpoints are not ours.
            for s in existing {
                let n = s.metadata.name.clone().unwrap_or_default();
                ignore_gone(slice_api.delete(&n, &DeleteParams::default()).await)?;
            }
            if self
                .services
                .get(&ObjectRef::new(name).within(ns))
                .is_none()
            {
                ignore_gone(ep_api.delete(name, &DeleteParams::default()).await)?;
            }
            return Ok(None);
        };
        let sel = selector(&svc).cloned().unwrap_or_default();
        let publish_not_ready = svc
            .spec
            .as_ref()
            .and_then(|s| s.publish_not_ready_addresses)
            .unwrap_or(false);
        // Port set → (slice endpoints, ready addresses, not-ready addresses).
        type Group = (Vec<Value>, Vec<Value>, Vec<Value>);
        let mut groups: BTreeMap<String, (Value, Group)> = BTreeMap::new();
        let mut pods: Vec<Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some(ns)
                    && !matches!(pods::phase(p), "Succeeded" | "Failed")
                    && {
                        let l = pods::labels(&p.metadata);
                        sel.iter().all(|(k, v)| l.get(k) == Some(v))
                    }
            })
            .collect();
        pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        for pod in pods {
            let Some(ip) = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .filter(|ip| !ip.is_empty())
            else {
                continue;
            };
            let terminating = pod.metadata.deletion_timestamp.is_some();
            let serving = pods::is_ready(&pod) || publish_not_ready;
            let ready = serving && (!terminating || publish_not_ready);
            let ports = resolve_ports(&svc, &pod);
            let ports_json = json!(ports
                .iter()
                .map(|(n, p, proto, app)| json!({"name": n, "port": p, "protocol": proto, "appProtocol": app}))
                .collect::<Vec<_>>());
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
            let target = json!({"kind": "Pod", "namespace": ns,
                "name": pod.metadata.name, "uid": pod.metadata.uid});
            let entry = groups
                .entry(ports_json.to_string())
                .or_insert_with(|| (ports_json.clone(), Default::default()));
            // The endpoint's DNS name (`<hostname>.<service>.<ns>.svc`): a pod with a
            // hostname whose subdomain is this Service, as the upstream controller.
            let hostname = pod
                .spec
                .as_ref()
                .filter(|s| s.subdomain.as_deref() == Some(name))
                .and_then(|s| s.hostname.clone())
                .filter(|h| !h.is_empty());
            let mut endpoint = json!({
                "addresses": [ip],
                "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                "nodeName": node,
                "targetRef": target,
            });
            if let Some(h) = &hostname {
                endpoint["hostname"] = json!(h);
            }
            entry.1.0.push(endpoint);
            if !terminating || publish_not_ready {
                let mut addr = json!({"ip": ip, "nodeName": node, "targetRef": target});
                if let Some(h) = &hostname {
                    addr["hostname"] = json!(h);
                }
                if ready {
                    entry.1.1.push(addr);
                } else {
                    entry.1.2.push(addr);
                }
            }
        }
        let owner = pods::owner_ref("v1", "Service", &svc.metadata);
        let mut wanted: Vec<String> = Vec::new();
        let mut subsets = Vec::new();
        for (ports, (endpoints, ready, not_ready)) in groups.values() {
            let slice_name = format!("{name}-{}", port_set_suffix(ports));
            wanted.push(slice_name.clone());
            let body = json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": slice_name, "namespace": ns,
                    "labels": {SERVICE_NAME: name, MANAGED_BY: CONTROLLER},
                    "ownerReferences": [owner]},
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": ports,
            });
            let current = existing
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(slice_name.as_str()));
            let mut slice: EndpointSlice =
                serde_json::from_value(body).map_err(kube::Error::SerdeError)?;
            match current {
                None => {
                    ignore_gone(slice_api.create(&PostParams::default(), &slice).await)?;
                }
                Some(cur) => {
                    if cur.endpoints != slice.endpoints || cur.ports != slice.ports {
                        slice.metadata.resource_version = cur.metadata.resource_version.clone();
                        ignore_gone(
                            slice_api
                                .replace(&slice_name, &PostParams::default(), &slice)
                                .await,
                        )?;
                    }
                }
            }
            let ep_ports: Vec<Value> = ports
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    let mut p = p.clone();
                    if p["name"] == ""
                        && let Some(m) = p.as_object_mut()
                    {
                        m.remove("name");
                    }
                    p
                })
                .collect();
            let mut subset = json!({"ports": ep_ports});
            if !ready.is_empty() {
                subset["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                subset["notReadyAddresses"] = json!(not_ready);
            }
            if !ready.is_empty() || !not_ready.is_empty() {
                subsets.push(subset);
            }
        }
        for s in &existing {
            let n = s.metadata.name.clone().unwrap_or_default();
            if !wanted.contains(&n) {
                ignore_gone(slice_api.delete(&n, &DeleteParams::default()).await)?;
            }
        }
        // Endpoints.
        let mut ep: Endpoints = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": svc.metadata.labels},
            "subsets": subsets,
        }))
        .map_err(kube::Error::SerdeError)?;
        match ep_api.get_opt(name).await? {
            None => {
                ignore_gone(ep_api.create(&PostParams::default(), &ep).await)?;
            }
            Some(cur) => {
                let norm = |s: &Option<Vec<k8s_openapi::api::core::v1::EndpointSubset>>| {
                    s.clone().unwrap_or_default()
                };
                if norm(&cur.subsets) != norm(&ep.subsets)
                    || cur.metadata.labels != ep.metadata.labels
                {
                    ep.metadata.resource_version = cur.metadata.resource_version;
                    ignore_gone(ep_api.replace(name, &PostParams::default(), &ep).await)?;
                }
            }
        }
        Ok(None)
    }
}

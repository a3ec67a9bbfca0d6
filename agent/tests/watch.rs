//! `service_lb::watch` against a stand-in apiserver that speaks the list and watch
//! protocol the `kube` client uses (plain HTTP on 127.0.0.1): the initial lists are
//! applied and an adopted stale frontend pruned; an EndpointSlice change, a new
//! Service and a deleted Service reach the LB target as they happen.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{Query, State},
    response::{IntoResponse, Response},
    routing::get,
};
use berth_agent::service_lb::{LbEntry, LbMetrics, LbTarget, ServiceSync, watch};
use berth_ebpf::{Frontend, Protocol};
use futures_util::stream;
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// One resource kind of the stand-in apiserver.
#[derive(Clone)]
struct Kind {
    list_kind: &'static str,
    items: Arc<Mutex<Vec<Value>>>,
    events: broadcast::Sender<String>,
}

impl Kind {
    fn new(list_kind: &'static str, items: Vec<Value>) -> Self {
        Self {
            list_kind,
            items: Arc::new(Mutex::new(items)),
            events: broadcast::channel(64).0,
        }
    }

    /// Records a change and sends it to the open watches.
    fn event(&self, kind: &str, object: Value) {
        let _ = self
            .events
            .send(format!("{}\n", json!({"type": kind, "object": object})));
    }
}

async fn serve(State(kind): State<Kind>, Query(q): Query<HashMap<String, String>>) -> Response {
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        let rx = kind.events.subscribe();
        let lines = stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .ok()
                .map(|line| (Ok::<_, Infallible>(line), rx))
        });
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(lines))
            .unwrap_or_else(|_| Response::new(Body::empty()));
    }
    let items = kind.items.lock().map(|i| i.clone()).unwrap_or_default();
    axum::Json(json!({"kind": kind.list_kind, "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}))
        .into_response()
}

fn service(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": "1", "uid": format!("uid-{name}")},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "port": 80}]}})
}

fn slice(service: &str, ips: &[&str], rv: u32) -> Value {
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-x"), "namespace": "default", "resourceVersion": rv.to_string(),
                     "uid": format!("uid-{service}-x"), "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": endpoints})
}

/// Records what is programmed: frontend → number of backends, and the announced
/// load-balancer addresses.
#[derive(Default)]
struct Recorder {
    live: HashMap<(Ipv4Addr, u16), usize>,
    announced: Vec<Ipv4Addr>,
}

impl LbTarget for Recorder {
    fn set(&mut self, e: &LbEntry) -> Result<(), String> {
        self.live
            .insert((e.frontend.addr, e.frontend.port), e.backends.len());
        Ok(())
    }
    fn remove(&mut self, f: Frontend) -> Result<(), String> {
        self.live.remove(&(f.addr, f.port));
        Ok(())
    }
    fn frontends(&self) -> Vec<Frontend> {
        self.live
            .keys()
            .map(|(addr, port)| Frontend {
                addr: *addr,
                port: *port,
                protocol: Protocol::Tcp,
            })
            .collect()
    }
    fn slots(&self) -> u32 {
        0
    }
    fn announce(&mut self, addr: Ipv4Addr, on: bool) -> Result<(), String> {
        self.announced.retain(|a| *a != addr);
        if on {
            self.announced.push(addr);
        }
        Ok(())
    }
    fn announced(&self) -> Vec<Ipv4Addr> {
        self.announced.clone()
    }
}

async fn eventually(
    sync: &Mutex<ServiceSync<Recorder>>,
    what: &str,
    check: impl Fn(&HashMap<(Ipv4Addr, u16), usize>) -> bool,
) {
    for _ in 0..100 {
        if sync.lock().is_ok_and(|s| check(&s.target().live)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let live = sync
        .lock()
        .map(|s| format!("{:?}", s.target().live))
        .unwrap_or_default();
    panic!("timed out waiting for: {what}; programmed: {live}");
}

#[tokio::test]
async fn the_watch_keeps_the_lb_in_step_with_services_and_endpointslices() {
    let services = Kind::new("ServiceList", vec![service("web", "10.96.0.50")]);
    let slices = Kind::new(
        "EndpointSliceList",
        vec![slice("web", &["10.244.0.1", "10.244.0.2"], 1)],
    );
    let app = Router::new()
        .route("/api/v1/services", get(serve).with_state(services.clone()))
        .route(
            "/apis/discovery.k8s.io/v1/endpointslices",
            get(serve).with_state(slices.clone()),
        );
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let config = kube::Config::new(format!("http://{addr}").parse().expect("uri"));
    let client = kube::Client::try_from(config).expect("client");
    // An earlier agent left a frontend and an ARP announcement no Service claims.
    let stale = Recorder {
        live: HashMap::from([((Ipv4Addr::new(10, 96, 9, 9), 80), 1)]),
        announced: vec![Ipv4Addr::new(192, 0, 2, 9)],
    };
    let sync = Arc::new(Mutex::new(ServiceSync::new(stale, "n1")));
    let metrics = Arc::new(Mutex::new(LbMetrics::new()));
    tokio::spawn(watch::run(client, sync.clone(), metrics.clone()));

    let web = (Ipv4Addr::new(10, 96, 0, 50), 80);
    let stale_key = (Ipv4Addr::new(10, 96, 9, 9), 80);
    eventually(
        &sync,
        "initial lists applied, stale frontend pruned",
        |live| live.get(&web) == Some(&2) && !live.contains_key(&stale_key),
    )
    .await;
    assert!(
        sync.lock().is_ok_and(|s| s.target().announced.is_empty()),
        "the stale announcement is pruned with the stale frontend"
    );

    slices.event(
        "MODIFIED",
        slice("web", &["10.244.0.1", "10.244.0.2", "10.244.0.3"], 2),
    );
    eventually(&sync, "the scaled EndpointSlice", |live| {
        live.get(&web) == Some(&3)
    })
    .await;

    services.event("ADDED", service("api", "10.96.0.51"));
    eventually(&sync, "a new Service (no endpoints yet)", |live| {
        live.get(&(Ipv4Addr::new(10, 96, 0, 51), 80)) == Some(&0)
    })
    .await;

    services.event("DELETED", service("web", "10.96.0.50"));
    eventually(&sync, "the deleted Service removed", |live| {
        !live.contains_key(&web)
    })
    .await;

    let text = metrics.lock().map(|m| m.encode()).unwrap_or_default();
    assert!(
        text.lines()
            .any(|l| l.starts_with("berth_lb_sync_duration_seconds_count ")),
        "{text}"
    );
}

//! Profiling aid: serves a cluster zone of N synthetic ClusterIP Services
//! (`svc-<i>.bench.svc.cluster.local`) on 127.0.0.1:<port> with the agent's DNS
//! server, no apiserver needed. `cargo run --release -p berth-agent --example
//! dns_serve -- <port> [N]`, then point dnsperf (or perf) at it.

use std::sync::Arc;

use berth_agent::dns::{Dns, Upstreams, server};
use k8s_openapi::api::core::v1::Service;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().unwrap_or_else(|| "5353".into()).parse()?;
    let n: u32 = args.next().unwrap_or_else(|| "10000".into()).parse()?;
    let dns = Arc::new(Dns::new("cluster.local", Upstreams::default(), Vec::new()));
    for i in 0..n {
        let ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 96, 0, 20)) + i);
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
            "spec": {"clusterIP": ip.to_string(), "ports": [{"name": "http", "port": 80}]},
        }))?;
        dns.set_service("bench", &format!("svc-{i}"), Some(&svc), &[]);
    }
    let (udp, tcp) =
        server::bind_sockets(([127, 0, 0, 1], port).into(), None).map_err(anyhow::Error::msg)?;
    eprintln!("serving {n} Services on 127.0.0.1:{port}");
    server::serve(dns, udp, tcp).await?;
    Ok(())
}

//! Liveness, readiness and startup probes: exec (through the runtime), tcpSocket,
//! httpGet (HTTP and HTTPS, [`http`]) and grpc ([`grpc`]) — the network ones connect from
//! inside the pod's network namespace to the pod IP, so they work wherever the node's pod
//! network lives. Thresholds and periods as the kubelet applies them.

mod grpc;
mod http;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use berth_runtime::pod::Runtime;

/// Where a probe runs.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub runtime: &'a Runtime,
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub pod_ip: &'a str,
}

/// The consecutive results of one probe of one container instance.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub successes: i32,
    pub failures: i32,
    pub last_run: Option<Instant>,
    /// The probe's verdict once a threshold has been crossed.
    pub verdict: Option<bool>,
    pub last_message: String,
}

impl State {
    /// Runs the probe if it is due (after `initialDelaySeconds` from `started`, then
    /// every `periodSeconds`) and updates the verdict. Returns the failure's message when
    /// it ran and failed (the kubelet records an `Unhealthy` event for each one).
    pub fn tick(
        &mut self,
        probe: &Probe,
        c: &Container,
        started: Instant,
        t: Target<'_>,
    ) -> Option<String> {
        let delay = Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64);
        let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
        let now = Instant::now();
        if now < started + delay {
            return None;
        }
        if self.last_run.is_some_and(|l| now < l + period) {
            return None;
        }
        self.last_run = Some(now);
        match run(probe, c, t) {
            Ok(()) => {
                self.failures = 0;
                self.successes += 1;
                if self.successes >= probe.success_threshold.unwrap_or(1).max(1) {
                    self.verdict = Some(true);
                }
                None
            }
            Err(msg) => {
                self.successes = 0;
                self.failures += 1;
                self.last_message = msg.clone();
                if self.failures >= probe.failure_threshold.unwrap_or(3).max(1) {
                    self.verdict = Some(false);
                }
                Some(msg)
            }
        }
    }

    /// When the probe is next due.
    pub fn next_due(&self, probe: &Probe, started: Instant) -> Instant {
        let delay = Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64);
        let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
        match self.last_run {
            Some(l) => (l + period).max(started + delay),
            None => started + delay,
        }
    }
}

fn port_number(port: &IntOrString, c: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("invalid port {p}")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .or_else(|| name.parse().ok())
            .ok_or_else(|| format!("port {name:?} not found in container {}", c.name)),
    }
}

/// One probe run: `Ok` on success, the failure's message otherwise.
pub fn run(probe: &Probe, c: &Container, t: Target<'_>) -> Result<(), String> {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(exec) = &probe.exec {
        let cmd = exec.command.clone().unwrap_or_default();
        return match t.runtime.exec_sync(t.container_id, &cmd, timeout) {
            Ok((0, _, _)) => Ok(()),
            Ok((code, out, err)) => Err(format!(
                "command {cmd:?} exited with {code}: {}{}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            )),
            Err(e) => Err(format!("command {cmd:?} failed: {e}")),
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = port_number(&tcp.port, c)?;
        let host = tcp.host.clone().unwrap_or_else(|| t.pod_ip.to_owned());
        let addr: SocketAddr = format!("{host}:{port}")
            .parse()
            .map_err(|e| format!("address {host}:{port}: {e}"))?;
        return crate::netns::run_in(t.netns, || {
            TcpStream::connect_timeout(&addr, timeout)
                .map(drop)
                .map_err(|e| format!("dial tcp {addr}: {e}"))
        });
    }
    if let Some(get) = &probe.http_get {
        let port = port_number(&get.port, c)?;
        let req = http::Request {
            https: get.scheme.as_deref() == Some("HTTPS"),
            host: get.host.clone().unwrap_or_else(|| t.pod_ip.to_owned()),
            port,
            path: match get.path.as_deref() {
                None | Some("") => "/".into(),
                Some(p) if p.starts_with('/') => p.to_owned(),
                Some(p) => format!("/{p}"),
            },
            headers: get
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
        };
        return crate::netns::run_in(t.netns, move || http::probe(&req, timeout)).map(|warning| {
            if let Some(w) = warning {
                tracing::debug!(container = %c.name, "probe warning: {w}");
            }
        });
    }
    if let Some(g) = &probe.grpc {
        let port = u16::try_from(g.port).map_err(|_| format!("invalid port {}", g.port))?;
        let service = g.service.clone().unwrap_or_default();
        let host = t.pod_ip.to_owned();
        return crate::netns::run_in(t.netns, move || grpc::probe(&host, port, &service, timeout));
    }
    Err("probe has no handler".into())
}

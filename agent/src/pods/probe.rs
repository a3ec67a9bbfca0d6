//! Liveness, readiness and startup probes: exec (through the runtime), tcpSocket and
//! httpGet (200–399 is success) — the latter two connect from inside the pod's network
//! namespace to the pod IP, so they work wherever the node's pod network lives.
//! Thresholds and periods as the kubelet applies them.

use std::io::{Read, Write};
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
    /// every `periodSeconds`) and updates the verdict. Returns whether it ran.
    pub fn tick(&mut self, probe: &Probe, c: &Container, started: Instant, t: Target<'_>) -> bool {
        let delay = Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64);
        let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
        let now = Instant::now();
        if now < started + delay {
            return false;
        }
        if self.last_run.is_some_and(|l| now < l + period) {
            return false;
        }
        self.last_run = Some(now);
        match run(probe, c, t) {
            Ok(()) => {
                self.failures = 0;
                self.successes += 1;
                if self.successes >= probe.success_threshold.unwrap_or(1).max(1) {
                    self.verdict = Some(true);
                }
            }
            Err(msg) => {
                self.successes = 0;
                self.failures += 1;
                self.last_message = msg;
                if self.failures >= probe.failure_threshold.unwrap_or(3).max(1) {
                    self.verdict = Some(false);
                }
            }
        }
        true
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
    if let Some(http) = &probe.http_get {
        if http.scheme.as_deref() == Some("HTTPS") {
            return Err("HTTPS probes are not supported by berth-agent yet".into());
        }
        let port = port_number(&http.port, c)?;
        let host = http.host.clone().unwrap_or_else(|| t.pod_ip.to_owned());
        let addr: SocketAddr = format!("{host}:{port}")
            .parse()
            .map_err(|e| format!("address {host}:{port}: {e}"))?;
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.37\r\nAccept: */*\r\nConnection: close\r\n"
        );
        for h in http.http_headers.iter().flatten() {
            request.push_str(&format!("{}: {}\r\n", h.name, h.value));
        }
        request.push_str("\r\n");
        let url = format!("http://{addr}{path}");
        return crate::netns::run_in(t.netns, move || {
            let mut s = TcpStream::connect_timeout(&addr, timeout)
                .map_err(|e| format!("Get {url:?}: dial tcp {addr}: {e}"))?;
            let _ = s.set_read_timeout(Some(timeout));
            let _ = s.set_write_timeout(Some(timeout));
            s.write_all(request.as_bytes())
                .map_err(|e| format!("Get {url:?}: {e}"))?;
            let mut head = [0u8; 64];
            let mut n = 0;
            while n < 12 {
                match s.read(&mut head[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) => return Err(format!("Get {url:?}: {e}")),
                }
            }
            let line = String::from_utf8_lossy(&head[..n]);
            let code: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("Get {url:?}: malformed HTTP response"))?;
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            }
        });
    }
    if probe.grpc.is_some() {
        return Err("gRPC probes are not supported by berth-agent yet".into());
    }
    Err("probe has no handler".into())
}

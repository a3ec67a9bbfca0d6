//! grpc probes as the kubelet runs them (pkg/probe/grpc): `grpc.health.v1.Health/Check`
//! over plaintext HTTP/2 to the pod's IP with the probe's `service`; SERVING is success,
//! any other status fails with the kubelet's messages. tonic on a current-thread tokio
//! runtime driven by the calling thread, so the socket opens in whatever network
//! namespace that thread is in.

use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// Runs one Check against `host:port` for `service`, bounded by `timeout`.
pub fn probe(host: &str, port: u16, service: &str, timeout: Duration) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("probe runtime: {e}"))?;
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    rt.block_on(check(&addr, service, timeout))
}

async fn check(addr: &str, service: &str, timeout: Duration) -> Result<(), String> {
    let secs = format!("{}s", timeout.as_secs());
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("address {addr}: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = match tokio::time::timeout(timeout, endpoint.connect()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return Err(format!(
                "timeout: failed to connect service {addr:?} within {secs}: {}",
                berth_runtime::error_chain(&e)
            ));
        }
        Err(_) => {
            return Err(format!(
                "timeout: failed to connect service {addr:?} within {secs}: context deadline exceeded"
            ));
        }
    };
    let mut client = HealthClient::new(channel);
    let call = client.check(HealthCheckRequest {
        service: service.to_string(),
    });
    let resp = match tokio::time::timeout(timeout, call).await {
        Err(_) => {
            return Err(format!(
                "timeout: health rpc did not complete within {secs}"
            ));
        }
        Ok(Err(status)) => {
            return Err(match status.code() {
                tonic::Code::Unimplemented => format!(
                    "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
                    status.message()
                ),
                tonic::Code::DeadlineExceeded => {
                    format!("timeout: health rpc did not complete within {secs}")
                }
                _ => format!(
                    "error: health rpc probe failed: rpc error: code = {:?} desc = {}",
                    status.code(),
                    status.message()
                ),
            });
        }
        Ok(Ok(r)) => r.into_inner(),
    };
    status(&resp)
}

/// SERVING is success; anything else names the status as the proto does.
fn status(resp: &HealthCheckResponse) -> Result<(), String> {
    match ServingStatus::try_from(resp.status) {
        Ok(ServingStatus::Serving) => Ok(()),
        Ok(other) => Err(format!(
            "service unhealthy (responded with {:?})",
            other.as_str_name()
        )),
        Err(_) => Err(format!(
            "service unhealthy (responded with \"{}\")",
            resp.status
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_serving_is_healthy() {
        let resp = |s: ServingStatus| HealthCheckResponse { status: s as i32 };
        assert!(status(&resp(ServingStatus::Serving)).is_ok());
        assert_eq!(
            status(&resp(ServingStatus::NotServing)).expect_err("not serving"),
            "service unhealthy (responded with \"NOT_SERVING\")"
        );
        assert!(status(&HealthCheckResponse { status: 9 }).is_err());
    }

    #[test]
    fn a_closed_port_fails_with_the_kubelets_message() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let err = probe("127.0.0.1", port, "", Duration::from_secs(1)).expect_err("closed");
        assert!(
            err.starts_with(&format!(
                "timeout: failed to connect service \"127.0.0.1:{port}\" within 1s"
            )),
            "{err}"
        );
    }
}

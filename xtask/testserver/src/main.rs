//! `testserver`: the workload berth's tests run in pods (built static), like Kubernetes'
//! agnhost.
//!
//! - HTTP on `--http-port` (8080): `/` answers the hostname, `/healthz` 200 "ok" until
//!   `/healthz/fail` flips it to 500 (`/healthz/ok` flips it back), `/exit?code=N` exits
//!   with N, `/env?name=X` answers the variable, `/file?path=P` a file's contents,
//!   `/redirect?to=L` a 302 to L, `/header?name=X` 200 with the request's header X or 404.
//! - The same routes over HTTPS on `--https-port` (8443), a self-signed certificate made
//!   at start.
//! - gRPC health (`grpc.health.v1.Health`) on `--grpc-port` (9090): service "" and
//!   "testserver" SERVING while /healthz is ok, NOT_SERVING while it fails.
//! - TCP echo on `--tcp-port` (9000), UDP echo on `--udp-port` (9001).
//! - `/connect?to=ADDR:PORT,…&timeout_ms=N[&protocol=udp]`: tries each target at once
//!   (a TCP connect, or a UDP datagram to an echo server and its reply) and answers one
//!   line per target, `ADDR:PORT ok` or `ADDR:PORT fail <why>` — agnhost's `connect`,
//!   for NetworkPolicy reachability matrices.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tonic_health::ServingStatus;

/// The health flag, mirrored into the gRPC health service.
struct Health {
    ok: AtomicBool,
    grpc: Option<(tokio::runtime::Handle, tonic_health::server::HealthReporter)>,
}

impl Health {
    fn ok(&self) -> bool {
        self.ok.load(Ordering::SeqCst)
    }

    fn set(&self, ok: bool) {
        self.ok.store(ok, Ordering::SeqCst);
        if let Some((rt, reporter)) = &self.grpc {
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            rt.block_on(async {
                for name in ["", "testserver"] {
                    reporter.set_service_status(name, status).await;
                }
            });
        }
    }
}

fn flag(args: &[String], name: &str, default: u16) -> u16 {
    let prefix = format!("{name}=");
    args.iter()
        .enumerate()
        .find_map(|(i, a)| {
            if a == name {
                args.get(i + 1).map(String::as_str)
            } else {
                a.strip_prefix(&prefix)
            }
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn query<'a>(target: &'a str, key: &str) -> Option<&'a str> {
    let (_, q) = target.split_once('?')?;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then_some(v)
    })
}

fn respond(stream: &mut impl Write, code: u16, body: &str) {
    respond_with(stream, code, "", body)
}

fn respond_with(stream: &mut impl Write, code: u16, extra: &str, body: &str) {
    let reason = match code {
        200 => "OK",
        302 => "Found",
        404 => "Not Found",
        _ => "Internal Server Error",
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
}

fn serve_http<S: Read + Write>(stream: S, healthy: &Health) {
    let mut line = String::new();
    let mut reader = BufReader::new(stream);
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut header = String::new();
    while reader
        .read_line(&mut header)
        .map(|n| n > 2)
        .unwrap_or(false)
    {
        if let Some((k, v)) = header.trim_end().split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        header.clear();
    }
    let mut stream = reader.into_inner();
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let path = target.split('?').next().unwrap_or("/");
    match path {
        "/" | "/hostname" => respond(&mut stream, 200, &hostname()),
        "/redirect" => {
            let to = query(&target, "to").unwrap_or("/");
            respond_with(&mut stream, 302, &format!("Location: {to}\r\n"), "")
        }
        "/header" => {
            let name = query(&target, "name").unwrap_or("").to_ascii_lowercase();
            match headers.iter().find(|(k, _)| *k == name) {
                Some((_, v)) => respond(&mut stream, 200, v),
                None => respond(&mut stream, 404, "no such header"),
            }
        }
        "/healthz" => {
            if healthy.ok() {
                respond(&mut stream, 200, "ok")
            } else {
                respond(&mut stream, 500, "failing")
            }
        }
        "/healthz/fail" => {
            healthy.set(false);
            respond(&mut stream, 200, "now failing")
        }
        "/healthz/ok" => {
            healthy.set(true);
            respond(&mut stream, 200, "now ok")
        }
        "/exit" => {
            let code = query(&target, "code")
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            respond(&mut stream, 200, &format!("exiting {code}"));
            let _ = stream.flush();
            std::process::exit(code);
        }
        "/connect" => {
            let targets: Vec<String> = query(&target, "to")
                .unwrap_or("")
                .split(',')
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect();
            let timeout = std::time::Duration::from_millis(
                query(&target, "timeout_ms")
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(1000),
            );
            let udp = query(&target, "protocol") == Some("udp");
            let results: Vec<String> = std::thread::scope(|s| {
                let handles: Vec<_> = targets
                    .iter()
                    .map(|t| s.spawn(move || format!("{t} {}", connect(t, timeout, udp))))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| "? fail panicked".into()))
                    .collect()
            });
            respond(&mut stream, 200, &results.join("\n"))
        }
        "/env" => {
            let name = query(&target, "name").unwrap_or("");
            respond(&mut stream, 200, &std::env::var(name).unwrap_or_default())
        }
        "/file" => {
            let p = query(&target, "path").unwrap_or("");
            match std::fs::read_to_string(p) {
                Ok(s) => respond(&mut stream, 200, &s),
                Err(e) => respond(&mut stream, 404, &e.to_string()),
            }
        }
        _ => respond(&mut stream, 404, "not found"),
    }
}

/// One reachability probe: "ok" or "fail <why>".
fn connect(target: &str, timeout: std::time::Duration, udp: bool) -> String {
    let Ok(addr) = target.parse::<std::net::SocketAddr>() else {
        return "fail bad address".into();
    };
    let result = if udp {
        UdpSocket::bind("0.0.0.0:0").and_then(|s| {
            s.set_read_timeout(Some(timeout))?;
            s.send_to(b"probe", addr)?;
            let mut buf = [0u8; 64];
            s.recv_from(&mut buf).map(|_| ())
        })
    } else {
        std::net::TcpStream::connect_timeout(&addr, timeout).map(|_| ())
    };
    match result {
        Ok(()) => "ok".into(),
        Err(e) => format!("fail {}", e.kind()),
    }
}

/// Serves the HTTP routes over TLS with a self-signed certificate for "testserver".
fn serve_https(port: u16, healthy: Arc<Health>) -> Result<(), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = rcgen::CertificateParams::new(vec!["testserver".to_string()])
        .and_then(|p| p.self_signed(&key))
        .map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .map_err(|e| e.to_string())?;
    let config = Arc::new(config);
    let listener =
        TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("bind :{port}: {e}"))?;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let (config, healthy) = (config.clone(), healthy.clone());
            std::thread::spawn(move || {
                if let Ok(tls) = rustls::ServerConnection::new(config) {
                    serve_http(rustls::StreamOwned::new(tls, conn), &healthy);
                }
            });
        }
    });
    Ok(())
}

/// Starts the gRPC health service on its own runtime thread; the reporter it returns
/// flips the services' status.
fn serve_grpc(
    port: u16,
) -> Result<(tokio::runtime::Handle, tonic_health::server::HealthReporter), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let handle = rt.handle().clone();
    let (reporter, service) = tonic_health::server::health_reporter();
    let listener = handle
        .block_on(tokio::net::TcpListener::bind(("0.0.0.0", port)))
        .map_err(|e| format!("bind :{port}: {e}"))?;
    handle.block_on(async {
        for name in ["", "testserver"] {
            reporter
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
    });
    std::thread::spawn(move || {
        rt.block_on(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
            {
                eprintln!("testserver: grpc: {e}");
            }
        })
    });
    Ok((handle, reporter))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let http = flag(&args, "--http-port", 8080);
    let tcp = flag(&args, "--tcp-port", 9000);
    let udp = flag(&args, "--udp-port", 9001);
    let https = flag(&args, "--https-port", 8443);
    let grpc_port = flag(&args, "--grpc-port", 9090);
    let grpc = serve_grpc(grpc_port)
        .map_err(|e| eprintln!("testserver: grpc :{grpc_port}: {e}"))
        .ok();
    let healthy = Arc::new(Health {
        ok: AtomicBool::new(true),
        grpc,
    });
    if let Err(e) = serve_https(https, healthy.clone()) {
        eprintln!("testserver: https :{https}: {e}");
    }

    if let Ok(sock) = UdpSocket::bind(("0.0.0.0", udp)) {
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok((n, peer)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], peer);
            }
        });
    }
    if let Ok(listener) = TcpListener::bind(("0.0.0.0", tcp)) {
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
    let listener = match TcpListener::bind(("0.0.0.0", http)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("testserver: bind :{http}: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "testserver: http :{http} https :{https} grpc :{grpc_port} tcp :{tcp} udp :{udp} on {}",
        hostname()
    );
    for conn in listener.incoming().flatten() {
        let healthy = healthy.clone();
        std::thread::spawn(move || serve_http(conn, &healthy));
    }
}

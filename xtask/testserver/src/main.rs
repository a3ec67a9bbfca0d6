//! `testserver`: the workload berth's tests run in pods (std only, built static).
//!
//! - HTTP on `--http-port` (8080): `/` answers the hostname, `/healthz` 200 "ok" until
//!   `/healthz/fail` flips it to 500 (`/healthz/ok` flips it back), `/exit?code=N` exits
//!   with N, `/env?name=X` answers the variable, `/file?path=P` a file's contents.
//! - TCP echo on `--tcp-port` (9000), UDP echo on `--udp-port` (9001).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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

fn respond(stream: &mut TcpStream, code: u16, body: &str) {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        _ => "Internal Server Error",
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn serve_http(mut stream: TcpStream, healthy: &AtomicBool) {
    let mut line = String::new();
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    if reader.read_line(&mut line).is_err() {
        return;
    }
    // Drain the headers.
    let mut header = String::new();
    while reader
        .read_line(&mut header)
        .map(|n| n > 2)
        .unwrap_or(false)
    {
        header.clear();
    }
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let path = target.split('?').next().unwrap_or("/");
    match path {
        "/" | "/hostname" => respond(&mut stream, 200, &hostname()),
        "/healthz" => {
            if healthy.load(Ordering::SeqCst) {
                respond(&mut stream, 200, "ok")
            } else {
                respond(&mut stream, 500, "failing")
            }
        }
        "/healthz/fail" => {
            healthy.store(false, Ordering::SeqCst);
            respond(&mut stream, 200, "now failing")
        }
        "/healthz/ok" => {
            healthy.store(true, Ordering::SeqCst);
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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let http = flag(&args, "--http-port", 8080);
    let tcp = flag(&args, "--tcp-port", 9000);
    let udp = flag(&args, "--udp-port", 9001);
    let healthy = Arc::new(AtomicBool::new(true));

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
        "testserver: http :{http} tcp :{tcp} udp :{udp} on {}",
        hostname()
    );
    for conn in listener.incoming().flatten() {
        let healthy = healthy.clone();
        std::thread::spawn(move || serve_http(conn, &healthy));
    }
}

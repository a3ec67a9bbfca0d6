//! The DNS listeners: one UDP socket served by two tasks (both cores), and a TCP
//! listener with one task per connection (length-prefixed messages, RFC 1035 4.2.2;
//! several per connection, 10 s idle limit, at most 256 connections). The sockets
//! are bound with `IP_FREEBIND`: the listen address is the pod network's gateway,
//! which exists only once the bridge does (on the first pod's CNI ADD); with
//! freebind the agent listens from its start and the kernel delivers as soon as the
//! address is up. When the pod network lives in another network namespace, the
//! sockets are made inside it (they stay there; the agent's tasks serve them).

use std::{
    net::{SocketAddr, TcpListener as StdTcpListener, UdpSocket as StdUdpSocket},
    os::fd::AsRawFd,
    path::Path,
    sync::Arc,
    time::Duration,
};

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt, socket,
    sockopt,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
};

use super::{Dns, Handled};

const TCP_IDLE: Duration = Duration::from_secs(10);
const TCP_CONNECTIONS: usize = 256;
const UDP_TASKS: usize = 2;

fn bind_one(addr: SocketAddr, ty: SockType) -> nix::Result<std::os::fd::OwnedFd> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(
        family,
        ty,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if addr.is_ipv4() {
        setsockopt(&fd, sockopt::IpFreebind, &true)?;
    }
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    if ty == SockType::Stream {
        listen(&fd, Backlog::new(128)?)?;
    }
    Ok(fd)
}

/// The UDP socket and TCP listener on `addr`, made inside `netns` when given.
pub fn bind_sockets(
    addr: SocketAddr,
    netns: Option<&Path>,
) -> Result<(StdUdpSocket, StdTcpListener), String> {
    let make = move || -> Result<(StdUdpSocket, StdTcpListener), String> {
        let udp = bind_one(addr, SockType::Datagram).map_err(|e| format!("udp {addr}: {e}"))?;
        let tcp = bind_one(addr, SockType::Stream).map_err(|e| format!("tcp {addr}: {e}"))?;
        Ok((StdUdpSocket::from(udp), StdTcpListener::from(tcp)))
    };
    match netns {
        Some(ns) => crate::netns::run_in(ns, make),
        None => make(),
    }
}

/// Serves `udp` and `tcp` until the process ends.
pub async fn serve(dns: Arc<Dns>, udp: StdUdpSocket, tcp: StdTcpListener) -> std::io::Result<()> {
    let udp = Arc::new(UdpSocket::from_std(udp)?);
    let tcp = TcpListener::from_std(tcp)?;
    for _ in 0..UDP_TASKS {
        tokio::spawn(serve_udp(dns.clone(), udp.clone()));
    }
    let slots = Arc::new(Semaphore::new(TCP_CONNECTIONS));
    loop {
        let (stream, peer) = match tcp.accept().await {
            Ok(c) => c,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "DNS TCP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // too many connections: this one is closed at once
        };
        let dns = dns.clone();
        tokio::spawn(async move {
            serve_tcp(&dns, stream, peer).await;
            drop(permit);
        });
    }
}

async fn serve_udp(dns: Arc<Dns>, socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(error) => {
                tracing::debug!(%error, "DNS UDP receive failed");
                continue;
            }
        };
        match dns.handle(&buf[..n], peer.ip(), true) {
            Handled::Reply(bytes) => {
                let _ = socket.send_to(&bytes, peer).await;
            }
            Handled::Forward(pending) => {
                let (dns, socket) = (dns.clone(), socket.clone());
                tokio::spawn(async move {
                    if let Some(bytes) = dns.forward(*pending).await {
                        let _ = socket.send_to(&bytes, peer).await;
                    }
                });
            }
            Handled::Drop => {}
        }
    }
}

async fn serve_tcp(dns: &Dns, mut stream: TcpStream, peer: SocketAddr) {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut msg)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let reply = match dns.handle(&msg, peer.ip(), false) {
            Handled::Reply(bytes) => Some(bytes),
            Handled::Forward(pending) => dns.forward(*pending).await,
            Handled::Drop => None,
        };
        let Some(reply) = reply else { return };
        let Ok(n) = u16::try_from(reply.len()) else {
            return;
        };
        let mut out = Vec::with_capacity(reply.len() + 2);
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(&reply);
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

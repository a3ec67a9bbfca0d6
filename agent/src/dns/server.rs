//! The DNS listeners: one UDP socket served by a dedicated thread with blocking
//! receives and sends — no reactor wake-ups or task hand-offs per datagram, which
//! cost more than the answer itself (questions that go upstream are handed to the
//! tokio runtime) — and a TCP listener with one task per connection (length-prefixed messages, RFC 1035 4.2.2;
//! several per connection, 10 s idle limit, at most 256 connections). The sockets
//! are bound with `IP_FREEBIND`: the listen address is the pod network's gateway,
//! which exists only once the bridge does (on the first pod's CNI ADD); with
//! freebind the agent listens from its start and the kernel delivers as soon as the
//! address is up. When the pod network lives in another network namespace, the
//! sockets are made inside it (they stay there; the agent's tasks serve them).

use std::{
    io::{IoSlice, IoSliceMut},
    net::{SocketAddr, TcpListener as StdTcpListener, UdpSocket as StdUdpSocket},
    os::fd::AsRawFd,
    path::Path,
    sync::Arc,
    time::Duration,
};

use nix::sys::socket::{
    AddressFamily, Backlog, MsgFlags, MultiHeaders, SockFlag, SockType, SockaddrStorage, bind,
    listen, recvmmsg, sendmmsg, sendto, setsockopt, socket, sockopt,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use super::{Dns, Handled};

const TCP_IDLE: Duration = Duration::from_secs(10);
const TCP_CONNECTIONS: usize = 256;

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
    let tcp = TcpListener::from_std(tcp)?;
    udp.set_nonblocking(false)?;
    // The thread owns the socket for the life of the process (its loop never ends),
    // so the raw fd upstream tasks reply on stays valid.
    let runtime = tokio::runtime::Handle::current();
    let udp_dns = dns.clone();
    std::thread::Builder::new()
        .name("dns-udp".into())
        .spawn(move || serve_udp(&udp_dns, &udp, &runtime))?;
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

/// Datagrams taken per `recvmmsg(2)` (and answers sent per `sendmmsg(2)`).
const BATCH: usize = 32;
/// The largest query read over UDP (the largest EDNS payload clients offer).
const UDP_QUERY_MAX: usize = 4096;

fn std_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::new(v4.ip().into(), v4.port()));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::new(v6.ip().into(), v6.port()))
}

/// The UDP loop: up to [`BATCH`] queries per `recvmmsg` (blocking for the first,
/// taking what else is queued), answered on this thread and sent back with one
/// `sendmmsg`; what needs upstream is finished by a task on `runtime`, which replies
/// on the same socket (a UDP send does not wait for the peer).
fn serve_udp(dns: &Arc<Dns>, socket: &StdUdpSocket, runtime: &tokio::runtime::Handle) {
    let fd = socket.as_raw_fd();
    let mut bufs = vec![[0u8; UDP_QUERY_MAX]; BATCH];
    let mut rx = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut tx = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    loop {
        // (buffer index, length, sender): the index stays the buffer's own.
        let mut received: Vec<(usize, usize, SockaddrStorage)> = Vec::with_capacity(BATCH);
        {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
                bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
            match recvmmsg(fd, &mut rx, iovs.iter_mut(), MsgFlags::MSG_WAITFORONE, None) {
                Ok(msgs) => {
                    for (i, m) in msgs.enumerate() {
                        if let Some(addr) = m.address {
                            received.push((i, m.bytes, addr));
                        }
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "DNS UDP receive failed");
                    continue;
                }
            }
        }
        let mut out: Vec<(Vec<u8>, SockaddrStorage)> = Vec::with_capacity(received.len());
        for (i, len, addr) in received {
            let (Some(peer), Some(query)) =
                (std_addr(&addr), bufs.get(i).and_then(|b| b.get(..len)))
            else {
                continue;
            };
            match dns.handle(query, peer.ip(), true) {
                Handled::Reply(bytes) => out.push((bytes, addr)),
                Handled::Forward(pending) => {
                    let dns = dns.clone();
                    runtime.spawn(async move {
                        if let Some(bytes) = dns.forward(*pending).await {
                            // Never wait on a full send buffer on a runtime thread.
                            let _ = sendto(fd, &bytes, &addr, MsgFlags::MSG_DONTWAIT);
                        }
                    });
                }
                Handled::Drop => {}
            }
        }
        if out.is_empty() {
            continue;
        }
        let iovs: Vec<[IoSlice<'_>; 1]> = out.iter().map(|(b, _)| [IoSlice::new(b)]).collect();
        let addrs: Vec<Option<SockaddrStorage>> = out.iter().map(|(_, a)| Some(*a)).collect();
        // sendmmsg stops at the first message the kernel refuses (an unreachable or
        // filtered peer): skip that one and send the rest.
        let mut start = 0;
        while start < out.len() {
            let sent = sendmmsg(
                fd,
                &mut tx,
                &iovs[start..],
                &addrs[start..],
                [],
                MsgFlags::empty(),
            )
            .map(Iterator::count);
            match sent {
                Ok(n) if n > 0 => start += n,
                Ok(_) => start += 1,
                Err(error) => {
                    tracing::debug!(%error, "DNS UDP send failed");
                    start += 1;
                }
            }
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

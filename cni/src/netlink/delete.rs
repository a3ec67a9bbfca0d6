//! Deleting a veth pair without waiting for the kernel's trailing RCU work.
//!
//! `RTM_DELLINK` unregisters the device early in the call — it leaves every
//! namespace and the kernel announces `RTM_DELLINK` — but the call then still waits
//! for a second RCU grace period and an `rcu_barrier()` before it returns, about
//! 15–20 ms here that only free memory. [`delete_link`] subscribes to link
//! notifications, forks a child that issues the delete (and sits out those waits),
//! and returns as soon as the kernel announces the link gone: for every observer
//! the link is deleted when DEL returns. The child has no stdin/stdout/stderr (so a
//! runtime reading our stdout is not held up) and exits on its own.

use std::{
    io,
    os::fd::AsFd,
    time::{Duration, Instant},
};

use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{RouteNetlinkMessage, link::LinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::wait::{WaitPidFlag, WaitStatus, waitpid},
    unistd::{ForkResult, Pid},
};

use crate::spec::{CniError, code};

/// RTMGRP_LINK: link notifications.
const RTMGRP_LINK: u32 = 1;
/// How long to wait for the kernel before giving up.
const TIMEOUT: Duration = Duration::from_secs(10);

fn nl_err(what: &str, e: impl std::fmt::Display) -> CniError {
    CniError::new(code::NETLINK, format!("{what}: {e}"))
}

/// Deletes link `index` in the calling thread's namespace; returns once the
/// kernel has unregistered it. A link already gone is success.
pub fn delete_link(index: u32) -> Result<(), CniError> {
    let mut monitor = Socket::new(NETLINK_ROUTE).map_err(|e| nl_err("netlink socket", e))?;
    monitor
        .bind(&SocketAddr::new(0, RTMGRP_LINK))
        .map_err(|e| nl_err("subscribe to link events", e))?;
    let request = dellink_request(index);

    // SAFETY: berth-cni is single-threaded here (its current-thread runtime is not
    // running), so the child is a faithful copy; it only makes raw syscalls and
    // leaves with _exit, never returning into the parent's code.
    let child = match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => child_delete(&request),
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => return Err(nl_err("fork", e)),
    };
    wait_for_removal(&monitor, index, child)
}

fn dellink_request(index: u32) -> Vec<u8> {
    let mut link = LinkMessage::default();
    link.header.index = index;
    let mut msg = NetlinkMessage::from(RouteNetlinkMessage::DelLink(link));
    msg.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    msg.header.sequence_number = 1;
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// In the forked child: detach from the caller's pipes, delete, exit.
fn child_delete(request: &[u8]) -> ! {
    let status = (|| -> io::Result<i32> {
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")?;
        nix::unistd::dup2_stdin(&null)?;
        nix::unistd::dup2_stdout(&null)?;
        nix::unistd::dup2_stderr(&null)?;
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        socket.send(request, 0)?;
        let mut buf = vec![0u8; 4096];
        let n = socket.recv(&mut &mut buf[..], 0)?;
        Ok(
            match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[..n]).map(|m| m.payload) {
                Ok(NetlinkPayload::Error(e))
                    if e.code.is_some() && e.raw_code().abs() != libc::ENODEV =>
                {
                    1
                }
                _ => 0,
            },
        )
    })()
    .unwrap_or(1);
    // SAFETY: _exit ends the child without running the parent's destructors or
    // flushing its buffers (which belong to the parent).
    unsafe { libc::_exit(status) }
}

/// Waits for the RTM_DELLINK of `index`, or for the child to finish.
fn wait_for_removal(monitor: &Socket, index: u32, child: Pid) -> Result<(), CniError> {
    let deadline = Instant::now() + TIMEOUT;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if Instant::now() > deadline {
            return Err(CniError::new(
                code::NETLINK,
                format!("link #{index} was not deleted within {TIMEOUT:?}"),
            ));
        }
        let mut fds = [PollFd::new(monitor.as_fd(), PollFlags::POLLIN)];
        let ready = poll(&mut fds, PollTimeout::from(20u16)).map_err(|e| nl_err("poll", e))?;
        if ready > 0 {
            let n = monitor
                .recv(&mut &mut buf[..], 0)
                .map_err(|e| nl_err("read link events", e))?;
            if announces_removal(&buf[..n], index) {
                return Ok(());
            }
            continue;
        }
        // No event yet: did the child finish (e.g. the link was already gone)?
        match waitpid(child, Some(WaitPidFlag::WNOHANG)).map_err(|e| nl_err("waitpid", e))? {
            WaitStatus::Exited(_, 0) => return Ok(()),
            WaitStatus::Exited(_, _) | WaitStatus::Signaled(..) => {
                return Err(CniError::new(
                    code::NETLINK,
                    format!("deleting link #{index} failed"),
                ));
            }
            _ => {}
        }
    }
}

/// Whether `datagram` holds an RTM_DELLINK for `index`.
fn announces_removal(datagram: &[u8], index: u32) -> bool {
    let mut offset = 0;
    while offset < datagram.len() {
        let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[offset..])
        else {
            return false;
        };
        let len = msg.header.length as usize;
        if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) = &msg.payload
            && link.header.index == index
        {
            return true;
        }
        if len == 0 {
            return false;
        }
        offset += (len + 3) & !3;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dellink(index: u32) -> Vec<u8> {
        dellink_request(index)
    }

    #[test]
    fn the_removal_of_the_right_link_is_recognised() {
        let one = dellink(7);
        assert!(announces_removal(&one, 7));
        assert!(!announces_removal(&one, 8));
        // Two messages in one datagram: the match may be the second.
        let mut two = dellink(3);
        two.extend(dellink(9));
        assert!(announces_removal(&two, 9));
        assert!(
            !announces_removal(&two[..5], 9),
            "a truncated datagram is no announcement"
        );
    }
}

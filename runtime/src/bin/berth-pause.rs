//! `berth-pause`: PID 1 of a pod sandbox. It holds the sandbox's namespaces open by
//! existing, reaps the zombies orphaned to it (containers sharing its PID namespace),
//! and exits 0 on SIGTERM or SIGINT. Built static so it runs from an otherwise empty
//! rootfs.

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

fn main() {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGCHLD);
    // Blocked signals are taken synchronously with sigwait: no handlers, no races.
    if let Err(err) = set.thread_block() {
        eprintln!("berth-pause: block signals: {err}");
        std::process::exit(1);
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => reap(),
            Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => std::process::exit(0),
            Ok(_) | Err(_) => {}
        }
    }
}

fn reap() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

//! `kill`: send a signal to the container's first process, or to all of its processes.

use nix::sys::signal::{Signal, kill as send};
use nix::unistd::Pid;

use super::{Error, Status, status};
use crate::cgroups::Cgroup;
use crate::state::Root;

/// "TERM", "SIGTERM", "15" → SIGTERM.
pub fn parse_signal(text: &str) -> Result<Signal, Error> {
    if let Ok(n) = text.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| Error::BadSignal(text.to_string()));
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map_err(|_| Error::BadSignal(text.to_string()))
}

pub fn kill(root: &Root, id: &str, signal: Signal, all: bool) -> Result<(), Error> {
    let state = root.load(id)?;
    let current = status(root, &state);
    if current == Status::Stopped {
        return Err(Error::WrongStatus {
            id: id.to_string(),
            status: current,
            needed: "a stopped container cannot be signalled",
        });
    }
    if all {
        for pid in Cgroup::load(&state.cgroup).procs() {
            let _ = send(Pid::from_raw(pid), signal);
        }
        return Ok(());
    }
    send(Pid::from_raw(state.pid), signal).map_err(|e| Error::Io {
        what: format!("kill {}", state.pid),
        source: e.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_and_numbers() {
        assert_eq!(parse_signal("TERM").expect("TERM"), Signal::SIGTERM);
        assert_eq!(parse_signal("SIGKILL").expect("SIGKILL"), Signal::SIGKILL);
        assert_eq!(parse_signal("9").expect("9"), Signal::SIGKILL);
        assert_eq!(parse_signal("hup").expect("hup"), Signal::SIGHUP);
        assert!(parse_signal("NOPE").is_err());
    }
}

//! `delete`: remove a stopped (or, with force, any) container: its processes, cgroup,
//! host mounts and state directory.

use std::time::Duration;

use nix::mount::{MntFlags, umount2};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{Error, Status, status};
use crate::cgroups::Cgroup;
use crate::state::Root;

pub fn delete(root: &Root, id: &str, force: bool) -> Result<(), Error> {
    let state = root.load(id)?;
    let current = status(root, &state);
    if current == Status::Running && !force {
        return Err(Error::WrongStatus {
            id: id.to_string(),
            status: current,
            needed: "stop it first or delete with --force",
        });
    }
    let cgroup = Cgroup::load(&state.cgroup);
    if current != Status::Stopped {
        let _ = kill(Pid::from_raw(state.pid), Signal::SIGKILL);
    }
    cgroup.kill_all();
    cgroup.remove(Duration::from_secs(10))?;
    for mount in state.host_mounts.iter().rev() {
        match umount2(mount, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => {
                return Err(Error::Io {
                    what: format!("unmount {}", mount.display()),
                    source: e.into(),
                });
            }
        }
    }
    root.remove(id)?;
    Ok(())
}

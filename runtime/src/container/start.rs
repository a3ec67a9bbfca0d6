//! `start`: open the exec FIFO of a created container; its init then execs the workload.

use std::io::Write;

use super::{Error, Status, fifo_path, io_err, status};
use crate::state::Root;
use crate::sys;

pub fn start(root: &Root, id: &str) -> Result<(), Error> {
    let state = root.load(id)?;
    let current = status(root, &state);
    if current != Status::Created {
        return Err(Error::WrongStatus {
            id: id.to_string(),
            status: current,
            needed: "only a created container can be started",
        });
    }
    let path = fifo_path(root, id);
    // Non-blocking: a FIFO without a reader (the init died) fails with ENXIO at once.
    let fd = sys::open_raw(&path, libc::O_WRONLY | libc::O_NONBLOCK).map_err(|e| {
        if e.raw_os_error() == Some(libc::ENXIO) {
            Error::WrongStatus {
                id: id.to_string(),
                status: Status::Stopped,
                needed: "only a created container can be started",
            }
        } else {
            io_err(format!("open {}", path.display()))(e)
        }
    })?;
    let mut file = std::fs::File::from(fd);
    file.write_all(b"1").map_err(io_err("write exec fifo"))?;
    std::fs::remove_file(&path).map_err(io_err(format!("remove {}", path.display())))?;
    Ok(())
}

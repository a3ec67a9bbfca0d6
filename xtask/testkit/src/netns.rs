//! A named network namespace (`/run/netns/<name>`, as `ip netns` makes them) that is
//! deleted on drop.

use std::{path::PathBuf, process::Command};

use crate::unique_name;

/// A network namespace with only `lo`, up. Deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Makes a new namespace whose name starts with `prefix`.
    ///
    /// # Panics
    /// If `ip netns add` fails: a test cannot go on without its namespace.
    pub fn new(prefix: &str) -> Self {
        let name = unique_name(prefix);
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// The name `ip netns` knows it by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, for setns(2).
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `f` on a thread that has entered this namespace (setns(2) applies to the
    /// calling thread only; processes that thread spawns start in the namespace too).
    ///
    /// # Panics
    /// If the namespace cannot be entered, or `f` panics.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path)
                    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// The output of `ip <args>` run inside this namespace.
    ///
    /// # Panics
    /// If `ip` fails: a check built on its output must not pass because it printed
    /// nothing. To look for a device that may be absent, use [`Self::ip_on_device`].
    pub fn ip(&self, args: &[&str]) -> String {
        match self.run_ip(args) {
            Ok(stdout) => stdout,
            Err(failure) => panic!("{failure}"),
        }
    }

    /// Runs `ip <args>` inside this namespace and panics if it fails.
    pub fn ip_ok(&self, args: &[&str]) {
        self.ip(args);
    }

    /// The output of `ip <args>` about one device, or `None` when `ip` reports that
    /// the device does not exist (`Device "X" does not exist.`).
    ///
    /// # Panics
    /// If `ip` fails for any other reason: absence must be proven, not assumed.
    pub fn ip_on_device(&self, args: &[&str]) -> Option<String> {
        match self.run_ip(args) {
            Ok(stdout) => Some(stdout),
            Err(IpFailure { stderr, .. }) if is_no_such_device(&stderr) => None,
            Err(failure) => panic!("{failure}"),
        }
    }

    /// Whether link `name` exists in this namespace.
    ///
    /// # Panics
    /// If `ip link show` fails other than with "does not exist".
    pub fn link_exists(&self, name: &str) -> bool {
        self.ip_on_device(&["-o", "link", "show", "dev", name])
            .is_some()
    }

    fn run_ip(&self, args: &[&str]) -> Result<String, IpFailure> {
        let out = Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .expect("run ip");
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        Err(IpFailure {
            command: format!("ip -n {} {}", self.name, args.join(" ")),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// A `Command` that runs `program` inside this namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let status = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("warning: could not delete netns {}: {status:?}", self.name);
        }
    }
}

/// A failed `ip` run: what ran, how it ended, what it said.
#[derive(Debug)]
struct IpFailure {
    command: String,
    status: std::process::ExitStatus,
    stderr: String,
}

impl std::fmt::Display for IpFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` failed ({}): {}",
            self.command,
            self.status,
            self.stderr.trim()
        )
    }
}

/// iproute2's message for a device name that resolves to nothing.
fn is_no_such_device(stderr: &str) -> bool {
    stderr.trim_start().starts_with("Device \"") && stderr.contains("\" does not exist")
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status();
    assert!(
        matches!(status, Ok(s) if s.success()),
        "`ip {}` failed: {status:?}",
        args.join(" ")
    );
}

#[cfg(test)]
mod tests {
    use super::is_no_such_device;

    #[test]
    fn only_iproute2s_missing_device_message_means_absent() {
        assert!(is_no_such_device("Device \"bcbr0\" does not exist.\n"));
        assert!(!is_no_such_device(
            "Cannot open network namespace \"x\": No such file or directory\n"
        ));
        assert!(!is_no_such_device(
            "RTNETLINK answers: Operation not permitted\n"
        ));
    }
}

//! The driver under test. With `BERTH_CSI_CONFORMANCE_ENDPOINT=unix:///path/csi.sock`
//! the suite talks to that driver (any CSI driver: the suite only uses the spec's
//! API, and the berth-specific checks run only when the plugin is `csi.berth.io` and
//! the suite started it). Otherwise each test starts its own `berth-csi` on a fresh
//! temporary root, stops it by PID and unmounts whatever is left under its directory,
//! so a failing test leaks no process and no mount.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_csi::proto::{
    self,
    controller_client::ControllerClient,
    identity_client::IdentityClient,
    node_client::NodeClient,
    volume_capability::{AccessMode, AccessType, MountVolume, access_mode::Mode},
};
use berth_testkit::ChildGuard;
use tonic::transport::Channel;

/// The environment variable naming an external driver's endpoint.
pub const ENDPOINT_ENV: &str = "BERTH_CSI_CONFORMANCE_ENDPOINT";
/// The node id the suite gives the driver it starts.
pub const NODE_ID: &str = "conformance-node";
/// The capacity the suite gives the driver it starts (--capacity).
pub const CAPACITY: i64 = 8 << 30;

/// A running driver and a scratch directory for staging and target paths.
#[derive(Debug)]
pub struct Sut {
    child: Option<ChildGuard>,
    dir: tempfile::TempDir,
    socket: PathBuf,
    channel: Channel,
    args: Vec<String>,
}

impl Sut {
    /// The driver under test: the external one, or a fresh berth-csi.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Like [`Sut::start`]; `extra` flags go to a berth-csi the suite starts.
    pub async fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("berth-csi-conformance")
            .tempdir()
            .expect("a temporary directory");
        if let Ok(endpoint) = std::env::var(ENDPOINT_ENV) {
            let socket = berth_csi::socket_path(&endpoint)
                .unwrap_or_else(|e| panic!("{ENDPOINT_ENV}={endpoint}: {e}"));
            let channel = connect(&socket, None).await;
            return Self {
                child: None,
                dir,
                socket,
                channel,
                args: Vec::new(),
            };
        }
        let socket = dir.path().join("csi.sock");
        let mut args: Vec<String> = vec![
            format!("--endpoint=unix://{}", socket.display()),
            format!("--root={}", dir.path().join("root").display()),
            format!("--node-id={NODE_ID}"),
            format!("--capacity={CAPACITY}"),
            "--max-volumes-per-node=64".into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut child = spawn(dir.path(), &args);
        let channel = connect(&socket, Some(&mut child)).await;
        Self {
            child: Some(child),
            dir,
            socket,
            channel,
            args,
        }
    }

    /// Whether the suite started the driver (berth-csi, with known flags).
    pub fn own(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the driver (SIGKILL, by PID, as a crash would) and starts it again on the
    /// same root. Only for a driver the suite started.
    pub async fn restart(&mut self) {
        assert!(self.own(), "restart needs a driver the suite started");
        drop(self.child.take());
        let mut child = spawn(self.dir.path(), &self.args);
        self.channel = connect(&self.socket, Some(&mut child)).await;
        self.child = Some(child);
    }

    /// Sends SIGTERM to the driver the suite started and waits for it to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("a driver the suite started");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("a pid fits i32"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM berth-csi");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.0.try_wait().expect("wait for berth-csi") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "berth-csi did not exit within 20 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The driver's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn identity(&self) -> IdentityClient<Channel> {
        IdentityClient::new(self.channel.clone())
    }

    pub fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel.clone())
    }

    pub fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel.clone())
    }

    /// A path in the scratch directory that does not exist yet.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(berth_testkit::unique_name(name))
    }

    /// A staging directory, created as the CO creates it.
    pub fn staging_dir(&self) -> PathBuf {
        let path = self.path("staging");
        fs::create_dir(&path).expect("create the staging directory");
        path
    }

    /// The berth-csi metadata root, for a driver the suite started.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
}

impl Drop for Sut {
    fn drop(&mut self) {
        // Unmount anything a test left under the scratch directory, deepest first.
        let prefix = self.dir.path().to_owned();
        let mut points: Vec<PathBuf> = mount_points()
            .into_iter()
            .filter(|p| p.starts_with(&prefix))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        for p in points {
            let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
        }
        // And detach loop devices backed by block-volume images under it, by device.
        for device in loop_devices_under(&prefix) {
            // Drop cannot fail the test: say what is left behind.
            match Command::new("losetup").arg("-d").arg(&device).status() {
                Ok(s) if s.success() => {}
                other => eprintln!("warning: losetup -d {device:?} failed: {other:?}"),
            }
        }
        if std::thread::panicking()
            && let Ok(log) = fs::read_to_string(self.dir.path().join("driver.log"))
        {
            eprintln!("--- berth-csi log ---\n{log}--- end of log ---");
        }
    }
}

fn spawn(dir: &Path, args: &[String]) -> ChildGuard {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("driver.log"))
        .expect("open the driver log");
    let child = Command::new(env!("CARGO_BIN_EXE_berth-csi"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start berth-csi");
    ChildGuard(child)
}

async fn connect(socket: &Path, mut child: Option<&mut ChildGuard>) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if socket.exists()
            && let Ok(channel) = berth_csi::connect(socket).await
        {
            return channel;
        }
        if let Some(child) = child.as_deref_mut()
            && let Ok(Some(status)) = child.0.try_wait()
        {
            panic!(
                "berth-csi exited with {status} before serving {}",
                socket.display()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no CSI driver answered on {} within 30 s",
            socket.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every mount point in this mount namespace.
pub fn mount_points() -> Vec<PathBuf> {
    let table = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .collect()
}

/// Whether `path` is a mount point.
pub fn is_mounted(path: &Path) -> bool {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    mount_points().contains(&path)
}

/// A mount-access capability with `mode`.
pub fn mount_cap_mode(mode: Mode) -> proto::VolumeCapability {
    proto::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

/// A single-node-writer, mount-access capability (csi-sanity's default).
pub fn mount_cap() -> proto::VolumeCapability {
    mount_cap_mode(Mode::SingleNodeWriter)
}

/// A CreateVolume request for `name` with `required` bytes (0: unset).
pub fn create_request(name: &str, required: i64) -> proto::CreateVolumeRequest {
    proto::CreateVolumeRequest {
        name: name.to_owned(),
        capacity_range: (required > 0).then_some(proto::CapacityRange {
            required_bytes: required,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount_cap()],
        ..Default::default()
    }
}

/// Creates a volume and returns it; panics with the status otherwise.
pub async fn create_volume(sut: &Sut, name: &str, required: i64) -> proto::Volume {
    sut.controller()
        .create_volume(create_request(name, required))
        .await
        .unwrap_or_else(|s| panic!("CreateVolume {name}: {s}"))
        .into_inner()
        .volume
        .unwrap_or_else(|| panic!("CreateVolume {name} returned no volume"))
}

/// Deletes a volume; panics with the status otherwise.
pub async fn delete_volume(sut: &Sut, id: &str) {
    sut.controller()
        .delete_volume(proto::DeleteVolumeRequest {
            volume_id: id.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("DeleteVolume {id}: {s}"));
}

/// A fresh CreateVolume name.
pub fn name(prefix: &str) -> String {
    berth_testkit::unique_name(prefix)
}

/// Asserts that `result` failed with `code`.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    what: &str,
) {
    match result {
        Ok(v) => panic!("{what}: expected {code:?}, got success {v:?}"),
        Err(s) => assert_eq!(s.code(), code, "{what}: expected {code:?}, got {s}"),
    }
}

/// The loop devices (`/dev/loopN`) whose backing file is under `dir`.
pub fn loop_devices_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            fs::read_to_string(e.path().join("loop/backing_file"))
                .is_ok_and(|b| Path::new(b.trim_end()).starts_with(dir))
        })
        .map(|e| Path::new("/dev").join(e.file_name()))
        .collect()
}

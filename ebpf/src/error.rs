//! Errors of the eBPF loader.

use std::path::PathBuf;

/// What went wrong loading, attaching or programming the dataplane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot load eBPF object {path}: {source}")]
    Load {
        path: PathBuf,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("eBPF object has no {kind} named {name}")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot open cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{count} port ranges for one peer; a policy rule holds at most {max}")]
    TooManyPortRanges { count: usize, max: usize },
    #[error("interface {iface}: {source}")]
    Interface {
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bpffs pin {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{count} device rules; the device program holds at most {max}")]
    TooManyDeviceRules { count: usize, max: usize },
    #[error(
        "refusing to attach a device program to {0}: not a container's cgroup (a cgroup2 root)"
    )]
    CgroupRoot(PathBuf),
    #[error("the kernel refused the device program: {source} (verifier: {verifier})")]
    DeviceProgram {
        #[source]
        source: std::io::Error,
        verifier: String,
    },
    #[error("attaching the device program to {path}: {source}")]
    Attach {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the backends map is full: {wanted} backends wanted, room for {free}")]
    BackendsFull { wanted: u32, free: u32 },
    #[error("the services map is full ({max} services)")]
    ServicesFull { max: u32 },
}

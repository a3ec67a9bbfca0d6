//! berth-csi: a CSI 1.x driver (Identity, Controller and Node services over a unix
//! socket) whose volumes are directories under a root on the node, limited in size by
//! ext4/xfs project quotas where the filesystem has them, or — for block access —
//! sparse image files attached to loop devices.
//!
//! Entry points: [`Driver::open`] (the driver over a root directory) and [`serve`] (it,
//! on a socket); [`connect`] opens a channel to any CSI driver's socket, and [`proto`]
//! is the generated CSI spec v1.10.0 API.

mod capability;
mod client;
mod controller;
mod driver;
mod error;
mod fsutil;
mod loopdev;
mod mounts;
mod node;
mod quota;
mod server;
mod service;
mod state;
mod sys;

/// The CSI spec's `csi.v1` package, generated from the vendored `proto/csi.proto`.
pub mod proto {
    tonic::include_proto!("csi.v1");
}

pub use client::connect;
pub use driver::{Config, DRIVER_NAME, Driver, TOPOLOGY_KEY};
pub use error::Error;
pub use quota::Quota;
pub use server::{ServeError, serve, socket_path};
pub use service::Service;

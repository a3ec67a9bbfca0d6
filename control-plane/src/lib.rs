//! berth's control plane: the Kubernetes-compatible apiserver (`apiserver/`), the MVCC
//! store it alone talks to (`store/`), the scheduler (`scheduler/`) and the core
//! controllers (`controllers/`), all served by the `berth-server` binary.
#![forbid(unsafe_code)]

pub mod apiserver;
pub mod cidr;
pub mod client;
pub mod controllers;
pub mod disruption_budget;
pub mod quota;
pub mod scheduler;
pub mod store;

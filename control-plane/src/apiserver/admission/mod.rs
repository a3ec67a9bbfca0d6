//! Admission: what happens to an object between decoding and storage — defaulting,
//! validation (RBAC objects' in `rbac`), and the cluster-level allocations (Service cluster IPs and node ports).

pub mod autoscaling;
pub mod defaults;
pub mod priority;
pub mod rbac;
pub mod service_ips;
pub mod validation;

//! Admission: what happens to an object between decoding and storage — defaulting,
//! validation (RBAC objects' in `rbac`, storage objects' in `storage`), the ServiceAccount plugin (`serviceaccount`), the storage plugins (`storage`: DefaultStorageClass, StorageObjectInUseProtection, PersistentVolumeClaimResize), Pod Security (`pod_security`), LimitRanger (`limit_ranger`), and the cluster-level allocations (Service cluster IPs and node ports).

pub mod autoscaling;
pub mod certificates;
pub mod defaults;
pub mod limit_ranger;
pub mod node_restriction;
pub mod pod_security;
pub mod priority;
pub mod rbac;
pub mod service_ips;
pub mod serviceaccount;
pub mod storage;
pub mod validation;

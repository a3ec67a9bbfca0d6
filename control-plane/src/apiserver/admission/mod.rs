//! Admission: what happens to an object between decoding and storage — defaulting,
//! validation (RBAC objects' in `rbac`, storage objects' in `storage`), the ServiceAccount plugin (`serviceaccount`), the storage plugins (`storage`: DefaultStorageClass, StorageObjectInUseProtection, PersistentVolumeClaimResize), Pod Security (`pod_security`), LimitRanger (`limit_ranger`), ValidatingAdmissionPolicy (`policy`: CEL, after the built-in validation and before the validating webhooks), the admission webhooks (`webhook`: mutating after the built-in mutating plugins, validating after the built-in validation), ResourceQuota (`resource_quota`, the last before the write), and the cluster-level allocations (Service cluster IPs and node ports).

pub mod autoscaling;
pub mod certificates;
pub mod defaults;
pub mod limit_ranger;
pub mod node_restriction;
pub mod pod_cidrs;
pub mod pod_security;
pub mod policy;
pub mod priority;
pub mod rbac;
pub mod resource_quota;
pub mod service_ips;
pub mod service_ranges;
pub mod serviceaccount;
pub mod storage;
pub mod validation;
pub mod webhook;

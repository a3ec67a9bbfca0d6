//! berth-csi: a CSI driver (Identity, Controller and Node services over a unix socket)
//! for host-path and local volumes.
//!
//! Nothing is implemented here yet; the modules arrive with the CSI issue.

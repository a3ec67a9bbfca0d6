//! berth's container runtime: the image store (OCI layouts, registry pulls), rootfs
//! (overlay layers and the init layer), sandboxes around `berth-pause`, containers in
//! namespaces and cgroups, logs, exec, and crash-safe on-disk state.
//!
//! Nothing is implemented here yet; the modules arrive with the "Container runtime" issue.

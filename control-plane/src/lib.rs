//! berth's control plane: the Kubernetes-compatible apiserver (`apiserver/`), the MVCC
//! store it alone talks to (`store/`), the scheduler (`scheduler/`) and the core
//! controllers (`controllers/`), all served by the `berth-server` binary.
//!
//! Nothing is implemented here yet; the modules arrive with their issues
//! ("Control plane I" and "Control plane II").
#![forbid(unsafe_code)]

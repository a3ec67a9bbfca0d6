//! A CSI conformance suite in the spirit of csi-sanity (kubernetes-csi/csi-test), which
//! needs Go and so cannot run here. It checks the behaviour the CSI spec's RPC
//! descriptions and error tables require, against berth-csi started per test or
//! against any driver named by `BERTH_CSI_CONFORMANCE_ENDPOINT` (see `harness.rs`).
//! Node tests bind-mount, so they need root and are skipped (and counted) otherwise.

mod block;
mod controller;
mod harness;
mod identity;
mod node;
mod snapshots;

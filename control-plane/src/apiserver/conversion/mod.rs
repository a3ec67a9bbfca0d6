//! Conversion between the versions of a group that share one storage version, as
//! kube-apiserver's generated and hand-written conversion functions do: an object
//! written in a served version is stored in the storage version, and read back in
//! whichever version the client asks for. The hooks live on
//! [`ResourceDef`](super::registry::ResourceDef) (`conversion`, `external`,
//! `internal`); each group's functions live in a file of its own.
//!
//! A CRD's conversion webhook is called from async code instead ([`webhook`]).
//!
//! Entry points: [`autoscaling::v1_to_v2`], [`autoscaling::v2_to_v1`],
//! [`webhook::external`], [`webhook::internal`].

pub mod autoscaling;
pub mod webhook;

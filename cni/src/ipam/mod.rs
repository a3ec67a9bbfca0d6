//! IP address management: the built-in host-local-style allocator ([`store`]) or a
//! delegated IPAM plugin ([`delegate`]), chosen by `ipam.type`.

pub mod config;
pub mod delegate;
pub mod store;

pub use config::{BUILTIN_TYPE, IpamConf, RangeSpec};
pub use store::Store;

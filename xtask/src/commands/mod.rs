//! One file per `cargo xtask` subcommand.
pub mod bench;
pub mod build;
pub mod build_ebpf;
pub mod dist;
pub mod images;
pub mod lb_client;
pub mod setup;
pub mod test;
pub mod up;
pub mod vendor_proto;

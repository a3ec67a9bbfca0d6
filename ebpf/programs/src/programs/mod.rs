//! One file per hook.
pub mod connect;

//! Generated tables; see each file's header for its source.

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_64;

//! The CNI specification's data: versions, network configuration, results and errors
//! (CNI spec 1.1.0, with the older result formats 0.3.0–0.4.0 it still allows).

pub mod cidr;
pub mod config;
pub mod error;
pub mod result;
pub mod version;

pub use cidr::Ipv4Cidr;
pub use config::{Attachment, Dns, NetConf, RouteConf};
pub use error::{CniError, code};
pub use result::{CniResult, Interface, IpConfig, Route};
pub use version::{SUPPORTED_VERSIONS, Version};

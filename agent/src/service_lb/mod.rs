//! Service load balancing on the node, kube-proxy's job done with eBPF: Services and
//! their EndpointSlices become frontends and backend lists ([`model`]), which
//! [`sync::ServiceSync`] keeps programmed in the socket-LB maps, changing only what
//! changed, and [`metrics::LbMetrics`] reports it; [`watch::LbConsumer`] feeds it from the
//! node's Service watch ([`crate::services`]); [`node::start`] loads and attaches it for the node's pods.

pub mod external;
pub mod health;
pub mod host_ports;
pub mod metrics;
pub mod model;
pub mod node;
pub mod sync;
pub mod watch;

pub use metrics::LbMetrics;
pub use model::{LbEntry, Rejected, entries, host_port_entries};
pub use sync::{LbTarget, ServiceSync};

//! STATUS (spec 1.1): ready to serve ADD — i.e. IPAM has an address to give.

use super::ipam::Ipam;
use crate::{
    env::Invocation,
    spec::{CniError, NetConf},
};

pub fn status(inv: &Invocation, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    Ipam::from_conf(conf)?.status(inv, stdin)
}

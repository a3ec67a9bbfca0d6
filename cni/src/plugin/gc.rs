//! GC (spec 1.1): release every lease whose attachment is not in
//! `cni.dev/valid-attachments`, and the masquerade rules no lease needs any more.

use super::ipam::Ipam;
use crate::{
    env::Invocation,
    spec::{CniError, NetConf},
};

pub fn gc(inv: &Invocation, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let ipam = Ipam::from_conf(conf)?;
    let valid = conf.valid_attachments.clone().unwrap_or_default();
    let released = ipam.gc(inv, stdin, &valid)?;
    if conf.ip_masq {
        let released: Vec<_> = released
            .into_iter()
            .filter_map(|ip| ipam.subnet_of(ip).map(|s| s.with_addr(ip)))
            .collect();
        ipam.unmasquerade(&conf.name, &released, conf.non_masquerade())?;
    }
    Ok(())
}

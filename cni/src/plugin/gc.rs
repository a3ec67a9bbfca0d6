//! GC (spec 1.1): release every lease whose attachment is not in
//! `cni.dev/valid-attachments`, and its masquerade rule.

use super::ipam::Ipam;
use crate::{
    env::Invocation,
    masq,
    spec::{CniError, NetConf},
};

pub fn gc(inv: &Invocation, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let ipam = Ipam::from_conf(conf)?;
    let valid = conf.valid_attachments.clone().unwrap_or_default();
    let released = ipam.gc(inv, stdin, &valid)?;
    if conf.ip_masq {
        for ip in released {
            if let Some(subnet) = ipam.subnet_of(ip) {
                masq::del(&conf.name, ip, subnet)?;
            }
        }
    }
    Ok(())
}

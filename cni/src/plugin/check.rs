//! CHECK: the container's network is still as ADD (the `prevResult`) left it —
//! the interface exists in the netns, is up and has its address; its host side
//! exists and is in the bridge; IPAM still holds the lease.

use super::{host_veth_name, ipam::Ipam, runtime};
use crate::{
    env::Invocation,
    netlink::{Rtnl, netns},
    spec::{CniError, CniResult, NetConf, code},
};

fn failed(msg: String) -> CniError {
    CniError::new(code::CHECK_FAILED, msg)
}

pub fn check(inv: &Invocation, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "CHECK needs prevResult in the configuration",
        )
    })?;
    let prev = CniResult::from_json(prev)?;
    let ipam = Ipam::from_conf(conf)?;
    let netns_path = inv
        .netns
        .as_deref()
        .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_NETNS is not set"))?;
    let ns = netns::open(netns_path)?;
    let ours = prev
        .interfaces
        .iter()
        .position(|i| i.name == inv.ifname && i.sandbox.is_some())
        .ok_or_else(|| {
            failed(format!(
                "prevResult has no interface {} in a sandbox",
                inv.ifname
            ))
        })?;
    let expected: Vec<_> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(ours))
        .map(|ip| ip.address)
        .collect();
    let rt = runtime()?;
    rt.block_on(async {
        let host = Rtnl::connect()
            .map_err(|e| CniError::new(code::NETLINK, format!("netlink socket: {e}")))?;
        let pod = netns::enter(&ns, Rtnl::connect)?;
        let link = pod.link(&inv.ifname).await?.ok_or_else(|| {
            failed(format!(
                "interface {} is missing from {}",
                inv.ifname,
                netns_path.display()
            ))
        })?;
        if !pod.is_up(link.index).await? {
            return Err(failed(format!("interface {} is down", inv.ifname)));
        }
        let have = pod.addresses(link.index).await?;
        for addr in &expected {
            if !have.contains(addr) {
                return Err(failed(format!(
                    "interface {} lost its address {addr}",
                    inv.ifname
                )));
            }
        }
        let host_name = host_veth_name(&inv.container_id, &inv.ifname);
        let host_link = host
            .link(&host_name)
            .await?
            .ok_or_else(|| failed(format!("host veth {host_name} is missing")))?;
        let bridge = host
            .link(conf.bridge_name())
            .await?
            .ok_or_else(|| failed(format!("bridge {} is missing", conf.bridge_name())))?;
        if host_link.controller != Some(bridge.index) {
            return Err(failed(format!(
                "host veth {host_name} is not in bridge {}",
                bridge.name
            )));
        }
        Ok(())
    })?;
    for addr in &expected {
        ipam.check(inv, stdin, addr.addr)?;
    }
    Ok(())
}

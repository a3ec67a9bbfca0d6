//! DEL: release the lease, remove the veth pair (deleting the host side removes the
//! container side too, so the container's netns need not be entered), remove the
//! masquerade rule. Idempotent: an unknown container, a missing netns or a veth
//! already gone is success, as the spec requires.

use super::{host_veth_name, ipam::Ipam, runtime};
use crate::{
    env::Invocation,
    netlink::{Rtnl, delete, netns},
    spec::{CniError, CniResult, Ipv4Cidr, NetConf, code},
};

pub fn del(inv: &Invocation, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let ipam = Ipam::from_conf(conf)?;
    let released = ipam.release(inv, stdin)?;
    let rt = runtime()?;
    let host_veth = rt.block_on(async {
        let host = Rtnl::connect()
            .map_err(|e| CniError::new(code::NETLINK, format!("netlink socket: {e}")))?;
        let host_name = host_veth_name(&inv.container_id, &inv.ifname);
        if let Some(link) = host.link(&host_name).await? {
            return Ok(Some(link.index));
        }
        if let Some(path) = inv.netns.as_deref().filter(|p| p.exists()) {
            // No host side by our name: remove the container side if it is ours.
            let ns = netns::open(path)?;
            let pod = netns::enter(&ns, Rtnl::connect)?;
            if let Some(link) = pod.link(&inv.ifname).await?
                && link.peer_index.is_some()
            {
                pod.delete_link(link.index).await?;
            }
        }
        Ok::<Option<u32>, CniError>(None)
    })?;
    // The runtime is gone before delete::delete_link forks: one thread, no I/O driver.
    drop(rt);
    if let Some(index) = host_veth {
        // Deleting the host side takes the container side with it.
        delete::delete_link(index)?;
    }
    if conf.ip_masq {
        let prev_ip = conf
            .prev_result
            .as_ref()
            .and_then(|p| CniResult::from_json(p).ok())
            .and_then(|r| r.ips.first().map(|ip| ip.address));
        let released: Vec<Ipv4Cidr> = released
            .or(prev_ip.map(|c| c.addr))
            .map(|addr| {
                ipam.subnet_of(addr)
                    .or(prev_ip)
                    .map_or(Ipv4Cidr { addr, prefix: 32 }, |s| s.with_addr(addr))
            })
            .into_iter()
            .collect();
        ipam.unmasquerade(&conf.name, &released, conf.non_masquerade())?;
    }
    Ok(())
}

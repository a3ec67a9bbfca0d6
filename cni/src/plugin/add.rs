//! ADD: bridge (created if missing) → IPAM lease → veth pair created with its peer
//! already inside the container's netns and already in the bridge → address and
//! routes inside → the result. Any failure after the lease undoes everything this
//! ADD made (veth, lease, masquerade rule, a bridge it created), so a failed ADD
//! leaves nothing behind.

use std::{fs, os::fd::AsFd};

use serde_json::Value;

use super::{
    host_veth_name,
    ipam::{Ipam, Lease},
    runtime,
};
use crate::{
    env::Invocation,
    netlink::{Link, Rtnl, format_mac, mac_for_ip, mac_from, netns},
    spec::{CniError, CniResult, Interface, IpConfig, Ipv4Cidr, NetConf, Route, Version, code},
};

/// What this ADD made, to undo on failure.
#[derive(Default)]
struct Made {
    bridge: Option<u32>,
    veth: Option<String>,
    masq: bool,
}

pub fn add(
    inv: &Invocation,
    conf: &NetConf,
    version: Version,
    stdin: &[u8],
) -> Result<Value, CniError> {
    let ipam = Ipam::from_conf(conf)?;
    let prev = conf
        .prev_result
        .as_ref()
        .map(CniResult::from_json)
        .transpose()?;
    let netns_path = inv
        .netns
        .as_deref()
        .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_NETNS is not set"))?;
    let ns = netns::open(netns_path)?;
    let rt = runtime()?;
    rt.block_on(async {
        let host = Rtnl::connect()
            .map_err(|e| CniError::new(code::NETLINK, format!("netlink socket: {e}")))?;
        let pod = netns::enter(&ns, Rtnl::connect)?;
        if pod.link(&inv.ifname).await?.is_some() {
            return Err(CniError::new(
                code::INTERFACE_EXISTS,
                format!(
                    "interface {} already exists in {}",
                    inv.ifname,
                    netns_path.display()
                ),
            ));
        }
        let lease = ipam.allocate(inv, stdin)?;
        let mut made = Made::default();
        match setup(inv, conf, &host, &pod, &ns, &lease, &ipam, &mut made).await {
            Ok(ours) => {
                let result = match prev {
                    Some(prev) => prev.merged_after(ours),
                    None => ours,
                };
                Ok(result.to_json(version))
            }
            Err(err) => {
                undo(inv, conf, &host, &ipam, &lease, made, stdin).await;
                Err(err)
            }
        }
    })
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; the pieces are all distinct"
)]
async fn setup(
    inv: &Invocation,
    conf: &NetConf,
    host: &Rtnl,
    pod: &Rtnl,
    ns: &fs::File,
    lease: &Lease,
    ipam: &Ipam,
    made: &mut Made,
) -> Result<CniResult, CniError> {
    let bridge_name = conf.bridge_name();
    let bridge = match host.link(bridge_name).await? {
        Some(b) => b,
        None => match host.create_bridge(bridge_name, conf.mtu).await {
            Ok(b) => {
                made.bridge = Some(b.index);
                b
            }
            // A concurrent ADD created it between our lookup and our create: use it.
            Err(e) if e.errno() == Some(libc::EEXIST) => {
                host.link(bridge_name).await?.ok_or_else(|| {
                    CniError::new(
                        code::NETLINK,
                        format!("bridge {bridge_name} exists yet cannot be found"),
                    )
                })?
            }
            Err(e) => return Err(e.into()),
        },
    };
    if conf.is_gateway
        && let Some(gw) = lease.gateway
    {
        host.add_address(bridge.index, lease.address.with_addr(gw))
            .await?;
        enable_ip_forward()?;
    }

    let host_name = host_veth_name(&inv.container_id, &inv.ifname);
    let host_mac = mac_from(&format!("{}/{}", inv.container_id, inv.ifname));
    let pod_mac = mac_for_ip(lease.address.addr);
    let create = || {
        host.create_veth(
            (&host_name, host_mac),
            (&inv.ifname, pod_mac),
            ns.as_fd(),
            bridge.index,
            conf.mtu,
        )
    };
    match create().await {
        // The pod side's name was checked free, so the host side's name is taken: a
        // leftover of an earlier ADD of this very container/ifname that never got its
        // DEL. Replace it.
        Err(e) if e.errno() == Some(libc::EEXIST) => {
            if let Some(stale) = host.link(&host_name).await? {
                host.delete_link(stale.index).await?;
            }
            create().await?;
        }
        other => other?,
    }
    made.veth = Some(host_name.clone());
    // One lookup gives the host side's index and, as its IFLA_LINK, the pod side's.
    let host_link = required(host.link(&host_name).await?, &host_name)?;
    let pod_index = host_link
        .peer_index
        .ok_or_else(|| CniError::new(code::NETLINK, format!("veth {host_name} reports no peer")))?;
    host.configure_port(host_link.index, conf.hairpin_mode)
        .await?;

    pod.disable_ipv6_link_local(pod_index).await?;
    pod.set_up(pod_index).await?;
    pod.add_address(pod_index, lease.address).await?;
    let mut routes = lease.routes.clone();
    if conf.is_default_gateway && !routes.iter().any(|r| r.dst.prefix == 0) {
        routes.push(Route {
            dst: Ipv4Cidr {
                addr: [0, 0, 0, 0].into(),
                prefix: 0,
            },
            gw: lease.gateway,
        });
    }
    for route in &mut routes {
        route.gw = route.gw.or(lease.gateway);
        pod.add_route(pod_index, route.dst, route.gw).await?;
    }

    if conf.ip_masq {
        made.masq = true;
        ipam.masquerade(&conf.name, lease.address, conf.non_masquerade())?;
    }

    Ok(CniResult {
        interfaces: vec![
            Interface {
                name: bridge.name.clone(),
                mac: bridge.mac.map(format_mac).unwrap_or_default(),
                mtu: bridge.mtu,
                sandbox: None,
            },
            Interface {
                name: host_name,
                mac: format_mac(host_mac),
                mtu: host_link.mtu,
                sandbox: None,
            },
            Interface {
                name: inv.ifname.clone(),
                mac: format_mac(pod_mac),
                mtu: host_link.mtu,
                sandbox: inv.netns.as_ref().map(|p| p.display().to_string()),
            },
        ],
        ips: vec![IpConfig {
            address: lease.address,
            gateway: lease.gateway,
            interface: Some(2),
        }],
        routes,
        dns: conf.dns.clone().unwrap_or_default(),
    })
}

fn required(link: Option<Link>, name: &str) -> Result<Link, CniError> {
    link.ok_or_else(|| {
        CniError::new(
            code::NETLINK,
            format!("link {name} vanished right after it was created"),
        )
    })
}

/// Forwarding must be on for a gateway bridge (as the reference bridge does).
fn enable_ip_forward() -> Result<(), CniError> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    if fs::read_to_string(PATH).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    fs::write(PATH, "1")
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("cannot enable {PATH}: {e}")))
}

async fn undo(
    inv: &Invocation,
    conf: &NetConf,
    host: &Rtnl,
    ipam: &Ipam,
    lease: &Lease,
    made: Made,
    stdin: &[u8],
) {
    if let Some(name) = made.veth
        && let Ok(Some(link)) = host.link(&name).await
    {
        let _ = host.delete_link(link.index).await;
    }
    // The bridge goes only if this ADD made it and no other ADD has put a port on
    // it meanwhile.
    if let Some(bridge) = made.bridge
        && host.ports_of(bridge).await.is_ok_and(|n| n == 0)
    {
        let _ = host.delete_link(bridge).await;
    }
    let _ = ipam.release(inv, stdin);
    if made.masq {
        let _ = ipam.unmasquerade(&conf.name, &[lease.address], conf.non_masquerade());
    }
}

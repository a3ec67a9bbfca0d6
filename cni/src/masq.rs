//! `ipMasq`: masquerade traffic from a pod address leaving the pod subnet, as the
//! reference bridge does, with one iptables rule in `nat POSTROUTING` per address,
//! tagged with the network's name. (Netfilter has no rtnetlink interface; iptables
//! — iptables-nft on Debian — is the tool the reference plugins use too.)

use std::{net::Ipv4Addr, process::Command};

use crate::spec::{CniError, Ipv4Cidr, code};

fn rule(network: &str, ip: Ipv4Addr, subnet: Ipv4Cidr) -> Vec<String> {
    [
        "POSTROUTING".to_string(),
        "-s".into(),
        format!("{ip}/32"),
        "!".into(),
        "-d".into(),
        format!("{}/{}", subnet.network(), subnet.prefix),
        "-m".into(),
        "comment".into(),
        "--comment".into(),
        format!("berth-cni:{network}"),
        "-j".into(),
        "MASQUERADE".into(),
    ]
    .into()
}

fn iptables(action: &str, args: &[String]) -> Result<bool, CniError> {
    let out = Command::new("iptables")
        .args(["-w", "-t", "nat", action])
        .args(args)
        .output()
        .map_err(|e| CniError::new(code::MASQUERADE, format!("cannot run iptables: {e}")))?;
    Ok(out.status.success())
}

/// Adds the masquerade rule for `ip`. One `iptables -A`, without a `-C` first: each
/// run of iptables costs a few milliseconds of CPU in a pod-start burst, a repeated ADD
/// for the same address is rare, and the copy it leaves is harmless and removed with
/// the other by [`del`], which deletes until none is left.
pub fn add(network: &str, ip: Ipv4Addr, subnet: Ipv4Cidr) -> Result<(), CniError> {
    let r = rule(network, ip, subnet);
    if iptables("-A", &r)? {
        Ok(())
    } else {
        Err(CniError::new(
            code::MASQUERADE,
            format!("iptables could not add the masquerade rule for {ip}"),
        ))
    }
}

/// Removes the masquerade rule for `ip`; a missing rule is fine.
pub fn del(network: &str, ip: Ipv4Addr, subnet: Ipv4Cidr) -> Result<(), CniError> {
    let r = rule(network, ip, subnet);
    while iptables("-D", &r)? {}
    Ok(())
}

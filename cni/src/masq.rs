//! `ipMasq`: masquerade traffic from pod addresses leaving the pod subnet (or, with
//! `nonMasqueradeCIDR`, leaving that range: the cluster's pod range, so pods on other
//! nodes see the real source address), with iptables rules in `nat POSTROUTING`
//! tagged with the network's name. (Netfilter has
//! no rtnetlink interface; iptables — iptables-nft on Debian — is the tool the
//! reference plugins use too.)
//!
//! With the built-in IPAM there is one rule per subnet, `-s <subnet> ! -d <subnet>`,
//! present while the subnet has any address handed out: the first ADD puts it in, the
//! DEL (or GC) that releases the last address takes it out. A marker file in the IPAM
//! store says it is in, so only the first ADD of a subnet runs iptables — each run
//! costs milliseconds of CPU and reads the whole nat table, which made a burst of pod
//! starts quadratic with a rule per pod. The marker records the boot and the network
//! namespace it was written in; a marker from another boot or namespace counts as
//! absent (rules do not survive either). A `masq.lock` flock orders the check of the
//! allocations against the rule's removal, so an ADD racing the last DEL never ends
//! up without its rule. With a delegated IPAM plugin the plugin cannot see the
//! allocations: there is one rule per address, added on ADD and removed on DEL, as
//! the reference bridge does.

use std::{
    fs::{self, File, OpenOptions},
    net::Ipv4Addr,
    os::unix::fs::MetadataExt,
    path::Path,
    process::Command,
};

use nix::fcntl::{Flock, FlockArg};

use crate::spec::{CniError, Ipv4Cidr, code};

fn rule(network: &str, source: Ipv4Cidr, subnet: Ipv4Cidr) -> Vec<String> {
    [
        "POSTROUTING".to_string(),
        "-s".into(),
        format!("{}/{}", source.network(), source.prefix),
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

fn append(r: &[String], what: impl std::fmt::Display) -> Result<(), CniError> {
    if iptables("-A", r)? {
        Ok(())
    } else {
        Err(CniError::new(
            code::MASQUERADE,
            format!("iptables could not add the masquerade rule for {what}"),
        ))
    }
}

fn host(ip: Ipv4Addr) -> Ipv4Cidr {
    Ipv4Cidr {
        addr: ip,
        prefix: 32,
    }
}

/// Adds the masquerade rule for one address (delegated IPAM). One `iptables -A`,
/// without a `-C` first: a repeated ADD for the same address is rare, and the copy it
/// leaves is harmless and removed with the other by [`del`].
pub fn add(network: &str, ip: Ipv4Addr, exempt: Ipv4Cidr) -> Result<(), CniError> {
    append(&rule(network, host(ip), exempt), ip)
}

/// Removes the masquerade rule for one address; a missing rule is fine.
pub fn del(network: &str, ip: Ipv4Addr, exempt: Ipv4Cidr) -> Result<(), CniError> {
    let r = rule(network, host(ip), exempt);
    while iptables("-D", &r)? {}
    Ok(())
}

/// The per-subnet rule's bookkeeping in the built-in IPAM's directory.
#[derive(Debug)]
pub struct SubnetMasq<'a> {
    pub dir: &'a Path,
    pub network: &'a str,
    pub subnet: Ipv4Cidr,
    /// The destinations that keep the pods' source address: the subnet, or the
    /// cluster's pod range (`nonMasqueradeCIDR`).
    pub exempt: Ipv4Cidr,
}

/// Where the rule was written: the boot and the network namespace.
fn here() -> String {
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let netns = fs::metadata("/proc/thread-self/ns/net").map_or(0, |m| m.ino());
    format!("{} {netns}", boot.trim())
}

impl SubnetMasq<'_> {
    fn marker(&self) -> std::path::PathBuf {
        let mut name = format!("masq-{}-{}", self.subnet.network(), self.subnet.prefix);
        if self.exempt != self.subnet {
            name.push_str(&format!(
                "-{}-{}",
                self.exempt.network(),
                self.exempt.prefix
            ));
        }
        self.dir.join(name)
    }

    fn lock(&self) -> Result<Flock<File>, CniError> {
        let path = self.dir.join("masq.lock");
        let err = |what: &str, e: &dyn std::fmt::Display| {
            CniError::new(code::IO_FAILURE, format!("{what} {}: {e}", path.display()))
        };
        fs::create_dir_all(self.dir).map_err(|e| err("cannot create the directory of", &e))?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| err("cannot open", &e))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| err("cannot lock", &e))
    }

    /// ADD, after the address was allocated: the subnet's rule is in.
    pub fn ensure(&self) -> Result<(), CniError> {
        let _lock = self.lock()?;
        let marker = self.marker();
        let here = here();
        if fs::read_to_string(&marker).is_ok_and(|m| m == here) {
            return Ok(());
        }
        let r = rule(self.network, self.subnet, self.exempt);
        if !iptables("-C", &r)? {
            append(&r, self.subnet)?;
        }
        fs::write(&marker, here).map_err(|e| {
            CniError::new(
                code::IO_FAILURE,
                format!("cannot write {}: {e}", marker.display()),
            )
        })
    }

    /// DEL or GC, after addresses were released: the subnet's rule goes when
    /// `in_use` (asked under the lock) says no address of the subnet is handed out.
    pub fn release_if_unused(
        &self,
        in_use: impl FnOnce() -> Result<bool, CniError>,
    ) -> Result<(), CniError> {
        let _lock = self.lock()?;
        if in_use()? {
            return Ok(());
        }
        let r = rule(self.network, self.subnet, self.exempt);
        while iptables("-D", &r)? {}
        match fs::remove_file(self.marker()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CniError::new(
                code::IO_FAILURE,
                format!("cannot remove {}: {e}", self.marker().display()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().expect("CIDR")
    }

    #[test]
    fn the_exempt_range_is_the_rules_destination_and_names_its_marker() {
        let r = rule("net", cidr("10.244.1.0/24"), cidr("10.244.0.0/16"));
        let text = r.join(" ");
        assert!(
            text.contains("-s 10.244.1.0/24 ! -d 10.244.0.0/16"),
            "{text}"
        );
        let dir = Path::new("/nonexistent");
        let m = |exempt: &str| {
            SubnetMasq {
                dir,
                network: "net",
                subnet: cidr("10.244.1.0/24"),
                exempt: cidr(exempt),
            }
            .marker()
        };
        assert_eq!(m("10.244.1.0/24"), dir.join("masq-10.244.1.0-24"));
        assert_eq!(
            m("10.244.0.0/16"),
            dir.join("masq-10.244.1.0-24-10.244.0.0-16"),
            "a rule with another destination is another rule"
        );
    }
}

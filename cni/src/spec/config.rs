//! The network configuration berth-cni reads from stdin.
//!
//! Field names follow the reference `bridge` plugin, so one config can drive either
//! (only `type` and `ipam.type` differ).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{CniError, Version, code};

/// DNS settings, passed through to the result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// A route as configured (`ipam.routes`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteConf {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The network configuration (one plugin's entry of a conflist, as the runtime
/// hands it over: with `name`, `cniVersion` and, when chained, `prevResult`).
#[derive(Clone, Debug, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// Bridge name on the node.
    #[serde(default)]
    pub bridge: Option<String>,
    /// Give the bridge the gateway address (as the reference bridge's isGateway).
    #[serde(rename = "isGateway", default)]
    pub is_gateway: bool,
    /// Add a default route via the gateway in the container.
    #[serde(rename = "isDefaultGateway", default)]
    pub is_default_gateway: bool,
    /// Masquerade traffic from the pod leaving the pod subnet.
    #[serde(rename = "ipMasq", default)]
    pub ip_masq: bool,
    /// With `ipMasq`: a destination range not masqueraded besides the pod subnet —
    /// the cluster's pod range, so pod-to-pod traffic between nodes keeps the pod's
    /// address (the rule of kubenet and the kubelet's `--non-masquerade-cidr`).
    #[serde(rename = "nonMasqueradeCIDR", default)]
    pub non_masquerade_cidr: Option<String>,
    /// Hairpin mode on the bridge port, so a pod can reach itself through a Service.
    #[serde(rename = "hairpinMode", default)]
    pub hairpin_mode: bool,
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The raw IPAM section: parsed for the built-in allocator, passed whole to a
    /// delegated plugin.
    #[serde(default)]
    pub ipam: Option<Value>,
    #[serde(default)]
    pub dns: Option<Dns>,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// Bridge name when the config gives none.
pub const DEFAULT_BRIDGE: &str = "berth0";

impl NetConf {
    /// Decodes stdin; bad JSON is error 6, a missing or unknown version error 7/1.
    pub fn parse(stdin: &[u8]) -> Result<(Self, Version), CniError> {
        let conf: Self = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODING_FAILURE,
                "cannot decode the network configuration",
            )
            .details(e.to_string())
        })?;
        let version = Version::parse(&conf.cni_version)?;
        Ok((conf, version))
    }

    pub fn bridge_name(&self) -> &str {
        self.bridge.as_deref().unwrap_or(DEFAULT_BRIDGE)
    }

    /// Checks what every verb but VERSION needs.
    pub fn validate(&self) -> Result<(), CniError> {
        let invalid = |msg: String| Err(CniError::new(code::INVALID_CONFIG, msg));
        if self.name.is_empty() {
            return invalid("the network configuration has no \"name\"".into());
        }
        let bridge = self.bridge_name();
        if bridge.is_empty() || bridge.len() > 15 || bridge.contains(['/', ' ']) {
            return invalid(format!(
                "bridge name {bridge:?} is not a valid interface name"
            ));
        }
        if let Some(mtu) = self.mtu
            && !(68..=65535).contains(&mtu)
        {
            return invalid(format!("mtu {mtu} is outside 68..=65535"));
        }
        if let Some(text) = &self.non_masquerade_cidr
            && let Err(e) = text.parse::<super::Ipv4Cidr>()
        {
            return invalid(format!("nonMasqueradeCIDR: {e}"));
        }
        Ok(())
    }

    /// `nonMasqueradeCIDR`, parsed ([`NetConf::validate`] rejects a bad one).
    pub fn non_masquerade(&self) -> Option<super::Ipv4Cidr> {
        self.non_masquerade_cidr.as_deref()?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_bridge_fields_are_read() {
        let (c, v) = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","type":"berth-cni","bridge":"br9","isGateway":true,
                "ipMasq":true,"hairpinMode":true,"mtu":1400,"ipam":{"type":"host-local"},"unknown":1}"#,
        )
        .expect("valid config");
        assert_eq!(v, Version::V1_1_0);
        assert_eq!(
            (
                c.bridge_name(),
                c.is_gateway,
                c.ip_masq,
                c.hairpin_mode,
                c.mtu
            ),
            ("br9", true, true, true, Some(1400))
        );
        c.validate().expect("valid");
    }

    #[test]
    fn non_masquerade_cidr_is_read_and_checked() {
        let conf = |extra: &str| {
            NetConf::parse(
                format!(r#"{{"cniVersion":"1.1.0","name":"n","type":"berth-cni"{extra}}}"#)
                    .as_bytes(),
            )
            .expect("valid JSON")
            .0
        };
        let c = conf(r#","nonMasqueradeCIDR":"10.244.0.0/16""#);
        c.validate().expect("valid");
        assert_eq!(c.non_masquerade(), "10.244.0.0/16".parse().ok());
        assert_eq!(conf("").non_masquerade(), None);
        let err = conf(r#","nonMasqueradeCIDR":"10.244.0.0""#)
            .validate()
            .expect_err("not a CIDR");
        assert_eq!(err.code, code::INVALID_CONFIG);
        assert!(err.msg.contains("nonMasqueradeCIDR"), "{}", err.msg);
    }

    #[test]
    fn bad_input_gets_the_right_codes() {
        assert_eq!(
            NetConf::parse(b"{not json")
                .map(|_| ())
                .expect_err("bad json")
                .code,
            code::DECODING_FAILURE
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"9.9.9","name":"n"}"#)
                .map(|_| ())
                .expect_err("bad version")
                .code,
            code::INCOMPATIBLE_VERSION
        );
        let (c, _) = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","bridge":"a-very-long-bridge-name"}"#,
        )
        .expect("parses");
        assert_eq!(
            c.validate().expect_err("long name").code,
            code::INVALID_CONFIG
        );
        let (c, _) = NetConf::parse(br#"{"cniVersion":"1.0.0","name":""}"#).expect("parses");
        assert_eq!(
            c.validate().expect_err("no name").code,
            code::INVALID_CONFIG
        );
    }
}

//! Identity service: GetPluginInfo, GetPluginCapabilities, Probe.

use berth_csi::proto::{
    self,
    plugin_capability::{Type, service, volume_expansion},
};

use crate::harness::Sut;

#[tokio::test]
async fn plugin_info_has_a_name_and_version() {
    let sut = Sut::start().await;
    let info = sut
        .identity()
        .get_plugin_info(proto::GetPluginInfoRequest {})
        .await
        .expect("GetPluginInfo")
        .into_inner();
    // spec.md: the name MUST follow domain name notation, at most 63 characters.
    assert!(
        !info.name.is_empty() && info.name.len() <= 63 && info.name.contains('.'),
        "name {:?}",
        info.name
    );
    assert!(
        !info.vendor_version.is_empty(),
        "vendor_version is required"
    );
    if sut.own() {
        assert_eq!(info.name, berth_csi::DRIVER_NAME);
        assert!(
            info.manifest.contains_key("quota"),
            "manifest says how sizes are enforced: {:?}",
            info.manifest
        );
    }
}

#[tokio::test]
async fn plugin_capabilities_and_probe() {
    let sut = Sut::start().await;
    let caps = sut
        .identity()
        .get_plugin_capabilities(proto::GetPluginCapabilitiesRequest {})
        .await
        .expect("GetPluginCapabilities")
        .into_inner()
        .capabilities;
    let services: Vec<i32> = caps
        .iter()
        .filter_map(|c| match &c.r#type {
            Some(Type::Service(s)) => Some(s.r#type),
            _ => None,
        })
        .collect();
    if sut.own() {
        assert!(
            services.contains(&(service::Type::ControllerService as i32)),
            "{caps:?}"
        );
        assert!(
            services.contains(&(service::Type::VolumeAccessibilityConstraints as i32)),
            "{caps:?}"
        );
        assert!(
            caps.iter().any(|c| matches!(&c.r#type, Some(Type::VolumeExpansion(e)) if e.r#type == volume_expansion::Type::Online as i32)),
            "online expansion: {caps:?}"
        );
    }
    let probe = sut
        .identity()
        .probe(proto::ProbeRequest {})
        .await
        .expect("Probe")
        .into_inner();
    assert_ne!(probe.ready, Some(false), "a started driver is ready");
}

//! Delegation to an external IPAM plugin (`ipam.type` other than `berth-ipam`, e.g.
//! the reference `host-local`): found on `CNI_PATH` and run with the same container
//! parameters and the same network configuration on stdin, as the spec says a
//! plugin invokes its IPAM plugin — through [`crate::exec::Runner`], the one way
//! berth runs a CNI plugin.

use serde_json::Value;

use crate::{
    env::Invocation,
    exec::{Attach, Runner},
    spec::{CniError, CniResult, code},
};

/// Runs the IPAM plugin for `command`; returns its parsed result for ADD. Failures
/// to find or run it are error 104; an error it reports is passed on as it is.
pub fn run(
    invocation: &Invocation,
    plugin: &str,
    command: &str,
    stdin: &[u8],
) -> Result<Option<CniResult>, CniError> {
    if plugin.is_empty() || plugin.contains('/') {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("invalid ipam type {plugin:?}"),
        ));
    }
    let conf: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODING_FAILURE,
            format!("cannot decode the network configuration: {e}"),
        )
    })?;
    let attach = invocation.netns.as_ref().map(|netns| Attach {
        container_id: invocation.container_id.clone(),
        netns: netns.clone(),
        ifname: invocation.ifname.clone(),
        args: invocation.args.clone(),
        capability_args: serde_json::Map::new(),
    });
    let runner = Runner::new(invocation.path.clone());
    runner.find(plugin).map_err(|e| {
        CniError::new(
            code::IPAM_DELEGATE,
            format!("IPAM plugin {plugin}: {}", e.msg),
        )
    })?;
    // Without a netns (a DEL after the container is gone) no Attach is passed: the
    // plugin inherits our own CNI_CONTAINERID, CNI_IFNAME and CNI_ARGS.
    let printed = runner.invoke(plugin, command, attach.as_ref(), &conf)?;
    if command != "ADD" {
        return Ok(None);
    }
    let value = printed.ok_or_else(|| {
        CniError::new(
            code::IPAM_DELEGATE,
            format!("IPAM plugin {plugin} printed no JSON result"),
        )
    })?;
    CniResult::from_json(&value).map(Some)
}

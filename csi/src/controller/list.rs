//! ListVolumes, GetCapacity and ControllerGetCapabilities.

use crate::capability;
use crate::driver::Driver;
use crate::error::Result;
use crate::proto::{
    ControllerGetCapabilitiesResponse, ControllerServiceCapability, GetCapacityRequest,
    GetCapacityResponse, ListVolumesRequest, ListVolumesResponse,
    controller_service_capability::{self, rpc::Type as Rpc},
    list_volumes_response::Entry,
};

use super::{check_parameters, page};

/// What the controller does (spec.md, ControllerGetCapabilities). No
/// PUBLISH_UNPUBLISH: a directory needs no attach step.
const CAPABILITIES: &[Rpc] = &[
    Rpc::CreateDeleteVolume,
    Rpc::ListVolumes,
    Rpc::GetCapacity,
    Rpc::CreateDeleteSnapshot,
    Rpc::ListSnapshots,
    Rpc::CloneVolume,
    Rpc::ExpandVolume,
    Rpc::SingleNodeMultiWriter,
];

impl Driver {
    /// ListVolumes, in id (creation) order; the token is the next page's first id.
    pub fn list_volumes(&self, req: ListVolumesRequest) -> Result<ListVolumesResponse> {
        let state = self.lock();
        let items = state.volumes.iter().map(|(id, v)| (id.clone(), v));
        let (entries, next_token) = page(items, req.max_entries, &req.starting_token, "vol")?;
        Ok(ListVolumesResponse {
            entries: entries
                .into_iter()
                .map(|(id, vol)| Entry {
                    volume: Some(self.volume_message(&id, vol)),
                    status: None,
                })
                .collect(),
            next_token,
        })
    }

    /// GetCapacity: the bytes not yet promised to a volume. A topology or capability
    /// this driver cannot serve has none.
    pub fn get_capacity(&self, req: GetCapacityRequest) -> Result<GetCapacityResponse> {
        check_parameters(&req.parameters)?;
        let servable = req.volume_capabilities.is_empty()
            || capability::unsupported(&req.volume_capabilities)?.is_none();
        let here = req
            .accessible_topology
            .as_ref()
            .is_none_or(|t| self.is_this_node(t));
        let available = if servable && here {
            let total = self.total_capacity()?;
            (total - self.lock().provisioned_bytes()).max(0)
        } else {
            0
        };
        Ok(GetCapacityResponse {
            available_capacity: available,
            maximum_volume_size: Some(available),
            minimum_volume_size: Some(0),
        })
    }

    /// ControllerGetCapabilities.
    pub fn controller_capabilities(&self) -> ControllerGetCapabilitiesResponse {
        ControllerGetCapabilitiesResponse {
            capabilities: CAPABILITIES
                .iter()
                .map(|rpc| ControllerServiceCapability {
                    r#type: Some(controller_service_capability::Type::Rpc(
                        controller_service_capability::Rpc {
                            r#type: *rpc as i32,
                        },
                    )),
                })
                .collect(),
        }
    }
}

//! The gRPC face of the driver: the Identity, Controller and Node services tonic
//! serves. Each call runs the driver's synchronous method on a blocking thread (they
//! do file system work and mount syscalls) and maps its error to the spec's code.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::driver::{DRIVER_NAME, Driver};
use crate::error::Result;
use crate::proto::{
    self, controller_server::Controller, identity_server::Identity, node_server::Node,
};

/// The three CSI services over one [`Driver`].
#[derive(Debug, Clone)]
pub struct Service {
    driver: Arc<Driver>,
}

impl Service {
    /// Serves `driver`.
    pub fn new(driver: Arc<Driver>) -> Self {
        Self { driver }
    }

    async fn run<T, R>(
        &self,
        method: &'static str,
        req: Request<T>,
        call: fn(&Driver, T) -> Result<R>,
    ) -> std::result::Result<Response<R>, Status>
    where
        T: Send + 'static,
        R: Send + 'static,
    {
        let driver = Arc::clone(&self.driver);
        let req = req.into_inner();
        let result = tokio::task::spawn_blocking(move || call(&driver, req))
            .await
            .map_err(|e| Status::internal(format!("{method}: {e}")))?;
        match result {
            Ok(resp) => {
                tracing::debug!(method, "ok");
                Ok(Response::new(resp))
            }
            Err(err) => {
                tracing::warn!(method, code = ?err.code(), %err, "call failed");
                Err(err.into())
            }
        }
    }
}

/// Implements service `$trait`: each listed method calls the driver method of the same
/// name; the rest are written out. (The `async_trait` attribute sits inside the macro so
/// it sees the methods the macro makes.)
macro_rules! service {
    ($trait:ident { $($method:ident: $req:ty => $resp:ty;)* } $($rest:tt)*) => {
        #[tonic::async_trait]
        impl $trait for Service {
            $(
                async fn $method(
                    &self,
                    request: Request<$req>,
                ) -> std::result::Result<Response<$resp>, Status> {
                    self.run(stringify!($method), request, Driver::$method).await
                }
            )*
            $($rest)*
        }
    };
}

#[tonic::async_trait]
impl Identity for Service {
    async fn get_plugin_info(
        &self,
        _: Request<proto::GetPluginInfoRequest>,
    ) -> std::result::Result<Response<proto::GetPluginInfoResponse>, Status> {
        Ok(Response::new(proto::GetPluginInfoResponse {
            name: DRIVER_NAME.to_owned(),
            vendor_version: env!("CARGO_PKG_VERSION").to_owned(),
            // Opaque to the CO; says how sizes are enforced on this node.
            manifest: [("quota".to_owned(), self.driver.quota().mode())].into(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<proto::GetPluginCapabilitiesRequest>,
    ) -> std::result::Result<Response<proto::GetPluginCapabilitiesResponse>, Status> {
        use proto::plugin_capability::{self, Type, service, volume_expansion};
        let service = |t: service::Type| proto::PluginCapability {
            r#type: Some(Type::Service(plugin_capability::Service {
                r#type: t as i32,
            })),
        };
        Ok(Response::new(proto::GetPluginCapabilitiesResponse {
            capabilities: vec![
                service(service::Type::ControllerService),
                service(service::Type::VolumeAccessibilityConstraints),
                proto::PluginCapability {
                    r#type: Some(Type::VolumeExpansion(plugin_capability::VolumeExpansion {
                        r#type: volume_expansion::Type::Online as i32,
                    })),
                },
            ],
        }))
    }

    async fn probe(
        &self,
        _: Request<proto::ProbeRequest>,
    ) -> std::result::Result<Response<proto::ProbeResponse>, Status> {
        // "Plugin not healthy" is FAILED_PRECONDITION (spec.md, Probe errors).
        let volumes = self.driver.root().join("volumes");
        match tokio::fs::metadata(&volumes).await {
            Ok(m) if m.is_dir() => Ok(Response::new(proto::ProbeResponse { ready: Some(true) })),
            Ok(_) => Err(Status::failed_precondition(format!(
                "{} is not a directory",
                volumes.display()
            ))),
            Err(e) => Err(Status::failed_precondition(format!(
                "{}: {e}",
                volumes.display()
            ))),
        }
    }
}

service! {
    Controller {
        create_volume: proto::CreateVolumeRequest => proto::CreateVolumeResponse;
        delete_volume: proto::DeleteVolumeRequest => proto::DeleteVolumeResponse;
        validate_volume_capabilities: proto::ValidateVolumeCapabilitiesRequest => proto::ValidateVolumeCapabilitiesResponse;
        list_volumes: proto::ListVolumesRequest => proto::ListVolumesResponse;
        get_capacity: proto::GetCapacityRequest => proto::GetCapacityResponse;
        create_snapshot: proto::CreateSnapshotRequest => proto::CreateSnapshotResponse;
        delete_snapshot: proto::DeleteSnapshotRequest => proto::DeleteSnapshotResponse;
        list_snapshots: proto::ListSnapshotsRequest => proto::ListSnapshotsResponse;
        controller_expand_volume: proto::ControllerExpandVolumeRequest => proto::ControllerExpandVolumeResponse;
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<proto::ControllerGetCapabilitiesRequest>,
    ) -> std::result::Result<Response<proto::ControllerGetCapabilitiesResponse>, Status> {
        Ok(Response::new(self.driver.controller_capabilities()))
    }

    async fn controller_publish_volume(
        &self,
        _: Request<proto::ControllerPublishVolumeRequest>,
    ) -> std::result::Result<Response<proto::ControllerPublishVolumeResponse>, Status> {
        Err(Status::unimplemented("berth-csi has no PUBLISH_UNPUBLISH_VOLUME: directories need no attach"))
    }

    async fn controller_unpublish_volume(
        &self,
        _: Request<proto::ControllerUnpublishVolumeRequest>,
    ) -> std::result::Result<Response<proto::ControllerUnpublishVolumeResponse>, Status> {
        Err(Status::unimplemented("berth-csi has no PUBLISH_UNPUBLISH_VOLUME: directories need no attach"))
    }

    async fn controller_get_volume(
        &self,
        _: Request<proto::ControllerGetVolumeRequest>,
    ) -> std::result::Result<Response<proto::ControllerGetVolumeResponse>, Status> {
        Err(Status::unimplemented("berth-csi has no GET_VOLUME capability"))
    }

    async fn controller_modify_volume(
        &self,
        _: Request<proto::ControllerModifyVolumeRequest>,
    ) -> std::result::Result<Response<proto::ControllerModifyVolumeResponse>, Status> {
        Err(Status::unimplemented("berth-csi has no MODIFY_VOLUME capability"))
    }
}

service! {
    Node {
        node_stage_volume: proto::NodeStageVolumeRequest => proto::NodeStageVolumeResponse;
        node_unstage_volume: proto::NodeUnstageVolumeRequest => proto::NodeUnstageVolumeResponse;
        node_publish_volume: proto::NodePublishVolumeRequest => proto::NodePublishVolumeResponse;
        node_unpublish_volume: proto::NodeUnpublishVolumeRequest => proto::NodeUnpublishVolumeResponse;
        node_get_volume_stats: proto::NodeGetVolumeStatsRequest => proto::NodeGetVolumeStatsResponse;
        node_expand_volume: proto::NodeExpandVolumeRequest => proto::NodeExpandVolumeResponse;
    }

    async fn node_get_capabilities(
        &self,
        _: Request<proto::NodeGetCapabilitiesRequest>,
    ) -> std::result::Result<Response<proto::NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(self.driver.node_capabilities()))
    }

    async fn node_get_info(
        &self,
        _: Request<proto::NodeGetInfoRequest>,
    ) -> std::result::Result<Response<proto::NodeGetInfoResponse>, Status> {
        Ok(Response::new(self.driver.node_info()))
    }
}

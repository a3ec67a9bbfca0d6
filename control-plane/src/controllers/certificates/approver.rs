//! The CSR approver (kube-controller-manager's `csrapproving`,
//! `pkg/controller/certificates/approver/sarapprove.go`): a pending request for
//! `kubernetes.io/kube-apiserver-client-kubelet` that is a valid node client request
//! is approved when its requester may `create` `certificatesigningrequests/nodeclient`
//! (a new node: bootstrappers hold it) or, when the requester is the node named in the
//! request, `certificatesigningrequests/selfnodeclient` (a node renewing) — asked
//! through a SubjectAccessReview for the identity recorded in the request's spec.
//! berth also approves a `kubernetes.io/kubelet-serving` request (the agents' kubelet
//! API certificate) filed by the node it names (`system:node:<name>` in
//! `system:nodes`), or by someone who may approve that signer themselves — upstream
//! leaves these to the cluster's operator. Anything else is left for a person
//! (`kubectl certificate approve`).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::requests;
use crate::apiserver::admission::certificates::{GROUP, KUBELET_CLIENT, KUBELET_SERVING};
use crate::client::Informers;
use crate::controllers::queue::Queue;

pub fn start(
    client: Client,
    informers: &mut Informers,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let queue = Queue::new();
    let csrs = informers.add(Api::<CertificateSigningRequest>::all(client.clone()), {
        let q = queue.clone();
        move |csr: &CertificateSigningRequest| q.add(csr.name_any())
    });
    async move {
        let _ = csrs.wait_until_ready().await;
        let ctl = Arc::new((client, csrs));
        queue
            .work("csrapproving", move |name| {
                let ctl = ctl.clone();
                async move { sync(&ctl.0, &ctl.1, &name).await }
            })
            .await;
    }
}

/// Whether the requester of `csr` may `create certificatesigningrequests/<sub>`.
async fn allowed(
    client: &Client,
    csr: &CertificateSigningRequest,
    sub: &str,
) -> Result<bool, kube::Error> {
    review(
        client,
        csr,
        ResourceAttributes {
            group: Some(GROUP.into()),
            resource: Some("certificatesigningrequests".into()),
            subresource: Some(sub.into()),
            verb: Some("create".into()),
            ..ResourceAttributes::default()
        },
    )
    .await
}

/// A SubjectAccessReview for the requester of `csr`.
async fn review(
    client: &Client,
    csr: &CertificateSigningRequest,
    attributes: ResourceAttributes,
) -> Result<bool, kube::Error> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: csr.spec.username.clone(),
            uid: csr.spec.uid.clone(),
            groups: csr.spec.groups.clone(),
            extra: csr.spec.extra.clone(),
            resource_attributes: Some(attributes),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

async fn sync(
    client: &Client,
    csrs: &Store<CertificateSigningRequest>,
    name: &str,
) -> Result<Option<Duration>, kube::Error> {
    let Some(csr) = csrs.get(&ObjectRef::new(name)) else {
        return Ok(None);
    };
    let decided = csr
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| matches!(c.type_.as_str(), "Approved" | "Denied" | "Failed"))
        });
    if decided {
        return Ok(None);
    }
    let Ok(req) = requests::parse(&csr) else {
        return Ok(None);
    };
    let usages = csr.spec.usages.clone().unwrap_or_default();
    let own = csr.spec.username.as_deref() == Some(req.common_name.as_str());
    let message = match csr.spec.signer_name.as_str() {
        KUBELET_CLIENT => {
            if requests::kubelet_client(&req, &usages).is_err() {
                return Ok(None);
            }
            let sub = if own { "selfnodeclient" } else { "nodeclient" };
            if !allowed(client, &csr, sub).await? {
                return Ok(None);
            }
            "Auto approving kubelet client certificate after SubjectAccessReview."
        }
        KUBELET_SERVING => {
            if requests::kubelet_serving(&req, &usages).is_err() {
                return Ok(None);
            }
            let node = own
                && csr
                    .spec
                    .groups
                    .iter()
                    .flatten()
                    .any(|g| g == crate::apiserver::authz::node::NODES_GROUP);
            let approver = review(
                client,
                &csr,
                ResourceAttributes {
                    group: Some(GROUP.into()),
                    resource: Some("signers".into()),
                    name: Some(KUBELET_SERVING.into()),
                    verb: Some("approve".into()),
                    ..ResourceAttributes::default()
                },
            );
            if !node && !approver.await? {
                return Ok(None);
            }
            "Auto approving kubelet serving certificate requested by its node."
        }
        _ => return Ok(None),
    };
    let mut conditions = csr
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .map(|c| serde_json::to_value(c).unwrap_or_default())
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default();
    conditions.push(json!({
        "type": "Approved", "status": "True", "reason": "AutoApproved",
        "message": message,
        "lastUpdateTime": crate::apiserver::object::now(),
        "lastTransitionTime": crate::apiserver::object::now(),
    }));
    let patch = json!({"status": {"conditions": conditions}});
    let api = Api::<CertificateSigningRequest>::all(client.clone());
    match crate::controllers::update::update(
        &api,
        &*csr,
        crate::controllers::update::Part::Approval,
        crate::controllers::update::merge(patch),
    )
    .await
    {
        Ok(None) => Ok(None),
        Ok(Some(_)) => {
            tracing::info!(csr = name, "approved node client certificate");
            Ok(None)
        }
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

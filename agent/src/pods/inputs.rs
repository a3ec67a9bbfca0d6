//! What a pod's containers need from the apiserver besides the Pod: the ConfigMaps and
//! Secrets its env and volumes name, service account tokens for projected volumes, and
//! the Services whose addresses become environment variables.
//! Fetched before each sync, so updated ConfigMaps and Secrets reach running pods.

use std::collections::BTreeMap;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};

#[derive(Debug, Clone, Default)]
pub struct Inputs {
    config_maps: BTreeMap<String, Option<ConfigMap>>,
    secrets: BTreeMap<String, Option<Secret>>,
    /// Projected service account tokens by (volume name, path).
    tokens: BTreeMap<(String, String), String>,
    /// The Services the kubelet turns into `<NAME>_SERVICE_HOST`… variables: the
    /// pod's namespace's (with `enableServiceLinks`) and `default/kubernetes`.
    pub services: Vec<Service>,
    /// The claim and bound volume behind each `persistentVolumeClaim` and `ephemeral`
    /// volume, by volume name, or why they are not usable yet.
    pub claims: BTreeMap<String, Result<Claim, String>>,
    /// Why something could not be fetched (other than not found).
    pub errors: Vec<String>,
}

/// A pod's claim and the PersistentVolume it is bound to.
#[derive(Debug, Clone)]
pub struct Claim {
    pub claim: PersistentVolumeClaim,
    pub volume: PersistentVolume,
}

impl Inputs {
    pub fn config_map(&self, name: &str) -> Option<&ConfigMap> {
        self.config_maps.get(name).and_then(Option::as_ref)
    }

    pub fn secret(&self, name: &str) -> Option<&Secret> {
        self.secrets.get(name).and_then(Option::as_ref)
    }

    pub fn claim(&self, volume: &str) -> Result<&Claim, String> {
        match self.claims.get(volume) {
            Some(Ok(c)) => Ok(c),
            Some(Err(e)) => Err(e.clone()),
            None => Err("the claim was not fetched yet".into()),
        }
    }

    pub fn token(&self, volume: &str, path: &str) -> Option<&str> {
        self.tokens
            .get(&(volume.to_owned(), path.to_owned()))
            .map(String::as_str)
    }
}

/// The names of ConfigMaps and Secrets `pod` refers to.
fn references(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let mut cms = Vec::new();
    let mut secrets = Vec::new();
    let Some(spec) = &pod.spec else {
        return (cms, secrets);
    };
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        for f in c.env_from.iter().flatten() {
            if let Some(r) = &f.config_map_ref {
                cms.push(r.name.clone());
            }
            if let Some(r) = &f.secret_ref {
                secrets.push(r.name.clone());
            }
        }
        for e in c.env.iter().flatten() {
            if let Some(from) = &e.value_from {
                if let Some(r) = &from.config_map_key_ref {
                    cms.push(r.name.clone());
                }
                if let Some(r) = &from.secret_key_ref {
                    secrets.push(r.name.clone());
                }
            }
        }
    }
    // Registry credentials for the image pulls (a missing one is skipped, as the
    // kubelet pulls without it).
    secrets.extend(
        spec.image_pull_secrets
            .iter()
            .flatten()
            .map(|r| r.name.clone()),
    );
    for v in spec.volumes.iter().flatten() {
        if let Some(cm) = &v.config_map {
            cms.push(cm.name.clone());
        }
        if let Some(s) = &v.secret
            && let Some(name) = &s.secret_name
        {
            secrets.push(name.clone());
        }
        if let Some(p) = &v.projected {
            for src in p.sources.iter().flatten() {
                if let Some(cm) = &src.config_map {
                    cms.push(cm.name.clone());
                }
                if let Some(s) = &src.secret {
                    secrets.push(s.name.clone());
                }
            }
        }
    }
    cms.sort();
    cms.dedup();
    secrets.sort();
    secrets.dedup();
    (cms, secrets)
}

/// Fetches everything `pod` refers to.
pub async fn fetch(client: &Client, pod: &Pod) -> Inputs {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let (cms, secrets) = references(pod);
    let mut inputs = Inputs::default();
    let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    for name in cms {
        match cm_api.get_opt(&name).await {
            Ok(found) => {
                inputs.config_maps.insert(name, found);
            }
            Err(e) => inputs.errors.push(format!("configmap {name:?}: {e}")),
        }
    }
    let secret_api: Api<Secret> = Api::namespaced(client.clone(), ns);
    for name in secrets {
        match secret_api.get_opt(&name).await {
            Ok(found) => {
                inputs.secrets.insert(name, found);
            }
            Err(e) => inputs.errors.push(format!("secret {name:?}: {e}")),
        }
    }
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    if links {
        match Api::<Service>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
        {
            Ok(list) => inputs.services.extend(list.items),
            Err(e) => inputs.errors.push(format!("services: {e}")),
        }
    }
    // The master service is always there (`masterServices` in the kubelet).
    if !(links && ns == "default") {
        match Api::<Service>::namespaced(client.clone(), "default")
            .get_opt("kubernetes")
            .await
        {
            Ok(found) => inputs.services.extend(found),
            Err(e) => inputs
                .errors
                .push(format!("service \"default/kubernetes\": {e}")),
        }
    }
    fetch_claims(client, pod, &mut inputs).await;
    let sa_api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            let Some(t) = &src.service_account_token else {
                continue;
            };
            let req = TokenRequest {
                spec: Some(TokenRequestSpec {
                    audiences: Some(t.audience.iter().cloned().collect()),
                    expiration_seconds: Some(t.expiration_seconds.unwrap_or(3607)),
                    bound_object_ref: Some(BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: pod.metadata.name.clone(),
                        uid: pod.metadata.uid.clone(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            match sa_api
                .create_token_request(&sa, &PostParams::default(), &req)
                .await
            {
                Ok(resp) => {
                    let token = resp.status.and_then(|s| s.token).unwrap_or_default();
                    inputs
                        .tokens
                        .insert((v.name.clone(), t.path.clone()), token);
                }
                Err(e) => inputs
                    .errors
                    .push(format!("token for service account {sa:?}: {e}")),
            }
        }
    }
    inputs
}

/// The claim a volume of `pod` mounts: a `persistentVolumeClaim`'s, or the one the
/// ephemeral volume controller made for an `ephemeral` volume (`<pod>-<volume>`).
pub fn claim_name(pod: &Pod, v: &k8s_openapi::api::core::v1::Volume) -> Option<String> {
    if let Some(c) = &v.persistent_volume_claim {
        return Some(c.claim_name.clone());
    }
    v.ephemeral.as_ref().map(|_| {
        format!(
            "{}-{}",
            pod.metadata.name.as_deref().unwrap_or_default(),
            v.name
        )
    })
}

/// Fetches each claim of `pod` and the volume it is bound to, with the kubelet's
/// reasons when one is not usable.
async fn fetch_claims(client: &Client, pod: &Pod, inputs: &mut Inputs) {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let Some(name) = claim_name(pod, v) else {
            continue;
        };
        let result = async {
            let claim = match claims.get_opt(&name).await {
                Ok(Some(c)) => c,
                Ok(None) => return Err(format!("persistentvolumeclaim \"{name}\" not found")),
                Err(e) => return Err(format!("error processing PVC {ns}/{name}: {e}")),
            };
            if v.ephemeral.is_some() {
                let owned = claim.metadata.owner_references.iter().flatten().any(|o| {
                    o.controller == Some(true) && Some(&o.uid) == pod.metadata.uid.as_ref()
                });
                if !owned {
                    return Err(format!(
                        "PVC {ns}/{name} was not created for pod {ns}/{} (pod is not owner)",
                        pod.metadata.name.as_deref().unwrap_or_default()
                    ));
                }
            }
            let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
            let volume_name = claim
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.clone())
                .unwrap_or_default();
            if !bound || volume_name.is_empty() {
                return Err(format!("error processing PVC {ns}/{name}: PVC is not bound"));
            }
            match volumes.get(&volume_name).await {
                Ok(volume) => Ok(Claim { claim, volume }),
                Err(e) => Err(format!(
                    "error processing PVC {ns}/{name}: failed to fetch PV {volume_name} from API server: {e}"
                )),
            }
        }
        .await;
        inputs.claims.insert(v.name.clone(), result);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn image_pull_secrets_are_fetched_with_the_others() {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "spec": {
                "imagePullSecrets": [{"name": "pull"}, {"name": "env"}],
                "containers": [{
                    "name": "c",
                    "env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "env", "key": "a"}}}]
                }]
            }
        }))
        .expect("a pod");
        assert_eq!(super::references(&pod).1, ["env", "pull"]);
    }
}

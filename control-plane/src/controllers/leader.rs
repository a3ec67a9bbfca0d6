//! Leader election through a coordination.k8s.io Lease, as client-go does it: a
//! candidate takes the Lease when it is free or its holder has not renewed it within
//! `leaseDurationSeconds`, the leader renews it every retry period, and a leader that
//! cannot renew within the renew deadline stops its work before anyone else may take
//! over. Every write is a compare-and-swap on the Lease's resourceVersion, so two
//! candidates never both win.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;

#[derive(Debug, Clone)]
pub struct Election {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Election {
    /// kube-controller-manager's defaults: 15 s lease, 10 s renew deadline, 2 s retry.
    pub fn new(name: &str, identity: &str) -> Self {
        Election {
            namespace: "kube-system".into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Takes or renews the Lease; `true` while this candidate holds it.
    pub async fn try_acquire_or_renew(&self, client: &Client) -> Result<bool, kube::Error> {
        let api: Api<Lease> = Api::namespaced(client.clone(), &self.namespace);
        let now = jiff::Timestamp::now();
        let secs = i32::try_from(self.lease_duration.as_secs()).unwrap_or(15);
        let Some(mut lease) = api.get_opt(&self.name).await? else {
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": secs,
                    "acquireTime": MicroTime(now), "renewTime": MicroTime(now),
                    "leaseTransitions": 0},
            }))
            .map_err(kube::Error::SerdeError)?;
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let mine = holder == self.identity;
        if !mine && !holder.is_empty() {
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(secs));
            let renewed = spec.renew_time.as_ref().map(|t| t.0);
            if renewed.is_some_and(|r| r + jiff::SignedDuration::from_secs(duration) > now) {
                return Ok(false);
            }
        }
        if !mine {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.holder_identity = Some(self.identity.clone());
        }
        spec.lease_duration_seconds = Some(secs);
        spec.renew_time = Some(MicroTime(now));
        match api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Runs `work` whenever this candidate leads, forever: it is started on winning the
    /// Lease and dropped (every watch and loop in it stopped) when renewal fails for
    /// the renew deadline.
    pub async fn run<F, Fut>(&self, client: Client, mut work: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()>,
    {
        loop {
            loop {
                match self.try_acquire_or_renew(&client).await {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(err) => tracing::debug!(%err, lease = %self.name, "leader election"),
                }
                tokio::time::sleep(self.retry_period).await;
            }
            tracing::info!(lease = %self.name, identity = %self.identity, "became leader");
            let mut last_renew = Instant::now();
            let renew = async {
                loop {
                    tokio::time::sleep(self.retry_period).await;
                    match self.try_acquire_or_renew(&client).await {
                        Ok(true) => last_renew = Instant::now(),
                        Ok(false) => return,
                        Err(err) => tracing::warn!(%err, lease = %self.name, "lease renewal"),
                    }
                    if last_renew.elapsed() > self.renew_deadline {
                        return;
                    }
                }
            };
            let work = Box::pin(work());
            tokio::select! {
                _ = work => {}
                _ = renew => {}
            }
            tracing::warn!(lease = %self.name, identity = %self.identity, "leadership lost; stopped");
        }
    }
}

/// A candidate identity: host name and a random suffix, like client-go's.
pub fn identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "berth".into());
    format!("{host}_{}", crate::apiserver::object::new_uid())
}

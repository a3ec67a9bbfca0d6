//! Whether etcd's watch progress notifications can be trusted: one asked for with
//! `RequestProgress` must come after every event it covers, or a watch cache that takes
//! it as "current up to revision N" answers without those events. etcd sends it ahead of
//! them up to 3.4.30 and 3.5.12 (etcd#15220 and its follow-ups), so, as kube-apiserver's
//! `FeatureSupportChecker` does for `RequestWatchProgress`, berth asks every member for
//! its version at connect and relies on progress notifications only when the members
//! that answer are all 3.4.31+, 3.5.13+ or newer.
//!
//! Entry point: [`supported`].

use std::time::Duration;

use etcd_client::ConnectOptions;

/// How long one member's version may take to arrive.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether every member of `endpoints` that tells its version sends progress
/// notifications in order (at least one must tell). A member that does not answer is
/// left out, as kube-apiserver leaves it out; one too old is enough to say no.
pub(super) async fn supported(endpoints: &[String], connect: &ConnectOptions) -> bool {
    let versions =
        futures_util::future::join_all(endpoints.iter().map(|e| version(e, connect))).await;
    let known: Vec<(&String, String)> = endpoints
        .iter()
        .zip(versions)
        .filter_map(|(e, v)| Some((e, v?)))
        .collect();
    let too_old: Vec<String> = known
        .iter()
        .filter(|(_, v)| fixed(v) != Some(true))
        .map(|(e, v)| format!("{e} ({v})"))
        .collect();
    if known.is_empty() {
        tracing::warn!(
            "no etcd member told its version; watches ask for no progress notifications \
             (a consistent read after a write outside --etcd-prefix reads etcd itself once \
             its wait for the watch cache times out)"
        );
        return false;
    }
    if !too_old.is_empty() {
        tracing::warn!(
            members = %too_old.join(", "),
            "etcd's requested watch progress notifications are trusted from 3.4.31 and \
             3.5.13 only (etcd#15220); without them a consistent read waits for the watch \
             cache through writes under --etcd-prefix alone, and after a write elsewhere in \
             this etcd it reads etcd itself once the wait times out"
        );
        return false;
    }
    true
}

/// The version `endpoint` reports, if it answers in time.
async fn version(endpoint: &String, connect: &ConnectOptions) -> Option<String> {
    let ask = async {
        let mut client =
            etcd_client::Client::connect([endpoint.as_str()], Some(connect.clone())).await?;
        let status = client.status().await?;
        Ok::<_, etcd_client::Error>(status.version().to_owned())
    };
    match tokio::time::timeout(STATUS_TIMEOUT, ask).await {
        Ok(Ok(version)) => Some(version),
        Ok(Err(err)) => {
            tracing::debug!(%endpoint, %err, "no etcd version");
            None
        }
        Err(_) => {
            tracing::debug!(%endpoint, "no etcd version in time");
            None
        }
    }
}

/// Whether etcd `version` (`3.5.13`, `3.4.31-rc.0`) orders requested progress
/// notifications after events; `None` when it does not parse.
fn fixed(version: &str) -> Option<bool> {
    let mut parts = version.split(['.', '-', '+']);
    let mut number = || parts.next()?.parse::<u64>().ok();
    let (major, minor, patch) = (number()?, number()?, number()?);
    Some(match (major, minor) {
        (3, 4) => patch >= 31,
        (3, 5) => patch >= 13,
        (3, minor) => minor >= 6,
        (major, _) => major > 3,
    })
}

#[cfg(test)]
mod tests {
    use super::fixed;

    #[test]
    fn versions_with_the_progress_fix() {
        for (version, want) in [
            ("3.4.23", Some(false)),
            ("3.4.30", Some(false)),
            ("3.4.31", Some(true)),
            ("3.5.12", Some(false)),
            ("3.5.13", Some(true)),
            ("3.5.21", Some(true)),
            ("3.6.0", Some(true)),
            ("3.6.0-rc.1", Some(true)),
            ("3.3.27", Some(false)),
            ("4.0.0", Some(true)),
            ("", None),
            ("3.x", None),
        ] {
            assert_eq!(fixed(version), want, "etcd {version:?}");
        }
    }
}

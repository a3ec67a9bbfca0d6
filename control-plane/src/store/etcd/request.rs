//! One request to etcd: its deadline, sending it again when it never left (a dead
//! member), and what its failure means for the store ([`StoreError`]).

use std::time::Duration;

use crate::store::StoreError;

/// Maps a failed etcd request. The callers turn the MVCC answers into their
/// [`StoreError`] with the revision or lease they asked for.
#[derive(Debug)]
pub(crate) enum Failure {
    Compacted,
    FutureRevision,
    LeaseNotFound,
    Store(StoreError),
}

pub(super) fn classify(err: etcd_client::Error, endpoints: &str) -> Failure {
    use etcd_client::Error as E;
    use tonic::Code;
    match err {
        E::GRpcStatus(status) => {
            let message = status.message();
            if message.contains("required revision has been compacted") {
                return Failure::Compacted;
            }
            if message.contains("required revision is a future revision") {
                return Failure::FutureRevision;
            }
            if message.contains("requested lease not found") {
                return Failure::LeaseNotFound;
            }
            let what = format!("etcd ({endpoints}): {message}");
            Failure::Store(match status.code() {
                // etcd's "request timed out" and "leader changed" leave the outcome
                // of a write unknown.
                Code::DeadlineExceeded => StoreError::Timeout(what),
                Code::Unavailable
                    if message.contains("timed out") || message.contains("leader changed") =>
                {
                    StoreError::Timeout(what)
                }
                Code::Unavailable | Code::Cancelled | Code::Aborted | Code::ResourceExhausted => {
                    StoreError::Unavailable(what)
                }
                // tonic reports a connection that failed or broke as `Unknown`.
                Code::Unknown
                    if std::error::Error::source(&status).is_some()
                        || message.contains("transport error") =>
                {
                    StoreError::Unavailable(what)
                }
                _ => StoreError::Backend(what),
            })
        }
        E::TransportError(e) => {
            Failure::Store(StoreError::Unavailable(format!("etcd ({endpoints}): {e}")))
        }
        E::IoError(e) => {
            Failure::Store(StoreError::Unavailable(format!("etcd ({endpoints}): {e}")))
        }
        other => Failure::Store(StoreError::Backend(format!("etcd ({endpoints}): {other}"))),
    }
}

/// Whether a request failed before it left: no connection to the member the client
/// picked. Such a request is sent again — even a write, which cannot have been
/// applied — because the client spreads requests over every endpoint, the dead
/// member's too, and finds out it is gone only when it tries to connect.
pub(super) fn never_sent(err: &etcd_client::Error) -> bool {
    let etcd_client::Error::GRpcStatus(status) = err else {
        return false;
    };
    if status.message().contains("tcp connect error") {
        return true;
    }
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.to_string().contains("tcp connect error")
            || err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// Runs a request to etcd (`request` makes it, again for each attempt) within
/// `timeout`, sending it again while it fails before it was sent ([`never_sent`]).
pub(crate) async fn call<T, F, Fut>(
    endpoints: &str,
    what: &str,
    timeout: Duration,
    request: F,
) -> std::result::Result<T, Failure>
where
    F: Fn() -> Fut,
    Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        match tokio::time::timeout_at(deadline, request()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(err)) if never_sent(&err) && tokio::time::Instant::now() + pause < deadline => {
                tracing::debug!(%err, what, "etcd member unreachable; sending to another");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            Ok(Err(err)) => return Err(classify(err, endpoints)),
            Err(_) => {
                return Err(Failure::Store(StoreError::Timeout(format!(
                    "etcd ({endpoints}) did not answer {what} within {} s",
                    timeout.as_secs()
                ))));
            }
        }
    }
}

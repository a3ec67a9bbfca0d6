//! The CSI Controller service (spec.md, "Controller Service RPC"): volumes are created
//! and deleted as directories on this node, snapshots are copies of them. One verb
//! group a file: `volumes.rs` (create, delete, expand, validate), `snapshots.rs`,
//! `list.rs` (ListVolumes, GetCapacity, capabilities and the pagination they share).

mod list;
mod snapshots;
mod volumes;

use std::collections::HashMap;

use crate::error::{Error, Result};

/// Parameter keys the external-provisioner family may pass through; they are accepted
/// and ignored (the `csi.storage.k8s.io/` prefix is reserved for them).
const RESERVED_PREFIX: &str = "csi.storage.k8s.io/";

/// berth-csi takes no StorageClass parameters: any other key is a mistake worth naming.
fn check_parameters(parameters: &HashMap<String, String>) -> Result<()> {
    let mut unknown: Vec<&str> = parameters
        .keys()
        .map(String::as_str)
        .filter(|k| !k.starts_with(RESERVED_PREFIX))
        .collect();
    unknown.sort_unstable();
    match unknown.first() {
        None => Ok(()),
        Some(key) => Err(Error::InvalidArgument(format!(
            "unknown parameter {key:?}: berth-csi takes no StorageClass parameters"
        ))),
    }
}

/// Validates a `CapacityRange` and returns `(required_bytes, limit_bytes)`, 0 meaning
/// unset.
fn capacity_range(range: Option<crate::proto::CapacityRange>) -> Result<(i64, i64)> {
    let Some(range) = range else {
        return Ok((0, 0));
    };
    if range.required_bytes < 0 || range.limit_bytes < 0 {
        return Err(Error::InvalidArgument(
            "capacity_range: required_bytes and limit_bytes must not be negative".into(),
        ));
    }
    if range.limit_bytes > 0 && range.required_bytes > range.limit_bytes {
        return Err(Error::InvalidArgument(format!(
            "capacity_range: required_bytes {} is more than limit_bytes {}",
            range.required_bytes, range.limit_bytes
        )));
    }
    Ok((range.required_bytes, range.limit_bytes))
}

/// Whether an existing `capacity` satisfies `(required, limit)`.
fn fits(capacity: i64, required: i64, limit: i64) -> bool {
    capacity >= required && (limit == 0 || capacity <= limit)
}

/// One page of `items` (sorted by id) starting at `token`, at most `max_entries` long
/// (0: all), and the token of the next page ("" at the end). ABORTED for a token this
/// driver could not have handed out (spec.md, ListVolumes errors).
fn page<T>(
    items: impl Iterator<Item = (String, T)>,
    max_entries: i32,
    token: &str,
    prefix: &str,
) -> Result<(Vec<(String, T)>, String)> {
    if max_entries < 0 {
        return Err(Error::InvalidArgument(
            "max_entries must not be negative".into(),
        ));
    }
    if !token.is_empty() && !crate::driver::valid_id(prefix, token) {
        return Err(Error::Aborted(format!(
            "starting_token {token:?} is not a token this driver returned"
        )));
    }
    let mut rest = items.filter(|(id, _)| token.is_empty() || id.as_str() >= token);
    let limit = if max_entries == 0 {
        usize::MAX
    } else {
        max_entries as usize
    };
    let out: Vec<(String, T)> = rest.by_ref().take(limit).collect();
    let next = rest.next().map(|(id, _)| id).unwrap_or_default();
    Ok((out, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_ranges() {
        assert_eq!(capacity_range(None).expect("unset"), (0, 0));
        let r = |required_bytes, limit_bytes| {
            capacity_range(Some(crate::proto::CapacityRange {
                required_bytes,
                limit_bytes,
            }))
        };
        assert!(matches!(r(-1, 0), Err(Error::InvalidArgument(_))));
        assert!(matches!(r(10, 5), Err(Error::InvalidArgument(_))));
        assert_eq!(r(5, 10).expect("valid"), (5, 10));
        assert!(fits(10, 5, 10) && fits(10, 0, 0) && !fits(4, 5, 0) && !fits(11, 5, 10));
    }

    #[test]
    fn pages_walk_ids_and_reject_foreign_tokens() {
        let ids: Vec<String> = (0..5)
            .map(|_| crate::driver::new_id("vol").expect("id"))
            .collect();
        let items = || ids.iter().map(|id| (id.clone(), ()));
        let (first, next) = page(items(), 2, "", "vol").expect("first page");
        assert_eq!(first.len(), 2);
        assert_eq!(next, ids[2]);
        let (second, next) = page(items(), 0, &next, "vol").expect("the rest");
        assert_eq!(second.len(), 3);
        assert_eq!(next, "");
        assert!(matches!(
            page(items(), 1, "garbage", "vol"),
            Err(Error::Aborted(_))
        ));
        assert!(matches!(
            page(items(), -1, "", "vol"),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn parameters_name_the_unknown_key() {
        let ok: HashMap<String, String> =
            [("csi.storage.k8s.io/pvc/name".to_owned(), "x".to_owned())].into();
        check_parameters(&ok).expect("reserved keys pass");
        let bad: HashMap<String, String> = [("fsType".to_owned(), "xfs".to_owned())].into();
        let err = check_parameters(&bad).expect_err("unknown key");
        assert!(err.to_string().contains("fsType"), "{err}");
    }
}

//! Sets of completion indexes in the Job API's text form: ascending, comma-separated,
//! runs of three or more consecutive indexes as intervals (`1,3-5,7`), as
//! `status.completedIndexes`, `status.failedIndexes` and a success policy's
//! `succeededIndexes` write them.

use std::collections::BTreeSet;

/// Parses `1,3-5,7`; indexes at or above `limit` are dropped; malformed parts are an
/// error naming them.
pub fn parse(text: &str, limit: i32) -> Result<BTreeSet<i32>, String> {
    let mut out = BTreeSet::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (number(a, part)?, number(b, part)?),
            None => {
                let n = number(part, part)?;
                (n, n)
            }
        };
        if lo > hi {
            return Err(format!("invalid interval {part:?}: start after end"));
        }
        out.extend((lo..=hi.min(limit.saturating_sub(1))).filter(|i| *i < limit));
    }
    Ok(out)
}

fn number(s: &str, part: &str) -> Result<i32, String> {
    s.parse::<i32>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| format!("invalid index {part:?}"))
}

/// The text form of `set`; `None` for an empty set.
pub fn format(set: &BTreeSet<i32>) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        match end - start {
            0 => parts.push(start.to_string()),
            1 => parts.push(format!("{start},{end}")),
            _ => parts.push(format!("{start}-{end}")),
        }
    }
    (!parts.is_empty()).then(|| parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_compresses_runs() {
        let set: BTreeSet<i32> = [0, 1, 3, 4, 5, 7].into();
        assert_eq!(format(&set).as_deref(), Some("0,1,3-5,7"));
        assert_eq!(parse("0,1,3-5,7", 100), Ok(set));
        assert_eq!(format(&BTreeSet::new()), None);
        assert_eq!(parse("2-4", 3), Ok([2].into()));
        assert!(parse("a", 10).is_err());
        assert!(parse("5-3", 10).is_err());
    }
}

//! Whether a discovery request asks for the aggregated document, decided from `Accept`
//! exactly as kube-apiserver's `WrappedHandler` does (`negotiation.NegotiateMediaTypeOptions`
//! with `DiscoveryEndpointRestrictions`, over goautoneg's `ParseAccept`):
//!
//! - the clauses are ordered by q-value (highest first), concrete types before `*`
//!   wildcards, otherwise in the order sent;
//! - the first clause whose media range covers a type the server encodes and whose
//!   `g`/`v`/`as` parameters name `apidiscovery.k8s.io` `APIGroupDiscoveryList` wins;
//! - a clause without them never matches (the endpoint restrictions refuse every other
//!   transform), so a plain `application/json` anywhere in the list does not stop a
//!   later aggregated clause — and with no aggregated clause at all the legacy
//!   APIVersions/APIGroupList answers.
//!
//! berth encodes discovery as JSON only, so a protobuf or YAML clause is passed over
//! like any type the server cannot write.
//!
//! Entry point: [`aggregated_version`].

/// The discovery group clients name in `g=`.
pub const GROUP: &str = "apidiscovery.k8s.io";
/// The kind clients name in `as=`.
pub const KIND: &str = "APIGroupDiscoveryList";
/// The versions served: v2 (GA in 1.30) and v2beta1, same shape.
pub const VERSIONS: &[&str] = &["v2", "v2beta1"];

/// The media types discovery is written in: (type, subtype).
const SUPPORTED: &[(&str, &str)] = &[("application", "json")];

/// One clause of an `Accept` header, as goautoneg parses it.
#[derive(Debug, Clone, PartialEq)]
struct Clause<'a> {
    kind: &'a str,
    subtype: &'a str,
    q: f64,
    params: Vec<(&'a str, &'a str)>,
}

/// goautoneg's `ParseAccept`: clauses split on `,`, parameters on `;`, `q` taken
/// out (an unparsable one is 0, as Go's `ParseFloat` error leaves it), malformed
/// ranges dropped; then its insertion sort with its own `Less`.
fn parse_accept(header: &str) -> Vec<Clause<'_>> {
    let mut clauses = Vec::new();
    for part in header.split(',') {
        let mut pieces = part.split(';');
        let range = pieces.next().unwrap_or_default();
        let (kind, subtype) = if range == "*" {
            ("*", "*")
        } else {
            let mut sp = range.split('/');
            match (sp.next(), sp.next(), sp.next()) {
                (Some(t), Some(s), None) => (t.trim_matches(' '), s.trim_matches(' ')),
                _ => continue,
            }
        };
        let mut clause = Clause {
            kind,
            subtype,
            q: 1.0,
            params: Vec::new(),
        };
        for param in pieces {
            let Some((key, value)) = param.split_once('=') else {
                continue;
            };
            let key = key.trim_matches(' ');
            if key == "q" {
                clause.q = value.parse::<f32>().map(f64::from).unwrap_or(0.0);
            } else {
                clause.params.push((key, value.trim_matches(' ')));
            }
        }
        clauses.push(clause);
    }
    // Go's sort.Sort on so few elements is an insertion sort; `Less` is not a strict
    // order (a wildcard with a higher q can still move behind a concrete type), so
    // the same algorithm gives the same result.
    let less = |a: &Clause, b: &Clause| {
        a.q > b.q || (a.kind != "*" && b.kind == "*") || (a.subtype != "*" && b.subtype == "*")
    };
    for i in 1..clauses.len() {
        let mut j = i;
        while j > 0 && less(&clauses[j], &clauses[j - 1]) {
            clauses.swap(j, j - 1);
            j -= 1;
        }
    }
    clauses
}

/// `acceptMediaTypeOptions` under `DiscoveryEndpointRestrictions`: the aggregated
/// version the clause asks for, if it asks for one the endpoint allows.
fn clause_version(clause: &Clause) -> Option<&'static str> {
    let (mut group, mut version, mut kind) = (None, None, None);
    for &(key, value) in &clause.params {
        match key {
            "g" => group = Some(value),
            "v" => version = Some(value),
            "as" => kind = Some(value),
            // Only watch streams are allowed, and a server version never is.
            "stream" if !value.is_empty() && value != "watch" => return None,
            "sv" if !value.is_empty() => return None,
            _ => {}
        }
    }
    if group != Some(GROUP) || kind != Some(KIND) {
        return None;
    }
    VERSIONS.iter().copied().find(|v| Some(*v) == version)
}

/// The aggregated discovery version (`v2`, `v2beta1`) an `Accept` header asks for,
/// or `None` for the legacy documents.
pub fn aggregated_version(accept: Option<&str>) -> Option<&'static str> {
    let accept = accept.filter(|a| !a.is_empty())?;
    parse_accept(accept).iter().find_map(|clause| {
        let covered = SUPPORTED.iter().any(|&(t, s)| {
            (clause.kind == t && (clause.subtype == s || clause.subtype == "*"))
                || (clause.kind == "*" && clause.subtype == "*")
        });
        if covered {
            clause_version(clause)
        } else {
            None
        }
    })
}

/// The `Content-Type` of an aggregated document, with the group, version and kind
/// (upstream's `generateMediaTypeWithGVK`); client-go reads them to tell it from the
/// legacy list.
pub fn content_type(version: &str) -> String {
    format!("application/json;g={GROUP};v={version};as={KIND}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
    const V2BETA1: &str =
        "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList";

    #[test]
    fn no_or_plain_accept_is_legacy() {
        for accept in [
            None,
            Some(""),
            Some("application/json"),
            Some("*/*"),
            Some("application/json, */*"),
            Some("application/yaml"),
        ] {
            assert_eq!(aggregated_version(accept), None, "{accept:?}");
        }
    }

    #[test]
    fn aggregated_versions_are_recognized() {
        assert_eq!(aggregated_version(Some(V2)), Some("v2"));
        assert_eq!(aggregated_version(Some(V2BETA1)), Some("v2beta1"));
        // kube-rs and client-go send both, then the legacy fallback.
        let both = format!("{V2},{V2BETA1},application/json");
        assert_eq!(aggregated_version(Some(&both)), Some("v2"));
        let beta_first = format!("{V2BETA1}, {V2}, application/json");
        assert_eq!(aggregated_version(Some(&beta_first)), Some("v2beta1"));
        // Parameters in any order, spaces around them.
        assert_eq!(
            aggregated_version(Some(
                "application/json; as=APIGroupDiscoveryList; v=v2; g=apidiscovery.k8s.io"
            )),
            Some("v2")
        );
        // A wildcard range with the parameters is served as JSON.
        assert_eq!(
            aggregated_version(Some(
                "*/*;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
            )),
            Some("v2")
        );
    }

    #[test]
    fn q_values_order_the_clauses() {
        let accept = format!("{V2BETA1};q=0.5,{V2};q=0.9");
        assert_eq!(aggregated_version(Some(&accept)), Some("v2"));
        let accept = format!("{V2};q=0.1,{V2BETA1}");
        assert_eq!(aggregated_version(Some(&accept)), Some("v2beta1"));
        // An unparsable q is 0, as in Go.
        let accept = format!("{V2};q=x,{V2BETA1};q=0.1");
        assert_eq!(aggregated_version(Some(&accept)), Some("v2beta1"));
    }

    #[test]
    fn a_plain_clause_before_does_not_stop_the_aggregated_one() {
        // The endpoint restrictions refuse the untransformed clause, so negotiation goes
        // on to the next, as kube-apiserver's wrapper does.
        let accept = format!("application/json,{V2}");
        assert_eq!(aggregated_version(Some(&accept)), Some("v2"));
    }

    #[test]
    fn unsupported_types_and_wrong_parameters_are_passed_over() {
        let proto = "application/vnd.kubernetes.protobuf;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
        assert_eq!(aggregated_version(Some(proto)), None);
        assert_eq!(
            aggregated_version(Some(&format!("{proto},{V2BETA1}"))),
            Some("v2beta1")
        );
        for accept in [
            "application/json;g=apidiscovery.k8s.io;v=v1;as=APIGroupDiscoveryList",
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupList",
            "application/json;g=example.com;v=v2;as=APIGroupDiscoveryList",
            "application/json;v=v2;as=APIGroupDiscoveryList",
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList;sv=v1",
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList;stream=x",
            "text/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
            "application/json/x;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
        ] {
            assert_eq!(aggregated_version(Some(accept)), None, "{accept}");
        }
    }

    #[test]
    fn goautoneg_order() {
        let clauses = parse_accept("*/*;q=0.8, text/*, application/json;q=0.9, a/b");
        let order: Vec<String> = clauses
            .iter()
            .map(|c| format!("{}/{}", c.kind, c.subtype))
            .collect();
        // Go's Less ranks a concrete subtype before a wildcard one whatever the q-values.
        assert_eq!(order, ["a/b", "application/json", "text/*", "*/*"]);
    }

    #[test]
    fn content_type_names_the_kind() {
        assert_eq!(content_type("v2"), V2);
    }
}

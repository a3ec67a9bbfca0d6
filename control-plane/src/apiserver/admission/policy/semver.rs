//! Kubernetes' CEL semver library (`k8s.io/apiserver/pkg/cel/library/semverlib.go`):
//! `semver(string)`, `isSemver(string)` (strict Semantic Versioning 2.0.0, as
//! blang/semver parses), with a second `true` argument normalizing first (a leading
//! `v` dropped, a missing minor or patch taken as 0, leading zeros removed), and a
//! version's `major()`, `minor()`, `patch()`, `isGreaterThan()`, `isLessThan()`,
//! `compareTo()`; versions compare by precedence (build metadata ignored) and are equal
//! when all their parts are.

use std::cmp::Ordering;
use std::sync::Arc;

use cel::common::types::{BOOL_TYPE, STRING_TYPE, Type};
use cel::common::value::CowVal;
use cel::objects::Opaque;
use cel::{DeclarationError, Env, ExecutionError, Value};

use super::library::{err, out, overload, text, values};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Semver {
    major: u64,
    minor: u64,
    patch: u64,
    pre: Vec<String>,
    build: Vec<String>,
}

const SEMVER: &str = "kubernetes.Semver";

impl Opaque for Semver {
    fn runtime_type_name(&self) -> &str {
        SEMVER
    }
}

fn semver_type() -> Type {
    Type::new_opaque_type(SEMVER)
}

fn numeric(part: &str, what: &str) -> Result<u64, String> {
    if part.is_empty() || !part.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "invalid character(s) found in {what} number {part:?}"
        ));
    }
    if part.len() > 1 && part.starts_with('0') {
        return Err(format!(
            "{what} number must not contain leading zeroes {part:?}"
        ));
    }
    part.parse()
        .map_err(|_| format!("{what} number {part:?} is too large"))
}

fn identifiers(list: &str, what: &str, prerelease: bool) -> Result<Vec<String>, String> {
    list.split('.')
        .map(|id| {
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(format!("invalid character(s) found in {what} {id:?}"));
            }
            if prerelease
                && id.len() > 1
                && id.starts_with('0')
                && id.chars().all(|c| c.is_ascii_digit())
            {
                return Err(format!(
                    "numeric {what} must not contain leading zeroes {id:?}"
                ));
            }
            Ok(id.to_owned())
        })
        .collect()
}

/// A strict Semantic Versioning 2.0.0 version.
fn parse(s: &str) -> Result<Semver, String> {
    let (rest, build) = match s.split_once('+') {
        Some((r, b)) => (r, identifiers(b, "build metadata", false)?),
        None => (s, Vec::new()),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((c, p)) => (c, identifiers(p, "prerelease", true)?),
        None => (rest, Vec::new()),
    };
    let parts: Vec<&str> = core.split('.').collect();
    let [major, minor, patch] = parts.as_slice() else {
        return Err("No Major.Minor.Patch elements found".into());
    };
    Ok(Semver {
        major: numeric(major, "major")?,
        minor: numeric(minor, "minor")?,
        patch: numeric(patch, "patch")?,
        pre,
        build,
    })
}

/// upstream's normalization: no leading `v`, missing minor/patch as 0, no leading
/// zeros in the numbers.
fn normalize(s: &str) -> String {
    let s = s.strip_prefix('v').unwrap_or(s);
    let cut = s.find(['-', '+']).unwrap_or(s.len());
    let (core, tail) = s.split_at(cut);
    let mut parts: Vec<String> = core
        .split('.')
        .map(|p| {
            let trimmed = p.trim_start_matches('0');
            if trimmed.is_empty() && !p.is_empty() {
                "0".to_owned()
            } else {
                trimmed.to_owned()
            }
        })
        .collect();
    while parts.len() < 3 {
        parts.push("0".into());
    }
    format!("{}{tail}", parts.join("."))
}

/// Precedence: the numbers, then a release above its prereleases, then the
/// prerelease identifiers in order (numeric ones numerically and below others).
fn precedence(a: &Semver, b: &Semver) -> Ordering {
    (a.major, a.minor, a.patch)
        .cmp(&(b.major, b.minor, b.patch))
        .then_with(|| match (a.pre.is_empty(), b.pre.is_empty()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => {
                for (x, y) in a.pre.iter().zip(&b.pre) {
                    let order = match (x.parse::<u64>(), y.parse::<u64>()) {
                        (Ok(m), Ok(n)) => m.cmp(&n),
                        (Ok(_), Err(_)) => Ordering::Less,
                        (Err(_), Ok(_)) => Ordering::Greater,
                        (Err(_), Err(_)) => x.cmp(y),
                    };
                    if order != Ordering::Equal {
                        return order;
                    }
                }
                a.pre.len().cmp(&b.pre.len())
            }
        })
}

fn version_text(a: &[Value], function: &str) -> Result<String, ExecutionError> {
    let s = text(a.first(), function)?;
    Ok(match a.get(1) {
        Some(Value::Bool(true)) => normalize(s),
        _ => s.to_owned(),
    })
}

fn of(v: Option<&Value>, function: &str) -> Result<Semver, ExecutionError> {
    match v {
        Some(Value::Opaque(o)) => o
            .downcast_ref::<Semver>()
            .cloned()
            .ok_or_else(|| err(function, "expected a semver")),
        _ => Err(err(function, "expected a semver")),
    }
}

fn semver(a: &[Value]) -> Result<Value, ExecutionError> {
    let s = version_text(a, "semver")?;
    parse(&s)
        .map(|v| Value::Opaque(Arc::new(v)))
        .map_err(|e| err("semver", format!("could not parse {s:?} as semver: {e}")))
}

fn is_semver(a: &[Value]) -> Result<Value, ExecutionError> {
    Ok(Value::Bool(parse(&version_text(a, "isSemver")?).is_ok()))
}

fn major(a: &[Value]) -> Result<Value, ExecutionError> {
    Ok(Value::Int(of(a.first(), "major")?.major as i64))
}

fn minor(a: &[Value]) -> Result<Value, ExecutionError> {
    Ok(Value::Int(of(a.first(), "minor")?.minor as i64))
}

fn patch(a: &[Value]) -> Result<Value, ExecutionError> {
    Ok(Value::Int(of(a.first(), "patch")?.patch as i64))
}

fn order(a: &[Value], function: &str) -> Result<Ordering, ExecutionError> {
    Ok(precedence(
        &of(a.first(), function)?,
        &of(a.get(1), function)?,
    ))
}

fn greater(a: &[Value]) -> Result<Value, ExecutionError> {
    Ok(Value::Bool(order(a, "isGreaterThan")? == Ordering::Greater))
}

fn less(a: &[Value]) -> Result<Value, ExecutionError> {
    Ok(Value::Bool(order(a, "isLessThan")? == Ordering::Less))
}

fn compare_to(a: &[Value]) -> Result<Value, ExecutionError> {
    Ok(Value::Int(order(a, "compareTo")? as i64))
}

overload!(semver_fn => semver);
overload!(is_semver_fn => is_semver);
overload!(major_fn => major);
overload!(minor_fn => minor);
overload!(patch_fn => patch);
overload!(greater_fn => greater);
overload!(less_fn => less);
overload!(compare_to_fn => compare_to);

type Function = cel::common::functions::Function;

/// Registers the semver library on `env`.
pub fn register(env: &mut Env) -> Result<(), DeclarationError> {
    for (name, f) in [
        ("semver", semver_fn as Function),
        ("isSemver", is_semver_fn),
    ] {
        env.add_overload(name, &format!("{name}_string"), vec![STRING_TYPE], f)?;
        env.add_overload(
            name,
            &format!("{name}_string_bool"),
            vec![STRING_TYPE, BOOL_TYPE],
            f,
        )?;
    }
    let unary: [(&str, Function); 3] = [
        ("major", major_fn),
        ("minor", minor_fn),
        ("patch", patch_fn),
    ];
    for (name, f) in unary {
        env.add_member_overload(name, &format!("semver_{name}"), semver_type(), vec![], f)?;
    }
    let binary: [(&str, Function); 3] = [
        ("isGreaterThan", greater_fn),
        ("isLessThan", less_fn),
        ("compareTo", compare_to_fn),
    ];
    for (name, f) in binary {
        env.add_member_overload(
            name,
            &format!("semver_{name}"),
            semver_type(),
            vec![semver_type()],
            f,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_strictly_and_order_by_precedence() {
        let v = parse("1.2.3-rc.1+build.5").expect("a version");
        assert_eq!((v.major, v.minor, v.patch), (1, 2, 3));
        for bad in ["v1.2.3", "1.2", "01.2.3", "1.2.3-01", "1.2.3-", "a.b.c"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(normalize("v1.02"), "1.2.0");
        assert!(parse(&normalize("v1.02")).is_ok());
        let p = |s: &str| parse(s).expect("a version");
        let ordered = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1",
            "1.1.0",
            "2.0.0",
        ];
        for pair in ordered.windows(2) {
            assert_eq!(
                precedence(&p(pair[0]), &p(pair[1])),
                Ordering::Less,
                "{pair:?}"
            );
        }
        assert_eq!(precedence(&p("1.0.0+a"), &p("1.0.0+b")), Ordering::Equal);
    }
}

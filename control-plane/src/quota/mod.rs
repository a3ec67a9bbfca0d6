//! What the ResourceQuota admission plugin and the resource quota controller share,
//! without I/O (kube's `k8s.io/apiserver/pkg/quota/v1` and
//! `pkg/quota/v1/evaluator/core`): resource lists of quantities with upstream's
//! arithmetic and canonical text ([`Amount`], [`ResourceList`]), a quota as both read
//! it ([`Quota`]), and per resource an [`Evaluator`] that measures an object's usage,
//! says which quota resource names it counts and which scopes it is in.
//!
//! Objects are the apiserver's JSON (`serde_json::Value`), so the admission plugin
//! measures what it is about to store and the controller what its caches hold with
//! one implementation.

mod evaluators;
pub mod scopes;

use std::collections::BTreeMap;

use serde_json::{Map, Value};

pub use evaluators::{Evaluator, grace_ends};
pub use scopes::Selector;

use crate::scheduler::quantity::{format_binary, format_decimal, parse_milli};

/// How `resource.Quantity` writes an amount (`Format`), kept from the text it was
/// parsed from and carried through sums as upstream's `Quantity.Add` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `1500m`, `2k`, `3`.
    DecimalSi,
    /// `2Gi`, `512Ki`.
    BinarySi,
    /// `1e3`.
    DecimalExponent,
}

/// An exact amount in thousandths of its unit, with the format it is written in.
#[derive(Debug, Clone, Copy)]
pub struct Amount {
    pub milli: i128,
    pub format: Format,
}

impl PartialEq for Amount {
    /// Equal amounts are equal whatever their format (`Quantity.Cmp`).
    fn eq(&self, other: &Self) -> bool {
        self.milli == other.milli
    }
}

impl Amount {
    pub const ZERO: Amount = Amount {
        milli: 0,
        format: Format::DecimalSi,
    };

    /// A count of objects (`resource.NewQuantity(n, DecimalSI)`).
    pub fn count(n: i64) -> Self {
        Amount {
            milli: i128::from(n) * 1000,
            format: Format::DecimalSi,
        }
    }

    /// A quantity's text (`100m`, `2Gi`, `1e3`); `None` if it is not one.
    pub fn parse(text: &str) -> Option<Self> {
        let milli = parse_milli(text)?;
        let suffix = text
            .trim()
            .trim_start_matches(['+', '-'])
            .trim_start_matches(|c: char| c.is_ascii_digit() || c == '.');
        let format = if suffix.starts_with(['e', 'E']) {
            Format::DecimalExponent
        } else if suffix.ends_with('i') {
            Format::BinarySi
        } else {
            Format::DecimalSi
        };
        Some(Amount { milli, format })
    }

    /// A quantity as JSON holds it: a string, or a number.
    pub fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::String(s) => Self::parse(s),
            Value::Number(n) => Self::parse(&n.to_string()),
            _ => None,
        }
    }

    /// Rounded up to a whole unit (`Quantity.RoundUp(0)`).
    pub fn round_up(self) -> Amount {
        Amount {
            milli: (self.milli + 999).div_euclid(1000) * 1000,
            format: self.format,
        }
    }

    pub fn is_zero(&self) -> bool {
        self.milli == 0
    }
}

impl std::ops::Add for Amount {
    type Output = Amount;

    /// `Quantity.Add`: the sum keeps this amount's format, or takes the other's when
    /// this one is zero.
    fn add(self, other: Amount) -> Amount {
        Amount {
            milli: self.milli + other.milli,
            format: if self.milli == 0 {
                other.format
            } else {
                self.format
            },
        }
    }
}

impl std::ops::Sub for Amount {
    type Output = Amount;

    fn sub(self, other: Amount) -> Amount {
        Amount {
            milli: self.milli - other.milli,
            format: self.format,
        }
    }
}

impl std::fmt::Display for Amount {
    /// The canonical text `Quantity.String()` writes (`CanonicalizeBytes`): binary
    /// suffixes only for whole amounts of at least 1024, otherwise the largest SI
    /// suffix (or power of ten) that keeps the mantissa whole.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.milli == 0 {
            return f.write_str("0");
        }
        let sign = if self.milli < 0 { "-" } else { "" };
        let abs = self.milli.unsigned_abs();
        if self.format == Format::BinarySi
            && abs >= 1024 * 1000
            && abs.is_multiple_of(1000)
            && let Ok(bytes) = u64::try_from(abs / 1000)
        {
            return write!(f, "{sign}{}", format_binary(bytes));
        }
        let text = format_decimal(abs, -3);
        if self.format != Format::DecimalExponent {
            return write!(f, "{sign}{text}");
        }
        // The same mantissa, its SI suffix written as a power of ten.
        let digits = text.trim_end_matches(|c: char| !c.is_ascii_digit());
        let exp = match &text[digits.len()..] {
            "n" => "e-9",
            "u" => "e-6",
            "m" => "e-3",
            "k" => "e3",
            "M" => "e6",
            "G" => "e9",
            "T" => "e12",
            "P" => "e15",
            "E" => "e18",
            other => other,
        };
        write!(f, "{sign}{digits}{exp}")
    }
}

/// `corev1.ResourceList`: resource names to amounts, in name order.
pub type ResourceList = BTreeMap<String, Amount>;

/// A JSON map of quantities (`spec.hard`, `status.used`); what is not a quantity is
/// left out.
pub fn list_of(v: Option<&Value>) -> ResourceList {
    v.and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), Amount::from_value(v)?)))
        .collect()
}

/// The list as JSON, each amount in canonical text.
pub fn to_json(list: &ResourceList) -> Value {
    Value::Object(
        list.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.to_string())))
            .collect::<Map<_, _>>(),
    )
}

/// `quota.Add`: every key of both, summed where both have it.
pub fn add(a: &ResourceList, b: &ResourceList) -> ResourceList {
    let mut out = a.clone();
    for (k, v) in b {
        out.entry(k.clone())
            .and_modify(|x| *x = *x + *v)
            .or_insert(*v);
    }
    out
}

/// `quota.SubtractWithNonNegativeResult`: `a - b` per key of `a`, never below zero.
pub fn subtract_non_negative(a: &ResourceList, b: &ResourceList) -> ResourceList {
    a.iter()
        .map(|(k, v)| {
            let mut d = b.get(k).map_or(*v, |o| *v - *o);
            if d.milli < 0 {
                d.milli = 0;
            }
            (k.clone(), d)
        })
        .collect()
}

/// `quota.Mask`: only the keys in `names`.
pub fn mask<'a>(list: &ResourceList, names: impl IntoIterator<Item = &'a String>) -> ResourceList {
    names
        .into_iter()
        .filter_map(|n| Some((n.clone(), *list.get(n)?)))
        .collect()
}

/// `quota.Equals`: the same keys with the same amounts.
pub fn equals(a: &ResourceList, b: &ResourceList) -> bool {
    a.len() == b.len() && a.iter().all(|(k, v)| b.get(k) == Some(v))
}

/// `quota.LessThanOrEqual`: the keys of `a` that `b` also has and `a` exceeds.
pub fn exceeded(a: &ResourceList, b: &ResourceList) -> Vec<String> {
    a.iter()
        .filter(|(k, v)| b.get(*k).is_some_and(|o| v.milli > o.milli))
        .map(|(k, _)| k.clone())
        .collect()
}

/// `prettyPrint`: `name=amount` pairs in name order, comma-separated.
pub fn pretty(list: &ResourceList) -> String {
    list.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The name object counts go by (`count/pods`, `count/deployments.apps`).
pub fn count_name(group: &str, plural: &str) -> String {
    if group.is_empty() {
        format!("count/{plural}")
    } else {
        format!("count/{plural}.{group}")
    }
}

/// `(group, plural)` of a `count/<resource>[.<group>]` name.
pub fn parse_count_name(name: &str) -> Option<(&str, &str)> {
    let resource = name.strip_prefix("count/")?;
    Some(match resource.split_once('.') {
        Some((plural, group)) => (group, plural),
        None => ("", resource),
    })
}

/// A ResourceQuota as admission and the controller read it.
#[derive(Debug, Clone)]
pub struct Quota {
    pub name: String,
    pub spec_hard: ResourceList,
    pub hard: ResourceList,
    pub used: ResourceList,
    /// `spec.scopes` (as `Exists` selectors) and `spec.scopeSelector`'s expressions.
    pub selectors: Vec<Selector>,
}

impl Quota {
    pub fn from_object(obj: &Value) -> Self {
        Quota {
            name: obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            spec_hard: list_of(obj.pointer("/spec/hard")),
            hard: list_of(obj.pointer("/status/hard")),
            used: list_of(obj.pointer("/status/used")),
            selectors: scopes::selectors(obj.get("spec").unwrap_or(&Value::Null)),
        }
    }

    /// `generic.Matches`: the quota limits something the evaluator counts (in
    /// `status.hard`) and the object is in every one of its scopes.
    pub fn matches(&self, evaluator: &Evaluator, obj: &Value) -> bool {
        !evaluator.matching_resources(self.hard.keys()).is_empty()
            && self
                .selectors
                .iter()
                .all(|s| evaluator.matches_scope(s, obj))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amount(s: &str) -> Amount {
        Amount::parse(s).unwrap_or_else(|| panic!("{s} is a quantity"))
    }

    #[test]
    fn amounts_print_canonically_as_upstream() {
        for (input, canonical) in [
            ("1.5", "1500m"),
            ("2048Mi", "2Gi"),
            ("1000Mi", "1000Mi"),
            ("0.5Gi", "512Mi"),
            ("1024", "1024"),
            ("1000", "1k"),
            ("0", "0"),
            ("0Gi", "0"),
            ("1e3", "1e3"),
            ("1500e3", "1500e3"),
            ("100m", "100m"),
            ("1Ki", "1Ki"),
            ("512", "512"),
        ] {
            assert_eq!(amount(input).to_string(), canonical, "{input}");
        }
        // Small binary amounts and fractions of a byte fall back to decimal.
        assert_eq!((amount("1Ki") - amount("1000")).to_string(), "24");
        assert_eq!((amount("1.5") + amount("-2")).to_string(), "-500m");
    }

    #[test]
    fn sums_keep_the_first_nonzero_format() {
        let mem = Amount::ZERO + amount("64Mi") + amount("1M");
        assert_eq!(mem.format, Format::BinarySi);
        assert_eq!(mem.to_string(), "68108864");
        let cpu = amount("1") + amount("500m");
        assert_eq!(cpu.to_string(), "1500m");
        let a: ResourceList = [("pods".to_owned(), Amount::count(2))].into();
        let b: ResourceList = [
            ("pods".to_owned(), Amount::count(1)),
            ("cpu".to_owned(), amount("250m")),
        ]
        .into();
        assert_eq!(pretty(&add(&a, &b)), "cpu=250m,pods=3");
        assert_eq!(pretty(&subtract_non_negative(&a, &b)), "pods=1");
        assert_eq!(exceeded(&add(&a, &b), &a), vec!["pods".to_owned()]);
        assert!(equals(
            &a,
            &list_of(Some(&serde_json::json!({"pods": "2"})))
        ));
    }

    #[test]
    fn count_names_round_trip() {
        assert_eq!(count_name("apps", "deployments"), "count/deployments.apps");
        assert_eq!(count_name("", "pods"), "count/pods");
        assert_eq!(
            parse_count_name("count/widgets.example.com"),
            Some(("example.com", "widgets"))
        );
        assert_eq!(parse_count_name("count/pods"), Some(("", "pods")));
        assert_eq!(parse_count_name("pods"), None);
    }
}

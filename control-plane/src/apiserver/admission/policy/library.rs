//! Kubernetes' CEL libraries (`k8s.io/apiserver/pkg/cel/library`) that the `cel`
//! crate lacks, as overloads of the shared environment: the lists library
//! (`isSorted`, `sum`, `min`, `max`, `indexOf`, `lastIndexOf`), the regex library
//! (`find`, `findAll`), the quantity library (`quantity`, `isQuantity`, `compareTo`,
//! `isGreaterThan`, `isLessThan`, `add`, `sub`, `asInteger`, `isInteger`,
//! `asApproximateFloat`, `sign`) and cel-go's sets extension (`sets.contains`,
//! `sets.intersects`, `sets.equivalent`). The URL, IP and CIDR libraries are in
//! [`network`](super::network), the semver library in [`semver`](super::semver), the
//! authorizer library in [`authz`](super::authz).

use std::cmp::Ordering;
use std::sync::Arc;

use cel::common::types::{DYN_TYPE, INT_TYPE, LIST_TYPE, STRING_TYPE, Type};
use cel::common::value::{CowVal, Val};
use cel::objects::Opaque;
use cel::{DeclarationError, Env, ExecutionError, Value};

use crate::scheduler::quantity::parse_milli;

/// The arguments of a call as owned values.
pub(super) fn values(args: &[CowVal<'_, '_>]) -> Result<Vec<Value>, ExecutionError> {
    args.iter().map(|a| Value::try_from(a.as_ref())).collect()
}

/// A result value in the form overloads return.
pub(super) fn out<'b, 'v>(v: Value) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let boxed: Box<dyn Val> = v.try_into()?;
    Ok(CowVal::Owned(boxed))
}

/// An overload over owned values: `fn(&[Value]) -> Result<Value, _>` wrapped into the
/// crate's overload signature.
macro_rules! overload {
    ($name:ident => $body:path) => {
        fn $name<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
            out($body(&values(&args)?)?)
        }
    };
}
pub(super) use overload;

/// A function's evaluation error.
pub(super) fn err(function: &str, message: impl ToString) -> ExecutionError {
    ExecutionError::function_error(function, message)
}

fn list<'a>(v: &'a [Value], function: &str) -> Result<&'a [Value], ExecutionError> {
    match v.first() {
        Some(Value::List(items)) => Ok(items.as_slice()),
        _ => Err(err(function, "expected a list")),
    }
}

/// A string argument.
pub(super) fn text<'a>(v: Option<&'a Value>, function: &str) -> Result<&'a str, ExecutionError> {
    match v {
        Some(Value::String(s)) => Ok(s.as_str()),
        _ => Err(err(function, "expected a string")),
    }
}

fn compare(a: &Value, b: &Value, function: &str) -> Result<Ordering, ExecutionError> {
    a.partial_cmp(b)
        .ok_or_else(|| err(function, format!("{a:?} can not be compared to {b:?}")))
}

fn is_sorted(a: &[Value]) -> Result<Value, ExecutionError> {
    let items = list(a, "isSorted")?;
    for pair in items.windows(2) {
        if compare(&pair[0], &pair[1], "isSorted")? == Ordering::Greater {
            return Ok(Value::Bool(false));
        }
    }
    Ok(Value::Bool(true))
}

fn sum(a: &[Value]) -> Result<Value, ExecutionError> {
    let items = list(a, "sum")?;
    let overflow = || err("sum", "integer overflow");
    let mut total = match items.first() {
        None => return Ok(Value::Int(0)),
        Some(first) => first.clone(),
    };
    for item in &items[1..] {
        total = match (&total, item) {
            (Value::Int(x), Value::Int(y)) => Value::Int(x.checked_add(*y).ok_or_else(overflow)?),
            (Value::UInt(x), Value::UInt(y)) => {
                Value::UInt(x.checked_add(*y).ok_or_else(overflow)?)
            }
            (Value::Float(x), Value::Float(y)) => Value::Float(x + y),
            (Value::Duration(x), Value::Duration(y)) => {
                Value::Duration(x.checked_add(y).ok_or_else(overflow)?)
            }
            _ => return Err(err("sum", "list elements must be numbers of one type")),
        };
    }
    Ok(total)
}

fn extreme(a: &[Value], function: &str, keep: Ordering) -> Result<Value, ExecutionError> {
    let items = list(a, function)?;
    let mut best = items
        .first()
        .ok_or_else(|| err(function, format!("{function} called on empty list")))?;
    for item in &items[1..] {
        if compare(item, best, function)? == keep {
            best = item;
        }
    }
    Ok(best.clone())
}

fn min(a: &[Value]) -> Result<Value, ExecutionError> {
    extreme(a, "min", Ordering::Less)
}

fn max(a: &[Value]) -> Result<Value, ExecutionError> {
    extreme(a, "max", Ordering::Greater)
}

fn index_of(a: &[Value]) -> Result<Value, ExecutionError> {
    let items = list(a, "indexOf")?;
    let found = a.get(1).and_then(|x| items.iter().position(|i| i == x));
    Ok(Value::Int(found.map_or(-1, |i| i as i64)))
}

fn last_index_of(a: &[Value]) -> Result<Value, ExecutionError> {
    let items = list(a, "lastIndexOf")?;
    let found = a.get(1).and_then(|x| items.iter().rposition(|i| i == x));
    Ok(Value::Int(found.map_or(-1, |i| i as i64)))
}

fn regex(pattern: &str, function: &str) -> Result<regex::Regex, ExecutionError> {
    regex::Regex::new(pattern).map_err(|e| err(function, e))
}

fn find(a: &[Value]) -> Result<Value, ExecutionError> {
    let s = text(a.first(), "find")?;
    let re = regex(text(a.get(1), "find")?, "find")?;
    let found = re.find(s).map_or("", |m| m.as_str());
    Ok(Value::String(Arc::new(found.to_owned())))
}

fn find_all(a: &[Value]) -> Result<Value, ExecutionError> {
    let s = text(a.first(), "findAll")?;
    let re = regex(text(a.get(1), "findAll")?, "findAll")?;
    let limit = match a.get(2) {
        Some(Value::Int(n)) if *n >= 0 => *n as usize,
        _ => usize::MAX,
    };
    let found = re
        .find_iter(s)
        .take(limit)
        .map(|m| Value::String(Arc::new(m.as_str().to_owned())))
        .collect();
    Ok(Value::List(Arc::new(found)))
}

fn set_contains(a: &[Value], b: &[Value]) -> bool {
    b.iter().all(|x| a.contains(x))
}

fn two_lists<'a>(
    a: &'a [Value],
    function: &str,
) -> Result<(&'a [Value], &'a [Value]), ExecutionError> {
    Ok((
        list(a, function)?,
        list(a.get(1..).unwrap_or_default(), function)?,
    ))
}

fn sets_contains(a: &[Value]) -> Result<Value, ExecutionError> {
    let (x, y) = two_lists(a, "sets.contains")?;
    Ok(Value::Bool(set_contains(x, y)))
}

fn sets_equivalent(a: &[Value]) -> Result<Value, ExecutionError> {
    let (x, y) = two_lists(a, "sets.equivalent")?;
    Ok(Value::Bool(set_contains(x, y) && set_contains(y, x)))
}

fn sets_intersects(a: &[Value]) -> Result<Value, ExecutionError> {
    let (x, y) = two_lists(a, "sets.intersects")?;
    Ok(Value::Bool(x.iter().any(|v| y.contains(v))))
}

/// A `resource.Quantity`, exact to the thousandth as the scheduler parses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantity {
    milli: i128,
}

const QUANTITY: &str = "kubernetes.Quantity";

impl Opaque for Quantity {
    fn runtime_type_name(&self) -> &str {
        QUANTITY
    }
}

fn quantity_type() -> Type {
    Type::new_opaque_type(QUANTITY)
}

fn quantity_of(v: Option<&Value>, function: &str) -> Result<i128, ExecutionError> {
    match v {
        Some(Value::Opaque(o)) => o
            .downcast_ref::<Quantity>()
            .map(|q| q.milli)
            .ok_or_else(|| err(function, "expected a quantity")),
        Some(Value::Int(i)) => Ok(i128::from(*i) * 1000),
        _ => Err(err(function, "expected a quantity")),
    }
}

fn quantity_value(milli: i128) -> Value {
    Value::Opaque(Arc::new(Quantity { milli }))
}

fn quantity(a: &[Value]) -> Result<Value, ExecutionError> {
    let s = text(a.first(), "quantity")?;
    parse_milli(s)
        .map(quantity_value)
        .ok_or_else(|| err("quantity", "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"))
}

fn is_quantity(a: &[Value]) -> Result<Value, ExecutionError> {
    Ok(Value::Bool(
        parse_milli(text(a.first(), "isQuantity")?).is_some(),
    ))
}

fn compare_to(a: &[Value]) -> Result<Value, ExecutionError> {
    let ord = quantity_of(a.first(), "compareTo")?.cmp(&quantity_of(a.get(1), "compareTo")?);
    Ok(Value::Int(ord as i64))
}

fn greater(a: &[Value]) -> Result<Value, ExecutionError> {
    Ok(Value::Bool(
        quantity_of(a.first(), "isGreaterThan")? > quantity_of(a.get(1), "isGreaterThan")?,
    ))
}

fn less(a: &[Value]) -> Result<Value, ExecutionError> {
    Ok(Value::Bool(
        quantity_of(a.first(), "isLessThan")? < quantity_of(a.get(1), "isLessThan")?,
    ))
}

fn add(a: &[Value]) -> Result<Value, ExecutionError> {
    let sum = quantity_of(a.first(), "add")?.checked_add(quantity_of(a.get(1), "add")?);
    sum.map(quantity_value)
        .ok_or_else(|| err("add", "quantity overflow"))
}

fn sub(a: &[Value]) -> Result<Value, ExecutionError> {
    let diff = quantity_of(a.first(), "sub")?.checked_sub(quantity_of(a.get(1), "sub")?);
    diff.map(quantity_value)
        .ok_or_else(|| err("sub", "quantity overflow"))
}

fn as_integer(a: &[Value]) -> Result<Value, ExecutionError> {
    let milli = quantity_of(a.first(), "asInteger")?;
    if milli % 1000 != 0 {
        return Err(err("asInteger", "cannot convert value to integer"));
    }
    i64::try_from(milli / 1000)
        .map(Value::Int)
        .map_err(|_| err("asInteger", "cannot convert value to integer"))
}

fn is_integer(a: &[Value]) -> Result<Value, ExecutionError> {
    let milli = quantity_of(a.first(), "isInteger")?;
    Ok(Value::Bool(
        milli % 1000 == 0 && i64::try_from(milli / 1000).is_ok(),
    ))
}

fn as_float(a: &[Value]) -> Result<Value, ExecutionError> {
    Ok(Value::Float(
        quantity_of(a.first(), "asApproximateFloat")? as f64 / 1000.0,
    ))
}

fn sign(a: &[Value]) -> Result<Value, ExecutionError> {
    Ok(Value::Int(quantity_of(a.first(), "sign")?.signum() as i64))
}

overload!(is_sorted_fn => is_sorted);
overload!(sum_fn => sum);
overload!(min_fn => min);
overload!(max_fn => max);
overload!(index_of_fn => index_of);
overload!(last_index_of_fn => last_index_of);
overload!(find_fn => find);
overload!(find_all_fn => find_all);
overload!(sets_contains_fn => sets_contains);
overload!(sets_equivalent_fn => sets_equivalent);
overload!(sets_intersects_fn => sets_intersects);
overload!(quantity_fn => quantity);
overload!(is_quantity_fn => is_quantity);
overload!(compare_to_fn => compare_to);
overload!(greater_fn => greater);
overload!(less_fn => less);
overload!(add_fn => add);
overload!(sub_fn => sub);
overload!(as_integer_fn => as_integer);
overload!(is_integer_fn => is_integer);
overload!(as_float_fn => as_float);
overload!(sign_fn => sign);

/// Registers the libraries on `env`.
pub fn register(env: &mut Env) -> Result<(), DeclarationError> {
    env.add_member_overload(
        "isSorted",
        "list_is_sorted",
        LIST_TYPE,
        vec![],
        is_sorted_fn,
    )?;
    env.add_member_overload("sum", "list_sum", LIST_TYPE, vec![], sum_fn)?;
    env.add_member_overload("min", "list_min", LIST_TYPE, vec![], min_fn)?;
    env.add_member_overload("max", "list_max", LIST_TYPE, vec![], max_fn)?;
    env.add_member_overload(
        "indexOf",
        "list_index_of",
        LIST_TYPE,
        vec![DYN_TYPE],
        index_of_fn,
    )?;
    env.add_member_overload(
        "lastIndexOf",
        "list_last_index_of",
        LIST_TYPE,
        vec![DYN_TYPE],
        last_index_of_fn,
    )?;
    env.add_member_overload(
        "find",
        "string_find",
        STRING_TYPE,
        vec![STRING_TYPE],
        find_fn,
    )?;
    env.add_member_overload(
        "findAll",
        "string_find_all",
        STRING_TYPE,
        vec![STRING_TYPE],
        find_all_fn,
    )?;
    env.add_member_overload(
        "findAll",
        "string_find_all_n",
        STRING_TYPE,
        vec![STRING_TYPE, INT_TYPE],
        find_all_fn,
    )?;
    env.add_overload(
        "sets.contains",
        "sets_contains",
        vec![LIST_TYPE, LIST_TYPE],
        sets_contains_fn,
    )?;
    env.add_overload(
        "sets.equivalent",
        "sets_equivalent",
        vec![LIST_TYPE, LIST_TYPE],
        sets_equivalent_fn,
    )?;
    env.add_overload(
        "sets.intersects",
        "sets_intersects",
        vec![LIST_TYPE, LIST_TYPE],
        sets_intersects_fn,
    )?;
    env.add_overload(
        "quantity",
        "string_to_quantity",
        vec![STRING_TYPE],
        quantity_fn,
    )?;
    env.add_overload(
        "isQuantity",
        "is_quantity_string",
        vec![STRING_TYPE],
        is_quantity_fn,
    )?;
    let binary: [(&str, cel::common::functions::Function); 5] = [
        ("compareTo", compare_to_fn),
        ("isGreaterThan", greater_fn),
        ("isLessThan", less_fn),
        ("add", add_fn),
        ("sub", sub_fn),
    ];
    for (name, f) in binary {
        env.add_member_overload(
            name,
            &format!("quantity_{name}"),
            quantity_type(),
            vec![quantity_type()],
            f,
        )?;
    }
    for (name, f) in [
        ("add", add_fn as cel::common::functions::Function),
        ("sub", sub_fn),
    ] {
        env.add_member_overload(
            name,
            &format!("quantity_{name}_int"),
            quantity_type(),
            vec![INT_TYPE],
            f,
        )?;
    }
    let unary: [(&str, cel::common::functions::Function); 4] = [
        ("asInteger", as_integer_fn),
        ("isInteger", is_integer_fn),
        ("asApproximateFloat", as_float_fn),
        ("sign", sign_fn),
    ];
    for (name, f) in unary {
        env.add_member_overload(
            name,
            &format!("quantity_{name}"),
            quantity_type(),
            vec![],
            f,
        )?;
    }
    super::network::register(env)?;
    super::semver::register(env)?;
    super::authz::register(env)
}

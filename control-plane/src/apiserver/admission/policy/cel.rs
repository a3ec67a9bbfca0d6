//! The CEL environment of admission policies: kube-apiserver's
//! (`k8s.io/apiserver/pkg/cel/environment`) as far as the `cel` crate (the cel-rust
//! project) and [`library`](super::library) reach — the standard library and macros,
//! the cel-go extensions the crate has (strings, lists, math, base64, optionals),
//! `cel.bind`, and Kubernetes' own libraries (lists, regex, quantity, sets, authorizer).
//!
//! The crate parses and evaluates but does not type-check, so [`compile`] adds what
//! matters most at create time: every identifier must be declared (`object`,
//! `oldObject`, `request`, `namespaceObject`, `params` with a `paramKind`,
//! `authorizer` where upstream declares it, `variables.<name>` for the policy's
//! variables, comprehension variables), and an expression that is a plain literal of
//! the wrong type is refused — with cel-go's wording (`undeclared reference to 'x'
//! (in container '')`, `must evaluate to bool`).
//!
//! Objects reach CEL as JSON trees ([`json_to_val`]) borrowed, not copied: integers
//! are `int`, fractions `double`; timestamps and quantities stay strings (upstream
//! types them from the OpenAPI schema).

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use cel::common::ast::{
    CallExpr, ComprehensionExpr, EntryExpr, Expr, IdedExpr, ListExpr, LiteralValue,
};
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt,
};
use cel::common::value::Val;
use cel::parser::{Macro, MacroExprHelper, ParseError};
use cel::{Env, ExecutionError, Program, Value};
use serde_json::Value as Json;

/// The shared environment (functions and macros); built once.
pub fn env() -> Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(build_env())).clone()
}

/// A library registered on the environment.
type Library = fn(&mut Env) -> Result<(), cel::DeclarationError>;

fn build_env() -> Env {
    let mut env = Env::stdlib();
    let steps: [(&str, Library); 6] = [
        ("strings", cel::extensions::strings),
        ("lists", cel::extensions::lists),
        ("math", cel::extensions::math),
        ("base64", cel::extensions::encoders),
        ("cel.bind", |env| {
            env.add_macro(Macro::receiver("bind", 3, bind_macro))
        }),
        ("kubernetes", super::library::register),
    ];
    for (name, step) in steps {
        if let Err(e) = env.add_extension(step) {
            tracing::error!(library = name, error = %e, "CEL library not registered");
        }
    }
    env
}

/// `cel.bind(v, init, expr)`: `expr` with `v` bound to `init`, as cel-go's
/// `ext.Bindings` expands it (a comprehension over an empty list whose accumulator is
/// the variable).
fn bind_macro(
    helper: &mut MacroExprHelper<'_>,
    target: &mut Option<IdedExpr>,
    args: &mut Vec<IdedExpr>,
) -> Result<Option<IdedExpr>, ParseError> {
    if !matches!(target.as_ref().map(|t| &t.expr), Some(Expr::Ident(n)) if n == "cel") {
        return Ok(None);
    }
    let [var, init, result]: [IdedExpr; 3] = match std::mem::take(args).try_into() {
        Ok(a) => a,
        Err(_) => return Ok(None),
    };
    let Expr::Ident(name) = &var.expr else {
        return Err(helper.new_error(
            var.id,
            "cel.bind() variable names must be simple identifiers",
        ));
    };
    let name = name.clone();
    let step = helper.next_expr(Expr::Ident(name.clone()));
    let bind = ComprehensionExpr {
        iter_range: helper.next_expr(Expr::List(ListExpr::new(Vec::new()))),
        iter_var: "#unused".to_owned(),
        iter_var2: None,
        accu_var: name,
        accu_init: init,
        loop_cond: helper.next_expr(Expr::Literal(LiteralValue::Boolean(false.into()))),
        loop_step: step,
        result,
    };
    Ok(Some(helper.next_expr(Expr::Comprehension(Box::new(bind)))))
}

/// What an expression may refer to besides the request's variables.
#[derive(Debug, Clone, Copy, Default)]
pub struct Decls<'a> {
    /// The policy has a `paramKind`: `params` is declared.
    pub params: bool,
    /// `authorizer` is declared (not for `messageExpression`).
    pub authorizer: bool,
    /// The policy's variables this expression may read (`variables.<name>`); `None`
    /// when the policy has none (`variables` is then undeclared).
    pub variables: Option<&'a [String]>,
}

/// The type an expression must evaluate to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returns {
    Bool,
    String,
    Any,
}

/// A compiled expression and the variables (`variables.<name>`) it reads.
#[derive(Debug)]
pub struct Compiled {
    pub source: String,
    pub program: Program,
    pub reads: BTreeSet<String>,
}

/// Identifiers that name types or function namespaces, not variables.
const BUILTIN_IDENTS: &[&str] = &[
    "bool",
    "bytes",
    "double",
    "int",
    "uint",
    "string",
    "list",
    "map",
    "null_type",
    "type",
    "dyn",
    "google",
    "optional",
    "math",
    "strings",
    "base64",
    "lists",
    "sets",
    "cel",
    "ip",
];

/// Compiles `source`, refusing (with kube-apiserver's wording) what does not parse,
/// refers to anything undeclared, or is a literal of another type than `returns`.
pub fn compile(source: &str, decls: &Decls, returns: Returns) -> Result<Compiled, String> {
    // cel-go's snippet lines start " | "; the parser's start "| ".
    let program = env()
        .compile(source)
        .map_err(|e| format!("compilation failed: {e}").replace("\n| ", "\n | "))?;
    let mut check = Checker {
        decls,
        scope: Vec::new(),
        reads: BTreeSet::new(),
        error: None,
    };
    check.walk(program.expression());
    if let Some((id, message)) = check.error {
        return Err(format!(
            "compilation failed: {}",
            located(source, &program, id, &message)
        ));
    }
    let literal = match &program.expression().expr {
        Expr::Literal(LiteralValue::Boolean(_)) => Some(Returns::Bool),
        Expr::Literal(LiteralValue::String(_)) => Some(Returns::String),
        Expr::Literal(_) | Expr::List(_) | Expr::Map(_) => Some(Returns::Any),
        _ => None,
    };
    if let Some(kind) = literal
        && returns != Returns::Any
        && kind != returns
    {
        return Err(match returns {
            Returns::Bool => "must evaluate to bool".to_owned(),
            _ => "must evaluate to string".to_owned(),
        });
    }
    let reads = check.reads;
    Ok(Compiled {
        source: source.to_owned(),
        program,
        reads,
    })
}

/// cel-go's error form: `ERROR: <input>:1:5: message` and the line with a caret.
fn located(source: &str, program: &Program, id: u64, message: &str) -> String {
    let offset = program
        .source_info()
        .offset_for(id)
        .map_or(0, |(start, _)| start as usize);
    let before: String = source.chars().take(offset).collect();
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count();
    let line = source.lines().nth(line_no - 1).unwrap_or_default();
    format!(
        "ERROR: <input>:{line_no}:{}: {message}\n | {line}\n | {}^",
        column + 1,
        ".".repeat(column)
    )
}

struct Checker<'d, 'a> {
    decls: &'d Decls<'a>,
    scope: Vec<String>,
    reads: BTreeSet<String>,
    error: Option<(u64, String)>,
}

impl Checker<'_, '_> {
    fn declared(&self, name: &str) -> bool {
        self.scope.iter().any(|s| s == name)
            || matches!(name, "object" | "oldObject" | "request" | "namespaceObject")
            || (name == "params" && self.decls.params)
            || (name == "authorizer" && self.decls.authorizer)
            || (name == "variables" && self.decls.variables.is_some())
            || BUILTIN_IDENTS.contains(&name)
    }

    fn fail(&mut self, id: u64, message: String) {
        self.error.get_or_insert((id, message));
    }

    fn walk(&mut self, e: &IdedExpr) {
        if self.error.is_some() {
            return;
        }
        match &e.expr {
            Expr::Ident(name) => {
                if !self.declared(name) {
                    self.fail(
                        e.id,
                        format!("undeclared reference to '{name}' (in container '')"),
                    );
                }
            }
            Expr::Select(select) => {
                if let Expr::Ident(root) = &select.operand.expr
                    && root == "variables"
                    && !self.scope.iter().any(|s| s == "variables")
                    && let Some(known) = self.decls.variables
                {
                    if known.contains(&select.field) {
                        self.reads.insert(select.field.clone());
                    } else {
                        self.fail(e.id, format!("undefined field '{}'", select.field));
                    }
                }
                self.walk(&select.operand);
            }
            Expr::Call(CallExpr { target, args, .. }) => {
                if let Some(t) = target {
                    self.walk(t);
                }
                for a in args {
                    self.walk(a);
                }
            }
            Expr::Comprehension(c) => {
                self.walk(&c.iter_range);
                self.walk(&c.accu_init);
                let pushed = [Some(&c.iter_var), c.iter_var2.as_ref(), Some(&c.accu_var)];
                let mut n = 0;
                for v in pushed.into_iter().flatten() {
                    self.scope.push(v.clone());
                    n += 1;
                }
                self.walk(&c.loop_cond);
                self.walk(&c.loop_step);
                self.walk(&c.result);
                self.scope.truncate(self.scope.len() - n);
            }
            Expr::List(list) => {
                for item in &list.elements {
                    self.walk(item);
                }
            }
            Expr::Map(map) => {
                for entry in &map.entries {
                    if let EntryExpr::MapEntry(m) = &entry.expr {
                        self.walk(&m.key);
                        self.walk(&m.value);
                    }
                }
            }
            Expr::Struct(s) => {
                for entry in &s.entries {
                    if let EntryExpr::StructField(f) = &entry.expr {
                        self.walk(&f.value);
                    }
                }
            }
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }
}

/// A JSON value as CEL sees it, borrowing its strings: objects are maps, arrays
/// lists, integers `int` (`uint` past `int`'s range), other numbers `double`.
pub fn json_to_val(v: &Json) -> Box<dyn Val + '_> {
    match v {
        Json::Null => Box::new(CelNull),
        Json::Bool(b) => Box::new(CelBool::from(*b)),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Box::new(CelInt::from(i)),
            (None, Some(u)) => Box::new(CelUInt::from(u)),
            _ => Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN))),
        },
        Json::String(s) => Box::new(CelString::from(s.as_str())),
        Json::Array(items) => Box::new(CelList::from(
            items.iter().map(json_to_val).collect::<Vec<_>>(),
        )),
        Json::Object(map) => Box::new(CelMap::from(
            map.iter()
                .map(|(k, v)| (CelMapKey::from(k.as_str()), json_to_val(v)))
                .collect::<std::collections::HashMap<_, _>>(),
        )),
    }
}

/// A JSON value as an owned CEL [`Value`] (for values built per evaluation, such as
/// `variables`).
pub fn json_to_value(v: &Json) -> Value {
    match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::String(Arc::new(s.clone())),
        Json::Array(items) => Value::List(Arc::new(items.iter().map(json_to_value).collect())),
        Json::Object(map) => Value::Map(cel::objects::Map {
            map: Arc::new(
                map.iter()
                    .map(|(k, v)| (cel::objects::Key::from(k.as_str()), json_to_value(v)))
                    .collect(),
            ),
        }),
    }
}

/// An evaluation error as cel-go words the common ones (`no such key: x`).
pub fn error_text(e: &ExecutionError) -> String {
    match e {
        ExecutionError::NoSuchKey(k) => format!("no such key: {k}"),
        ExecutionError::UndeclaredReference(r) => format!("no such attribute: {r}"),
        other => other.to_string(),
    }
}

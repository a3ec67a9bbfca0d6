//! The CEL environment and the evaluation of compiled policies, without a server.

use serde_json::json;

use super::cel::{Decls, Returns, compile, json_to_val};
use super::compiled::compile_policy;
use super::evaluate::evaluate;

/// Evaluates `expr` with `object` bound (and `params` declared).
fn eval(expr: &str, object: &serde_json::Value) -> Result<::cel::Value, String> {
    let decls = Decls {
        params: true,
        authorizer: false,
        variables: None,
    };
    let c = compile(expr, &decls, Returns::Any)?;
    let mut ctx = ::cel::Context::with_env(super::cel::env());
    ctx.add_variable_as_val("object", json_to_val(object));
    ctx.add_variable_from_value("params", ::cel::Value::Null);
    c.program
        .execute(&ctx)
        .map_err(|e| super::cel::error_text(&e))
}

#[track_caller]
fn holds(expr: &str, object: &serde_json::Value) {
    assert_eq!(
        eval(expr, object),
        Ok(::cel::Value::Bool(true)),
        "{expr} should be true"
    );
}

fn deployment(replicas: i64) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web", "tier": "front"}},
        "spec": {"replicas": replicas, "template": {"spec": {"containers": [
            {"name": "a", "image": "registry.example/a:1", "resources": {"limits": {"memory": "512Mi"}}},
            {"name": "b", "image": "other.example/b:latest"},
        ]}}},
    })
}

#[test]
fn json_numbers_are_ints_and_fields_select() {
    let d = deployment(6);
    holds("object.spec.replicas + 1 == 7", &d);
    holds("object.spec.replicas > 5", &d);
    holds("object.metadata.name == 'web'", &d);
    holds("object.metadata.labels['tier'] == 'front'", &d);
    assert_eq!(
        eval("object.spec.missing == 1", &d),
        Err("no such key: missing".into())
    );
}

#[test]
fn standard_macros() {
    let d = deployment(3);
    holds("has(object.spec.replicas) && !has(object.spec.paused)", &d);
    holds(
        "object.spec.template.spec.containers.all(c, c.name.size() == 1)",
        &d,
    );
    holds(
        "object.spec.template.spec.containers.exists(c, c.name == 'b')",
        &d,
    );
    holds(
        "object.spec.template.spec.containers.exists_one(c, c.image.endsWith(':latest'))",
        &d,
    );
    holds(
        "object.spec.template.spec.containers.map(c, c.name) == ['a', 'b']",
        &d,
    );
    holds(
        "object.spec.template.spec.containers.filter(c, has(c.resources)).size() == 1",
        &d,
    );
    holds("object.metadata.labels.all(k, k in ['app', 'tier'])", &d);
}

#[test]
fn strings_and_regex() {
    let d = deployment(1);
    holds(
        "object.metadata.name.startsWith('we') && object.metadata.name.contains('e')",
        &d,
    );
    holds("object.metadata.name.matches('^[a-z]+$')", &d);
    holds("'A-B'.lowerAscii().split('-').join('+') == 'a+b'", &d);
    holds(
        "'abcabc'.indexOf('c') == 2 && 'abcabc'.lastIndexOf('c') == 5",
        &d,
    );
    holds(
        "'  x '.trim() == 'x' && 'hello'.substring(1, 3) == 'el'",
        &d,
    );
    holds("'image: %s'.format(['a']) == 'image: a'", &d);
    holds("'abc 123 def 456'.find('[0-9]+') == '123'", &d);
    holds("'abc 123 def 456'.findAll('[0-9]+') == ['123', '456']", &d);
    holds("'a1b2c3'.findAll('[0-9]', 2) == ['1', '2']", &d);
    holds("'nothing'.find('[0-9]') == ''", &d);
}

#[test]
fn kubernetes_lists_and_sets() {
    let d = deployment(1);
    holds("[1, 2, 3].isSorted() && ![2, 1].isSorted()", &d);
    holds(
        "[1, 2, 3].sum() == 6 && [].sum() == 0 && [1.5, 2.5].sum() == 4.0",
        &d,
    );
    holds("[3, 1, 2].min() == 1 && [3, 1, 2].max() == 3", &d);
    holds(
        "[1, 2, 1].indexOf(1) == 0 && [1, 2, 1].lastIndexOf(1) == 2 && [1].indexOf(5) == -1",
        &d,
    );
    holds(
        "sets.contains([1, 2, 3], [2, 3]) && !sets.contains([1], [2])",
        &d,
    );
    holds(
        "sets.intersects([1, 2], [2, 5]) && sets.equivalent([1, 2], [2, 1, 1])",
        &d,
    );
    holds(
        "[1, 2].reverse() == [2, 1] && [[1], [2]].flatten() == [1, 2]",
        &d,
    );
    assert!(eval("[].min()", &d).is_err(), "min of nothing");
}

#[test]
fn quantities() {
    let d = deployment(1);
    holds("quantity('1Gi').isGreaterThan(quantity('512Mi'))", &d);
    holds("quantity('100m').isLessThan(quantity('1'))", &d);
    holds("quantity('1k').compareTo(quantity('1000')) == 0", &d);
    holds(
        "quantity('2').add(quantity('500m')).compareTo(quantity('2.5')) == 0",
        &d,
    );
    holds(
        "quantity('2').sub(1).asInteger() == 1 && !quantity('1.5').isInteger()",
        &d,
    );
    holds(
        "quantity('-3').sign() == -1 && quantity('1.5').asApproximateFloat() == 1.5",
        &d,
    );
    holds("isQuantity('10Mi') && !isQuantity('ten')", &d);
    holds(
        "object.spec.template.spec.containers.all(c, !has(c.resources) || quantity(c.resources.limits.memory).isLessThan(quantity('1Gi')))",
        &d,
    );
}

#[test]
fn bind_optionals_math_and_encoders() {
    let d = deployment(4);
    holds("cel.bind(r, object.spec.replicas, r * r == 16)", &d);
    holds("object.?spec.?paused.orValue(false) == false", &d);
    holds("object.?spec.?replicas.orValue(0) == 4", &d);
    holds("math.greatest(1, 5, 3) == 5", &d);
    holds("base64.encode(b'hi') == 'aGk='", &d);
    holds("type(object.spec.replicas) == int", &d);
    holds(
        "duration('1h') > duration('30m') && timestamp('2024-01-01T00:00:00Z') < timestamp('2025-01-01T00:00:00Z')",
        &d,
    );
}

#[test]
fn compile_errors_read_like_cel_go() {
    let decls = Decls::default();
    let e = compile("foo == 1", &decls, Returns::Bool).expect_err("undeclared");
    assert_eq!(
        e,
        "compilation failed: ERROR: <input>:1:1: undeclared reference to 'foo' (in container '')\n | foo == 1\n | ^"
    );
    let e = compile("object.x == params.y", &decls, Returns::Bool).expect_err("no params");
    assert!(
        e.contains("<input>:1:13: undeclared reference to 'params'"),
        "{e}"
    );
    let e = compile("object.spec.replicas <", &decls, Returns::Bool).expect_err("syntax");
    assert!(
        e.starts_with("compilation failed: ERROR: <input>:1:"),
        "{e}"
    );
    // Comprehension variables are declared inside their macro only.
    assert!(compile("[1].all(x, x > 0)", &decls, Returns::Bool).is_ok());
    assert!(compile("[1].all(x, x > 0) && x == 1", &decls, Returns::Bool).is_err());
    let vars = ["a".to_owned()];
    let with_vars = Decls {
        variables: Some(&vars),
        ..Decls::default()
    };
    let c = compile("variables.a > 1", &with_vars, Returns::Bool).expect("declared variable");
    assert!(c.reads.contains("a"));
    let e = compile("variables.b > 1", &with_vars, Returns::Bool).expect_err("undefined");
    assert!(e.contains("undefined field 'b'"), "{e}");
    assert_eq!(
        compile("'text'", &decls, Returns::Bool).map(|_| ()),
        Err("must evaluate to bool".into())
    );
    assert_eq!(
        compile("true", &decls, Returns::String).map(|_| ()),
        Err("must evaluate to string".into())
    );
}

fn policy(spec: serde_json::Value) -> super::compiled::Policy {
    let mut p = json!({"metadata": {"name": "max-replicas"}, "spec": spec});
    p["spec"]["matchConstraints"] = json!({"resourceRules": [{"apiGroups": ["apps"],
        "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["deployments"]}]});
    compile_policy(&serde_json::from_value(p).expect("policy"))
}

fn run(
    p: &super::compiled::Policy,
    object: &serde_json::Value,
    params: Option<&serde_json::Value>,
) -> super::evaluate::Outcome {
    let request = json!({"operation": "CREATE"});
    let mut root = ::cel::Context::with_env(super::cel::env());
    root.add_variable_as_val("object", json_to_val(object));
    root.add_variable_from_value("oldObject", ::cel::Value::Null);
    root.add_variable_as_val("request", json_to_val(&request));
    root.add_variable_from_value("namespaceObject", ::cel::Value::Null);
    evaluate(&root, p, params)
}

#[test]
fn validations_deny_with_upstreams_messages() {
    let p = policy(json!({"validations": [
        {"expression": "object.spec.replicas <= 5"},
        {"expression": "object.spec.replicas <= 4", "message": "too many"},
        {"expression": "object.spec.replicas <= 3", "messageExpression": "'replicas: ' + string(object.spec.replicas)", "reason": "Forbidden"},
        {"expression": "object.spec.replicas <= 2", "messageExpression": "'  '", "message": "fallback"},
    ]}));
    let out = run(&p, &deployment(6), None);
    let messages: Vec<&str> = out.decisions.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "failed expression: object.spec.replicas <= 5",
            "too many",
            "replicas: 6",
            "fallback"
        ]
    );
    assert_eq!(out.decisions[0].reason.as_deref(), Some("Invalid"));
    assert_eq!(out.decisions[2].reason.as_deref(), Some("Forbidden"));
    assert!(run(&p, &deployment(2), None).decisions.is_empty());
}

#[test]
fn conditions_variables_params_and_failures() {
    let p = policy(json!({
        "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
        "matchConditions": [{"name": "labelled", "expression": "has(object.metadata.labels)"}],
        "variables": [
            {"name": "limit", "expression": "int(params.data.max)"},
            {"name": "over", "expression": "object.spec.replicas > variables.limit"},
        ],
        "validations": [{"expression": "!variables.over", "messageExpression": "'at most ' + string(variables.limit)"}],
        "auditAnnotations": [{"key": "replicas", "valueExpression": "string(object.spec.replicas)"}],
    }));
    let params = json!({"data": {"max": "3"}});
    let out = run(&p, &deployment(4), Some(&params));
    assert_eq!(out.decisions.len(), 1, "{out:?}");
    assert_eq!(out.decisions[0].message, "at most 3");
    assert_eq!(out.annotations, [("replicas".to_owned(), "4".to_owned())]);
    assert!(run(&p, &deployment(3), Some(&params)).decisions.is_empty());
    // A match condition that is false: nothing to check.
    let unlabelled = json!({"metadata": {}, "spec": {"replicas": 9}});
    assert!(run(&p, &unlabelled, Some(&params)).decisions.is_empty());
    // A variable that fails fails what reads it, under failurePolicy Fail.
    let broken = json!({"data": {}});
    let out = run(&p, &deployment(4), Some(&broken));
    assert_eq!(out.decisions.len(), 1, "{out:?}");
    assert_eq!(
        out.decisions[0].message,
        "expression '!variables.over' resulted in error: no such key: max"
    );
    assert_eq!(out.decisions[0].reason, None);
    // ... and is ignored under Ignore.
    let mut lenient = p;
    lenient.ignore_failures = true;
    assert!(
        run(&lenient, &deployment(4), Some(&broken))
            .decisions
            .is_empty()
    );
}

#[test]
fn an_expression_that_no_longer_compiles_fails_alone_under_the_failure_policy() {
    // Stored policies are validated at create, so this is a policy stored before the CEL
    // environment changed: kube-apiserver fails that one expression at evaluation.
    let spec = json!({"validations": [
        {"expression": "object.spec.replicas <= 5"},
        {"expression": "nope.replicas <= 5"},
    ]});
    let strict = policy(spec.clone());
    let out = run(&strict, &deployment(6), None);
    let messages: Vec<&str> = out.decisions.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[0], "failed expression: object.spec.replicas <= 5");
    assert!(
        messages[1].starts_with(
            "compilation error: compilation failed: ERROR: <input>:1:1: undeclared reference to 'nope'"
        ),
        "{}",
        messages[1]
    );
    assert_eq!(out.decisions[1].reason, None);
    // The expression that compiles still decides on its own.
    let out = run(&strict, &deployment(4), None);
    assert_eq!(out.decisions.len(), 1, "{out:?}");
    assert!(out.decisions[0].message.starts_with("compilation error: "));
    // Under failurePolicy Ignore the broken expression is let through.
    let mut lenient = strict;
    lenient.ignore_failures = true;
    let out = run(&lenient, &deployment(4), None);
    assert!(out.decisions.is_empty(), "{out:?}");
    assert_eq!(out.ignored.len(), 1);
}

#[test]
fn the_url_ip_and_cidr_libraries_answer_as_kubernetes_documents_them() {
    let obj = json!({"spec": {"endpoint": "https://api.example.com:8443/v1/x?a=1&a=2", "addr": "10.1.2.3"}});
    for expr in [
        "isURL(object.spec.endpoint) && !isURL('example.com')",
        "url(object.spec.endpoint).getScheme() == 'https'",
        "url(object.spec.endpoint).getHost() == 'api.example.com:8443'",
        "url(object.spec.endpoint).getHostname() == 'api.example.com'",
        "url(object.spec.endpoint).getPort() == '8443'",
        "url(object.spec.endpoint).getEscapedPath() == '/v1/x'",
        "url(object.spec.endpoint).getQuery()['a'] == ['1', '2']",
        "url('https://[::1]:80/').getHostname() == '::1'",
        "isIP(object.spec.addr) && !isIP('::ffff:1.2.3.4') && !isIP('1.2.3')",
        "ip(object.spec.addr).family() == 4 && ip('::1').family() == 6",
        "ip('127.0.0.1').isLoopback() && ip('0.0.0.0').isUnspecified()",
        "ip('fe80::1').isLinkLocalUnicast() && ip('224.0.0.251').isLinkLocalMulticast()",
        "ip('10.0.0.1').isGlobalUnicast() && !ip('255.255.255.255').isGlobalUnicast()",
        "ip.isCanonical('2001:db8::1') && !ip.isCanonical('2001:DB8::1')",
        "string(ip('2001:db8:0:0::1')) == '2001:db8::1'",
        "ip('10.0.0.1') == ip('10.0.0.1')",
        "cidr('10.0.0.0/8').containsIP(object.spec.addr)",
        "cidr('10.0.0.0/8').containsIP(ip('10.9.9.9')) && !cidr('10.0.0.0/8').containsIP('11.0.0.1')",
        "cidr('10.0.0.0/8').containsCIDR('10.1.0.0/16') && !cidr('10.1.0.0/16').containsCIDR(cidr('10.0.0.0/8'))",
        "cidr('192.168.1.77/24').masked() == cidr('192.168.1.0/24')",
        "cidr('192.168.1.77/24').ip() == ip('192.168.1.77') && cidr('::/0').prefixLength() == 0",
        "string(cidr('192.168.1.0/24')) == '192.168.1.0/24' && isCIDR('10.0.0.0/8') && !isCIDR('10.0.0.0/33')",
    ] {
        holds(expr, &obj);
    }
    let e = eval("url('example.com')", &obj).expect_err("not a request URI");
    assert!(
        e.contains("URL parse error during conversion from string"),
        "{e}"
    );
    let e = eval("ip('nope')", &obj).expect_err("not an IP");
    assert!(
        e.contains("parse error during conversion from string"),
        "{e}"
    );
}

#[test]
fn the_semver_library_answers_as_kubernetes_documents_it() {
    let obj = json!({"spec": {"version": "1.2.3"}});
    for expr in [
        "isSemver(object.spec.version) && !isSemver('v1.0.0') && isSemver('v1.0', true)",
        "semver(object.spec.version).major() == 1 && semver('1.2.3').minor() == 2 && semver('1.2.3').patch() == 3",
        "semver('1.2.3').isGreaterThan(semver('1.2.2')) && semver('1.0.0-rc.1').isLessThan(semver('1.0.0'))",
        "semver('2.0.0').compareTo(semver('1.9.9')) == 1 && semver('1.2.3') == semver('1.2.3')",
        "semver('v01.2', true) == semver('1.2.0')",
    ] {
        holds(expr, &obj);
    }
    let e = eval("semver('1.2')", &obj).expect_err("not a version");
    assert!(e.contains("could not parse"), "{e}");
}

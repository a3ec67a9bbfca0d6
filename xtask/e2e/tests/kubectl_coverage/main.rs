//! kubectl command coverage: every command the pinned kubectl lists in its help
//! (`kubectl --help`, and each command's "Available Commands:", recursively — so
//! `create service nodeport`, `rollout undo`, `config set-context`) is run against one
//! berth cluster (berth-server with controllers and a real berth-agent) with realistic
//! arguments, and a command with no case fails the test — a new kubectl command cannot
//! silently be unsupported. `kubectl describe` of a
//! Deployment, Pod, Service, Job, StatefulSet, DaemonSet and Node shows its `Events:`.
//! The cases run in sequence on the one cluster, one module per area (`create`,
//! `workloads`, `objects`, `pods`, `issues`, `client`, `nodes` — drain last); a failing
//! case is recorded under its command's name and the next one runs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use berth_testkit::{ChildGuard, Kubectl, require_root};
use serde_json::Value;

mod client;
#[path = "../common/mod.rs"]
mod common;
mod create;
mod issues;
mod nodes;
mod objects;
mod pods;
mod workloads;

use common::cluster_with;

const BUSYBOX: &str = "berth.local/busybox:1.35";
const TESTSERVER: &str = "berth.local/testserver:v1";

/// The command tree kubectl's help lists: each path (`"create secret generic"`) with
/// whether it has subcommands.
fn command_tree(k: &Kubectl) -> BTreeMap<String, bool> {
    let top = k.ok(&["--help"]);
    let mut paths: Vec<String> = commands_in(&top, |h| h.contains("Commands") && h.ends_with(':'));
    // "Use "kubectl options" for a list of global command-line options".
    if top.contains("\"kubectl options\"") {
        paths.push("options".into());
    }
    let mut tree = BTreeMap::new();
    while let Some(path) = paths.pop() {
        let mut args: Vec<&str> = path.split(' ').collect();
        args.push("--help");
        let subs = commands_in(&k.ok(&args), |h| h == "Available Commands:");
        tree.insert(path.clone(), !subs.is_empty());
        paths.extend(subs.into_iter().map(|s| format!("{path} {s}")));
    }
    tree
}

/// The command names (`  name   description`) in the sections of `help` whose header
/// `section` accepts.
fn commands_in(help: &str, section: impl Fn(&str) -> bool) -> Vec<String> {
    let mut inside = false;
    let mut names = Vec::new();
    for line in help.lines() {
        if line.trim().is_empty() {
            inside = false;
        } else if !line.starts_with(' ') {
            inside = section(line.trim_end());
        } else if inside && let Some(entry) = line.strip_prefix("  ") {
            let name = entry.split_whitespace().next().unwrap_or_default();
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                names.push(name.to_owned());
            }
        }
    }
    names
}

/// The cases run so far and how each ended.
struct Coverage {
    covered: BTreeSet<String>,
    failures: Vec<String>,
    started: Instant,
}

impl Coverage {
    /// Runs case `command` (a kubectl command path); a panic in it is recorded as that
    /// command's failure and the next case runs.
    fn case(&mut self, command: &str, f: impl FnOnce()) {
        let t = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(f));
        eprintln!(
            "case `kubectl {command}`: {} in {:.1}s",
            if result.is_ok() { "ok" } else { "FAILED" },
            t.elapsed().as_secs_f64()
        );
        if let Err(panic) = result {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            self.failures.push(format!("`kubectl {command}`: {msg}"));
        }
        self.covered.insert(command.to_owned());
    }
}

fn contains(out: &str, want: &str) {
    assert!(out.contains(want), "expected {want:?} in:\n{out}");
}

/// Polls `ok` for up to `secs` seconds.
fn until(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn field(k: &Kubectl, args: &[&str], pointer: &str) -> Value {
    k.json(args)
        .pointer(pointer)
        .cloned()
        .unwrap_or(Value::Null)
}

/// The first line a long-running kubectl (`port-forward`, `proxy`) prints; the rest
/// of its output is drained, as it goes on printing a line per connection.
fn first_line(child: &mut ChildGuard) -> String {
    let mut out = BufReader::new(child.0.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read the first line");
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    line
}

/// One plain HTTP GET of `path` on 127.0.0.1:`port`; the whole response.
fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read the answer");
    out
}

/// Whether `kubectl describe object` shows an `Events:` section listing `reason`
/// (within 15 s: events are recorded in the background); the output when not.
fn describe_shows_event(k: &Kubectl, object: &str, reason: &str) -> Result<(), String> {
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        last = k.ok(&["describe", object]);
        let events = last.split("\nEvents:").nth(1).unwrap_or_default();
        if events
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(reason))
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(format!(
        "`kubectl describe {object}` shows no {reason} event:\n{last}"
    ))
}

#[test]
fn every_kubectl_command_has_a_case_that_works_against_berth() {
    require_root!();
    let Some(c) = cluster_with(&[]) else { return };
    let started = Instant::now();
    let k = &c.kubectl;
    let tree = command_tree(k);
    let mut cov = Coverage {
        covered: BTreeSet::new(),
        failures: Vec::new(),
        started,
    };
    let dir = c.dir.path();

    create::create_cases(&mut cov, &c);
    workloads::workload_cases(&mut cov, &c);
    objects::object_cases(&mut cov, k, dir);
    pods::pod_cases(&mut cov, &c);
    issues::issue_cases(&mut cov, k, dir);
    client::client_cases(&mut cov, &c);
    nodes::node_cases(&mut cov, &c);

    let missing: Vec<&String> = tree
        .iter()
        .filter(|(path, has_subs)| {
            // A command group (`create`, `set`) is covered by its subcommands' cases.
            !cov.covered.contains(*path) && !**has_subs
        })
        .map(|(path, _)| path)
        .collect();
    let unknown: Vec<&String> = cov
        .covered
        .iter()
        .filter(|p| !tree.contains_key(*p))
        .collect();
    eprintln!(
        "{} commands listed by kubectl, {} cases, {:.0}s",
        tree.len(),
        cov.covered.len(),
        cov.started.elapsed().as_secs_f64()
    );
    assert!(
        missing.is_empty(),
        "kubectl commands with no case (add one): {missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "cases for commands kubectl does not list (typo, or removed from kubectl): {unknown:?}"
    );
    assert!(
        cov.failures.is_empty(),
        "{} kubectl commands failed against berth:\n{}",
        cov.failures.len(),
        cov.failures.join("\n\n")
    );
}

#[test]
fn help_sections_give_the_command_names() {
    let help = "kubectl controls the Kubernetes cluster manager.\n\n\
                Basic Commands (Beginner):\n  create          Create a resource\n  \
                expose          Take a replication controller\n\n\
                Subcommands provided by plugins:\n  hello           a plugin\n\n\
                Other Commands:\n  api-resources   Print the supported API resources\n\n\
                Usage:\n  kubectl [flags] [options]\n";
    assert_eq!(
        commands_in(help, |h| h.contains("Commands") && h.ends_with(':')),
        ["create", "expose", "api-resources"]
    );
    let create = "Create a secret.\n\nAvailable Commands:\n  docker-registry   Create\n  \
                  generic           Create\n\nUsage:\n  kubectl create secret [flags]\n";
    assert_eq!(
        commands_in(create, |h| h == "Available Commands:"),
        ["docker-registry", "generic"]
    );
}

//! The cluster every e2e test starts: berth-server and one berth-agent (node
//! `node-e2e`) in a temp dir — with [`cluster_storage`], also a berth-csi driver the
//! agent uses — the real kubectl, and helpers to wait on them.

#![allow(
    dead_code,
    reason = "each test binary uses its own part of the helpers"
)]

pub mod dist;
pub mod up;

use std::time::{Duration, Instant};

use berth_testkit::{Agent, BerthServer, CsiDriver, Kubectl, workspace_bin};
use serde_json::Value;

/// Fields drop in declaration order: the agent (unmounting its pods' volumes) before
/// the CSI driver it calls, both before the server.
pub struct Cluster {
    pub kubectl: Kubectl,
    pub agent: Agent,
    pub csi: Option<CsiDriver>,
    pub server: BerthServer,
    pub dir: tempfile::TempDir,
}

pub fn cluster() -> Option<Cluster> {
    cluster_with(&["--controllers=false"])
}

/// A cluster whose berth-server runs with `args` and berth-agent with `agent_args`.
pub fn cluster_with(args: &[&str]) -> Option<Cluster> {
    cluster_full(args, &[])
}

/// `--controllers=false` among `args` keeps the controllers a node's join and its
/// pods' ServiceAccount admission need: CSR approval and signing, the `default`
/// ServiceAccounts and `kube-root-ca.crt`.
pub fn cluster_full(args: &[&str], agent_args: &[&str]) -> Option<Cluster> {
    start(args, agent_args, false)
}

/// [`cluster_full`] with node storage: a berth-csi driver for `node-e2e` (socket and
/// volume root in the cluster's temp dir, started before the agent) that the agent
/// registers and uses through `--csi-socket`.
pub fn cluster_storage(args: &[&str], agent_args: &[&str]) -> Option<Cluster> {
    start(args, agent_args, true)
}

fn start(args: &[&str], agent_args: &[&str], storage: bool) -> Option<Cluster> {
    let dir = tempfile::tempdir().expect("tempdir");
    let args: Vec<&str> = args
        .iter()
        .map(|a| {
            if *a == "--controllers=false" {
                "--controllers=csrapproving,csrsigning,serviceaccount,root-ca-cert-publisher"
            } else {
                a
            }
        })
        .collect();
    let server = BerthServer::start_with(&workspace_bin("berth-server"), dir.path(), &args);
    let kubectl = Kubectl::find(&server.kubeconfig(), dir.path())?;
    let csi = storage.then(|| CsiDriver::start_workspace(dir.path(), "node-e2e"));
    let csi_flag = csi
        .as_ref()
        .map(|d| format!("--csi-socket={}", d.socket.display()));
    let agent_args: Vec<&str> = agent_args
        .iter()
        .copied()
        .chain(csi_flag.as_deref())
        .collect();
    // The agent joins as a new node would: a bootstrap token, a CSR, its own
    // `system:node:node-e2e` certificate (Node authorizer + NodeRestriction apply).
    let agent = Agent::join_with(
        "node-e2e",
        &server.bootstrap_kubeconfig(),
        dir.path(),
        &agent_args,
    );
    let c = Cluster {
        kubectl,
        agent,
        csi,
        server,
        dir,
    };
    c.wait("the node to be Ready", Duration::from_secs(60), || {
        let out = c.kubectl.run(&["get", "node", "node-e2e", "-o", "json"]);
        let node: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        node.pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
    });
    Some(c)
}

impl Cluster {
    pub fn wait(&self, what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("timed out waiting for {what}; {}", self.diagnostics());
    }

    /// What a failed wait shows: the events of the namespace, the end of the server's
    /// log, the agent's log and the CSI driver's, if there is one.
    pub fn diagnostics(&self) -> String {
        let events = self
            .kubectl
            .run(&["get", "events", "-A", "--sort-by=.lastTimestamp"]);
        let pods = self.kubectl.run(&["get", "pods", "-A", "-o", "wide"]);
        let server_log =
            std::fs::read_to_string(self.server.dir().join("server.log")).unwrap_or_default();
        let server_tail: Vec<&str> = server_log.lines().rev().take(60).collect();
        let server_tail: Vec<&str> = server_tail.into_iter().rev().collect();
        let csi_log = self
            .csi
            .as_ref()
            .map(|d| {
                format!(
                    "\ncsi driver log:\n{}",
                    std::fs::read_to_string(d.log_file()).unwrap_or_default()
                )
            })
            .unwrap_or_default();
        format!(
            "pods:\n{}\nevents:\n{}{}\nserver log (end):\n{}\nagent log:\n{}{csi_log}",
            String::from_utf8_lossy(&pods.stdout),
            String::from_utf8_lossy(&events.stdout),
            String::from_utf8_lossy(&events.stderr),
            server_tail.join("\n"),
            std::fs::read_to_string(self.agent.log_file()).unwrap_or_default()
        )
    }

    /// Waits until nothing of any pod is left on the host (deleting a pod in a terminal
    /// phase removes the object at once; the agent cleans up after it).
    pub fn wait_clean(&self) {
        let mut left = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            left = self.agent.leftovers();
            if left.is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "left behind after deletion: {left:#?}; agent log:\n{}",
            std::fs::read_to_string(self.agent.log_file()).unwrap_or_default()
        );
    }

    /// `kubectl get <kind> <name> -o json`: the object, or `None` when the API says
    /// it does not exist.
    ///
    /// # Panics
    /// If kubectl fails for any other reason, so a "not evicted" or "nothing left"
    /// check cannot pass on a failed read.
    pub fn get(&self, kind: &str, name: &str) -> Option<Value> {
        self.try_get(kind, name)
            .unwrap_or_else(|err| panic!("{err}; {}", self.diagnostics()))
    }

    /// Like [`Self::get`], with a failure other than NotFound as `Err`.
    pub fn try_get(&self, kind: &str, name: &str) -> Result<Option<Value>, String> {
        let out = self.kubectl.run(&["get", kind, name, "-o", "json"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            if stderr.contains("(NotFound)") {
                return Ok(None);
            }
            return Err(format!(
                "kubectl get {kind} {name} failed ({}): {stderr}",
                out.status
            ));
        }
        serde_json::from_slice(&out.stdout)
            .map(Some)
            .map_err(|e| format!("kubectl get {kind} {name} printed no JSON ({e})"))
    }

    /// Pod `name`, which must exist.
    pub fn pod(&self, name: &str) -> Value {
        self.get("pod", name)
            .unwrap_or_else(|| panic!("pod {name} does not exist; {}", self.diagnostics()))
    }

    /// Waits until pod `name` satisfies `ok` (a pod not made yet is `Null`; a failed
    /// read is retried, and reported if the wait times out).
    pub fn wait_pod(&self, name: &str, what: &str, mut ok: impl FnMut(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (last, error) = match self.try_get("pod", name) {
                Ok(pod) => (pod.unwrap_or(Value::Null), None),
                Err(err) => (Value::Null, Some(err)),
            };
            if error.is_none() && ok(&last) {
                return last;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out waiting for pod {name}: {what}; its status:\n{:#}\nspec.nodeName: {}\nlast error: {error:?}\n{}",
                    last["status"],
                    last["spec"]["nodeName"],
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn container_status(pod: &Value, name: &str) -> Value {
        pod.pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["name"] == name))
            .cloned()
            .unwrap_or(Value::Null)
    }
}

pub fn ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// (reason, message) of the events about the object called `name`.
pub fn events_of(c: &Cluster, name: &str) -> Vec<(String, String)> {
    let v = c.kubectl.json(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={name}"),
    ]);
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_owned(),
                e["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

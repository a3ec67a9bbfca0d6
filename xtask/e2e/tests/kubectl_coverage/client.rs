//! Commands that run in kubectl itself or read the cluster's identity: `version`,
//! `cluster-info`, `proxy`, `kustomize`, `completion`, `options`, `plugin`, `kuberc`,
//! and every `config` subcommand (on a copy of the kubeconfig).

use std::process::Stdio;

use berth_testkit::ChildGuard;

use crate::common::Cluster;
use crate::{Coverage, contains, first_line, http_get};

/// Commands that run in kubectl itself or read the cluster's identity.
pub fn client_cases(cov: &mut Coverage, c: &Cluster) {
    let k = &c.kubectl;
    let dir = c.dir.path();
    cov.case("version", || {
        let v = k.json(&["version"]);
        let server = v["serverVersion"]["gitVersion"]
            .as_str()
            .unwrap_or_default();
        assert!(server.contains("berth"), "{v}");
    });
    cov.case("cluster-info", || {
        contains(
            &k.ok(&["cluster-info"]),
            &format!("control plane is running at {}", c.server.url()),
        );
    });
    cov.case("cluster-info dump", || {
        let out = dir.join("dump");
        k.ok(&[
            "cluster-info",
            "dump",
            "--namespaces=default",
            &format!("--output-directory={}", out.display()),
        ]);
        let deployments =
            std::fs::read_to_string(out.join("default/deployments.json")).expect("dumped");
        contains(&deployments, "\"web\"");
    });
    cov.case("proxy", || {
        let child = k
            .cmd(&["proxy", "--port=0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl proxy");
        let mut child = ChildGuard(child);
        let line = first_line(&mut child);
        let port: u16 = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("Starting to serve on 127.0.0.1:PORT: {line}"));
        contains(
            &http_get(port, "/api/v1/namespaces/default/services/web"),
            "\"clusterIP\"",
        );
    });
    cov.case("kustomize", || {
        let kdir = dir.join("kustomize");
        std::fs::create_dir_all(&kdir).expect("mkdir");
        std::fs::write(
            kdir.join("kustomization.yaml"),
            "namePrefix: k-\nconfigMapGenerator:\n- name: gen\n  literals: [a=b]\n",
        )
        .expect("write");
        let out = k.ok(&["kustomize", kdir.to_str().expect("utf-8")]);
        contains(&out, "name: k-gen-");
        contains(
            &k.ok(&["apply", "-k", kdir.to_str().expect("utf-8")]),
            "created",
        );
    });
    cov.case("completion", || {
        contains(&k.ok(&["completion", "bash"]), "__start_kubectl");
    });
    cov.case("options", || {
        contains(&k.ok(&["options"]), "--kubeconfig");
    });
    cov.case("plugin list", || {
        let plugins = dir.join("plugins");
        std::fs::create_dir_all(&plugins).expect("mkdir");
        let plugin = plugins.join("kubectl-hello");
        std::fs::write(&plugin, "#!/bin/sh\necho hello from a plugin\n").expect("write");
        let mut perm = std::fs::metadata(&plugin).expect("stat").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&plugin, perm).expect("chmod");
        let path = format!("{}:/usr/bin:/bin", plugins.display());
        let out = k
            .cmd(&["plugin", "list"])
            .env("PATH", &path)
            .output()
            .expect("kubectl plugin list");
        assert!(
            out.status.success(),
            "kubectl plugin list: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        contains(&String::from_utf8_lossy(&out.stdout), "kubectl-hello");
        let out = k
            .cmd(&["hello"])
            .env("PATH", &path)
            .output()
            .expect("plugin");
        assert!(
            out.status.success(),
            "kubectl hello: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "hello from a plugin\n"
        );
    });
    let kuberc = dir.join("kuberc");
    let kuberc_flag = format!("--kuberc={}", kuberc.display());
    cov.case("kuberc set", || {
        std::fs::write(
            &kuberc,
            "apiVersion: kubectl.config.k8s.io/v1beta1\nkind: Preference\n",
        )
        .expect("write kuberc");
        k.ok(&[
            "kuberc",
            "set",
            &kuberc_flag,
            "--section=defaults",
            "--command=get",
            "--option=output=wide",
        ]);
    });
    cov.case("kuberc view", || {
        let out = k.ok(&["kuberc", "view", &kuberc_flag]);
        contains(&out, "output");
        contains(&out, "wide");
        // The preference applies to the cluster's commands.
        contains(&k.ok(&[&kuberc_flag, "get", "pods", "shell"]), "NODE");
    });
    config_cases(cov, c);
}

/// `kubectl config`, on a copy of the cluster's kubeconfig.
fn config_cases(cov: &mut Coverage, c: &Cluster) {
    let k = &c.kubectl;
    let file = c.dir.path().join("config-copy");
    std::fs::copy(c.server.kubeconfig(), &file).expect("copy the kubeconfig");
    let flag = format!("--kubeconfig={}", file.display());
    let cfg = |args: &[&str]| {
        let mut a = vec!["config", flag.as_str()];
        a.extend_from_slice(args);
        k.ok(&a)
    };
    let current = cfg(&["current-context"]).trim().to_owned();
    cov.case("config current-context", || {
        assert!(!current.is_empty());
    });
    cov.case("config view", || {
        contains(&cfg(&["view", "--minify"]), &c.server.url());
    });
    cov.case("config get-contexts", || {
        contains(&cfg(&["get-contexts", "-o", "name"]), &current);
    });
    cov.case("config get-clusters", || {
        assert!(cfg(&["get-clusters"]).lines().count() >= 2);
    });
    cov.case("config get-users", || {
        assert!(cfg(&["get-users"]).lines().count() >= 2);
    });
    cov.case("config set-cluster", || {
        cfg(&["set-cluster", "spare", "--server=https://127.0.0.1:1"]);
        contains(&cfg(&["get-clusters"]), "spare");
    });
    cov.case("config set-credentials", || {
        cfg(&["set-credentials", "tester", "--token=berth-test-token"]);
        contains(&cfg(&["get-users"]), "tester");
    });
    cov.case("config set-context", || {
        cfg(&["set-context", "spare", "--cluster=spare", "--user=tester"]);
        contains(&cfg(&["get-contexts", "-o", "name"]), "spare");
    });
    cov.case("config set", || {
        cfg(&["set", "contexts.spare.namespace", "team-a"]);
        contains(&cfg(&["view"]), "namespace: team-a");
    });
    cov.case("config unset", || {
        cfg(&["unset", "contexts.spare.namespace"]);
        assert!(!cfg(&["view"]).contains("namespace: team-a"));
    });
    cov.case("config rename-context", || {
        cfg(&["rename-context", "spare", "renamed"]);
        contains(&cfg(&["get-contexts", "-o", "name"]), "renamed");
    });
    cov.case("config use-context", || {
        cfg(&["use-context", "renamed"]);
        assert_eq!(cfg(&["current-context"]).trim(), "renamed");
        cfg(&["use-context", &current]);
        // The restored context reaches berth again.
        contains(
            &k.ok(&[&flag, "get", "namespace", "team-a", "-o", "name"]),
            "team-a",
        );
    });
    cov.case("config delete-context", || {
        cfg(&["delete-context", "renamed"]);
        assert!(!cfg(&["get-contexts", "-o", "name"]).contains("renamed"));
    });
    cov.case("config delete-cluster", || {
        cfg(&["delete-cluster", "spare"]);
        assert!(!cfg(&["get-clusters"]).contains("spare"));
    });
    cov.case("config delete-user", || {
        cfg(&["delete-user", "tester"]);
        assert!(!cfg(&["get-users"]).contains("tester"));
    });
}

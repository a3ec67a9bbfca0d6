//! The systemd units of a release tarball: `berth-server.service`, `berth-agent.service`
//! and `berth-csi.service`, each running its binary with the flags `cargo xtask up`
//! gives it — taken from `up`'s own [`Layout`] at its defaults, so the two never drift
//! — and the per-host values (node name, pod range, advertised address) from an
//! environment file `install.sh` writes.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Parser;

use crate::commands::up;

/// Where `install.sh` puts things (at its default `--prefix /usr/local`; it rewrites
/// the units for another prefix).
#[derive(Debug, Clone)]
pub struct Installed {
    /// berth-server, berth-agent, berth-runtime, berth-csi.
    pub bin: PathBuf,
    /// The eBPF object and the pause image.
    pub lib: PathBuf,
    /// The environment files and `berth-agent`'s bootstrap kubeconfig.
    pub config: PathBuf,
}

impl Default for Installed {
    fn default() -> Self {
        Self {
            bin: "/usr/local/bin".into(),
            lib: "/usr/local/lib/berth".into(),
            config: "/etc/berth".into(),
        }
    }
}

impl Installed {
    pub fn ebpf_object(&self) -> PathBuf {
        self.lib.join(super::EBPF_OBJECT)
    }
    pub fn pause_image(&self) -> PathBuf {
        self.lib.join("images/pause")
    }
    pub fn agent_env(&self) -> PathBuf {
        self.config.join("berth-agent.env")
    }
    pub fn server_env(&self) -> PathBuf {
        self.config.join("berth-server.env")
    }
}

/// The environment variables the units read, as `install.sh` writes them.
pub const NODE_NAME: &str = "${BERTH_NODE_NAME}";
pub const POD_CIDR: &str = "${BERTH_POD_CIDR}";
pub const ADVERTISE_ADDRESS: &str = "${BERTH_ADVERTISE_ADDRESS}";
/// Further flags, split into words (`--node-ip 192.168.1.7`).
pub const AGENT_ARGS: &str = "$BERTH_AGENT_ARGS";
pub const SERVER_ARGS: &str = "$BERTH_SERVER_ARGS";

/// `cargo xtask up`'s flags at their defaults.
#[derive(Debug, Parser)]
struct Defaults {
    #[command(flatten)]
    up: up::Args,
}

fn up_defaults() -> Result<up::Args> {
    Ok(Defaults::try_parse_from(["dist"])?.up)
}

/// One unit: its file name and its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub name: &'static str,
    pub description: &'static str,
    pub argv: Vec<String>,
    /// Units it starts after (and wants).
    pub after: Vec<&'static str>,
    pub env_file: PathBuf,
    /// The agent's own processes only: a restart must not take the pods' processes with it.
    pub agent: bool,
}

fn bin(installed: &Installed, name: &str) -> String {
    installed.bin.join(name).display().to_string()
}

/// The three units, with the flags `up` runs each component with.
pub fn units(installed: &Installed) -> Result<Vec<Unit>> {
    let args = up_defaults()?;
    let layout = up::Layout::new(&args)?;
    let mut server = vec![bin(installed, "berth-server")];
    server.extend(layout.server_args(ADVERTISE_ADDRESS));
    server.push(SERVER_ARGS.into());

    let mut agent = vec![bin(installed, "berth-agent")];
    agent.extend(agent_args(&layout, &args, installed));

    let mut csi = vec![bin(installed, "berth-csi")];
    csi.extend(layout.csi_args(NODE_NAME));
    Ok(vec![
        Unit {
            name: "berth-server.service",
            description: "berth control plane (apiserver, scheduler, controllers)",
            argv: server,
            after: vec!["network-online.target"],
            env_file: installed.server_env(),
            agent: false,
        },
        Unit {
            name: "berth-csi.service",
            description: "berth CSI driver (host-path and local volumes)",
            argv: csi,
            after: vec!["network-online.target"],
            env_file: installed.agent_env(),
            agent: false,
        },
        Unit {
            name: "berth-agent.service",
            description: "berth node agent (pods, Service load balancing, DNS)",
            argv: agent,
            after: vec!["network-online.target", "berth-csi.service"],
            env_file: installed.agent_env(),
            agent: true,
        },
    ])
}

/// `up`'s agent flags, as `up` completes them for an agent that joins with a bootstrap
/// token; the node name and pod range from the environment file.
fn agent_args(layout: &up::Layout, args: &up::Args, installed: &Installed) -> Vec<String> {
    let mut argv = layout.agent_args(NODE_NAME);
    if let Some(i) = argv.iter().position(|a| a == "--kubeconfig") {
        argv[i + 1] = layout.agent_kubeconfig().display().to_string();
    }
    if let Some(i) = argv.iter().position(|a| a == "--pod-cidr") {
        argv[i + 1] = POD_CIDR.into();
    }
    let d = |p: &Path| p.display().to_string();
    argv.extend([
        "--bootstrap-kubeconfig".into(),
        d(&bootstrap_kubeconfig(layout)),
        "--preload-images".into(),
        d(&installed.pause_image()),
        "--ebpf-object".into(),
        d(&installed.ebpf_object()),
        "--bpf-pin-dir".into(),
        d(&args.bpf_pin_dir),
        AGENT_ARGS.into(),
    ]);
    argv
}

/// Where the agent's bootstrap kubeconfig is (`install.sh` writes it), as `up` puts it.
pub fn bootstrap_kubeconfig(layout: &up::Layout) -> PathBuf {
    layout
        .agent_kubeconfig()
        .with_file_name("bootstrap.kubeconfig")
}

/// A word of `ExecStart=`, quoted when it has to be (systemd's rules: double quotes,
/// backslash escapes).
fn quote(word: &str) -> String {
    if !word.is_empty()
        && !word
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | ';'))
    {
        return word.to_owned();
    }
    let mut out = String::from("\"");
    for c in word.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `$VAR`: systemd splits it into words (a list of further flags), not a flag's value.
fn is_word_list(word: &str) -> bool {
    word.starts_with('$') && !word.starts_with("${")
}

/// The unit file's text.
pub fn render(unit: &Unit) -> String {
    let mut exec = String::new();
    let mut words = unit.argv.iter().map(|w| quote(w)).peekable();
    if let Some(first) = words.next() {
        exec.push_str(&first);
    }
    // One flag (with its value) a line.
    while let Some(word) = words.next() {
        exec.push_str(" \\\n    ");
        exec.push_str(&word);
        if word.starts_with("--")
            && !word.contains('=')
            && let Some(value) = words.next_if(|w| !w.starts_with("--") && !is_word_list(w))
        {
            exec.push(' ');
            exec.push_str(&value);
        }
    }
    let after = unit.after.join(" ");
    let mut text = format!(
        "# Installed by berth's install.sh (docs/install.md); the flags are those of\n\
         # `cargo xtask up`, the per-host values come from the EnvironmentFile.\n\
         [Unit]\n\
         Description={}\n\
         After={after}\n\
         Wants={after}\n\
         \n\
         [Service]\n\
         Type=simple\n\
         EnvironmentFile=-{}\n",
        unit.description,
        unit.env_file.display(),
    );
    if unit.agent {
        // The agent makes the pods' cgroups itself (under berth/kubepods), and its
        // restart must leave the pods' processes running, as a kubelet's does.
        text.push_str("Delegate=yes\nKillMode=process\nExecStartPre=-/sbin/modprobe overlay\n");
    }
    text.push_str(&format!(
        "ExecStart={exec}\n\
         Restart=always\n\
         RestartSec=5\n\
         LimitNOFILE=1048576\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    ));
    text
}

/// `ExecStart=`'s words, read back as systemd reads them (for the tests).
#[cfg(test)]
fn exec_start(text: &str) -> Vec<String> {
    let joined = text.replace("\\\n", " ");
    let line = joined
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => word.extend(chars.next()),
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(units: &[Unit], name: &str) -> Unit {
        units
            .iter()
            .find(|u| u.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no unit {name}"))
    }

    #[test]
    fn every_unit_runs_with_the_flags_up_gives_it() {
        let installed = Installed::default();
        let units = units(&installed).expect("units");
        let args = up_defaults().expect("defaults");
        let layout = up::Layout::new(&args).expect("layout");

        let server = render(&unit(&units, "berth-server.service"));
        let mut want = vec!["/usr/local/bin/berth-server".to_owned()];
        want.extend(layout.server_args("${BERTH_ADVERTISE_ADDRESS}"));
        want.push("$BERTH_SERVER_ARGS".into());
        assert_eq!(exec_start(&server), want);
        assert!(server.contains("EnvironmentFile=-/etc/berth/berth-server.env"));

        let agent = render(&unit(&units, "berth-agent.service"));
        let words = exec_start(&agent);
        assert_eq!(words[0], "/usr/local/bin/berth-agent");
        // Every flag of up's agent, with the values up gives them — but for the
        // per-host ones and the kubeconfig, which up swaps for the agent's own too.
        let up_args = layout.agent_args("${BERTH_NODE_NAME}");
        let mut i = 0;
        while i < up_args.len() {
            let flag = &up_args[i];
            let at = words
                .iter()
                .position(|w| w == flag)
                .unwrap_or_else(|| panic!("the agent unit lacks {flag}: {words:?}"));
            let value = up_args.get(i + 1).filter(|v| !v.starts_with("--"));
            if let Some(value) = value {
                let expected = match flag.as_str() {
                    "--kubeconfig" => "/var/lib/berth/agent/kubelet.kubeconfig",
                    "--pod-cidr" => "${BERTH_POD_CIDR}",
                    _ => value.as_str(),
                };
                assert_eq!(words[at + 1], expected, "{flag}");
                i += 2;
            } else {
                i += 1;
            }
        }
        for (flag, value) in [
            (
                "--bootstrap-kubeconfig",
                "/var/lib/berth/agent/bootstrap.kubeconfig",
            ),
            ("--preload-images", "/usr/local/lib/berth/images/pause"),
            ("--ebpf-object", "/usr/local/lib/berth/berth-ebpf-programs"),
            ("--bpf-pin-dir", "/sys/fs/bpf/berth"),
            ("--hostname-override", "${BERTH_NODE_NAME}"),
            ("--host-services-cgroup", "/"),
        ] {
            let at = words.iter().position(|w| w == flag).expect(flag);
            assert_eq!(words[at + 1], value, "{flag}");
        }
        assert_eq!(words.last().map(String::as_str), Some("$BERTH_AGENT_ARGS"));
        assert!(agent.contains("KillMode=process"), "{agent}");
        // One flag and its value a line; the word list alone on the last.
        assert!(
            agent.contains("\n    --hostname-override ${BERTH_NODE_NAME} \\\n"),
            "{agent}"
        );
        assert!(agent.contains("\n    $BERTH_AGENT_ARGS\n"), "{agent}");
        assert!(agent.contains("After=network-online.target berth-csi.service"));

        let csi = render(&unit(&units, "berth-csi.service"));
        let mut want = vec!["/usr/local/bin/berth-csi".to_owned()];
        want.extend(layout.csi_args("${BERTH_NODE_NAME}"));
        assert_eq!(exec_start(&csi), want);
        assert!(csi.contains("EnvironmentFile=-/etc/berth/berth-agent.env"));
    }

    #[test]
    fn words_that_need_it_are_quoted_and_read_back_whole() {
        let unit = Unit {
            name: "x.service",
            description: "x",
            argv: vec![
                "/bin/x".into(),
                "--a".into(),
                "two words".into(),
                "--b".into(),
                "say \"hi\"".into(),
                "--flag".into(),
                "".into(),
            ],
            after: vec![],
            env_file: "/etc/x".into(),
            agent: false,
        };
        let text = render(&unit);
        assert_eq!(exec_start(&text), unit.argv);
        assert!(text.contains("--a \"two words\""), "{text}");
    }
}

//! The runtime side of CNI (what libcni does): load a conflist, and invoke its
//! plugins found on `CNI_PATH` with `CNI_*` variables and the per-plugin config on
//! stdin — ADD in order, each getting the previous result as `prevResult`; DEL and
//! CHECK in reverse with the cached ADD result; GC and STATUS over the list. The
//! agent uses this to attach pods; tests and benches use it to drive any plugin
//! the way a runtime would.
//!
//! Plugins are spawned from the calling thread, so they run in its network
//! namespace: call from a thread that entered the node namespace to use another.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::{Map, Value, json};

use crate::spec::{Attachment, CniError, Version, code};

/// A network configuration list (`.conflist`).
#[derive(Clone, Debug)]
pub struct ConfList {
    pub name: String,
    /// The version every plugin is invoked with: the highest supported entry of
    /// `cniVersions`, else `cniVersion`.
    pub cni_version: String,
    pub plugins: Vec<Map<String, Value>>,
}

impl ConfList {
    /// Parses a conflist.
    pub fn parse(bytes: &[u8]) -> Result<Self, CniError> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| CniError::new(code::DECODING_FAILURE, format!("invalid conflist: {e}")))?;
        let invalid =
            |m: &str| CniError::new(code::INVALID_CONFIG, format!("invalid conflist: {m}"));
        let name = v
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("no name"))?
            .to_string();
        let listed: Vec<Version> = v
            .get("cniVersions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().and_then(|s| Version::parse(s).ok()))
            .collect();
        let cni_version = match listed.into_iter().max() {
            Some(v) => v.as_str().to_string(),
            None => v
                .get("cniVersion")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("no cniVersion"))?
                .to_string(),
        };
        let plugins: Vec<Map<String, Value>> = v
            .get("plugins")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("no plugins"))?
            .iter()
            .map(|p| {
                p.as_object()
                    .cloned()
                    .ok_or_else(|| invalid("a plugin entry is not an object"))
            })
            .collect::<Result<_, _>>()?;
        if plugins.is_empty() {
            return Err(invalid("plugins is empty"));
        }
        Ok(Self {
            name,
            cni_version,
            plugins,
        })
    }

    /// Loads a conflist file.
    pub fn load(path: &Path) -> Result<Self, CniError> {
        let bytes = std::fs::read(path).map_err(|e| {
            CniError::new(
                code::IO_FAILURE,
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        Self::parse(&bytes)
    }

    /// The stdin for plugin `i`: its entry plus name, cniVersion, prevResult and the
    /// `runtimeConfig` of the capabilities it declares.
    fn plugin_conf(
        &self,
        i: usize,
        prev: Option<&Value>,
        attach: Option<&Attach>,
        extra: &[(&str, Value)],
    ) -> Value {
        let mut conf = self.plugins[i].clone();
        if let (Some(caps), Some(attach)) =
            (conf.get("capabilities").and_then(Value::as_object), attach)
        {
            let runtime: Map<String, Value> = caps
                .iter()
                .filter(|(_, on)| on.as_bool() == Some(true))
                .filter_map(|(cap, _)| {
                    attach
                        .capability_args
                        .get(cap)
                        .map(|v| (cap.clone(), v.clone()))
                })
                .collect();
            if !runtime.is_empty() {
                conf.insert("runtimeConfig".into(), Value::Object(runtime));
            }
        }
        conf.insert("name".into(), json!(self.name));
        conf.insert("cniVersion".into(), json!(self.cni_version));
        if let Some(prev) = prev {
            conf.insert("prevResult".into(), prev.clone());
        }
        for (k, v) in extra {
            conf.insert((*k).to_string(), v.clone());
        }
        Value::Object(conf)
    }

    fn plugin_type(&self, i: usize) -> Result<&str, CniError> {
        self.plugins[i]
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                CniError::new(
                    code::INVALID_CONFIG,
                    format!("plugin {i} of {} has no type", self.name),
                )
            })
    }
}

/// The container side of an invocation.
#[derive(Clone, Debug)]
pub struct Attach {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// `CNI_ARGS` (`K=V;K=V`).
    pub args: String,
    /// Capability arguments (e.g. `portMappings`, `bandwidth`): each plugin whose
    /// `capabilities` names one gets it in `runtimeConfig`, as libcni does.
    pub capability_args: Map<String, Value>,
}

/// Finds and runs plugins.
#[derive(Clone, Debug)]
pub struct Runner {
    pub cni_path: Vec<PathBuf>,
}

impl Runner {
    pub fn new(cni_path: Vec<PathBuf>) -> Self {
        Self { cni_path }
    }

    /// The plugin binary `plugin` on the CNI path.
    pub fn find(&self, plugin: &str) -> Result<PathBuf, CniError> {
        self.cni_path
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                CniError::new(
                    code::INVALID_CONFIG,
                    format!("plugin {plugin:?} not found in {:?}", self.cni_path),
                )
            })
    }

    /// Runs one plugin; returns what it printed on success (JSON), or its error.
    pub fn invoke(
        &self,
        plugin: &str,
        verb: &str,
        attach: Option<&Attach>,
        conf: &Value,
    ) -> Result<Option<Value>, CniError> {
        let binary = self.find(plugin)?;
        let path = std::env::join_paths(&self.cni_path)
            .map_err(|e| CniError::new(code::INVALID_CONFIG, format!("bad CNI_PATH: {e}")))?;
        let mut cmd = Command::new(&binary);
        cmd.env("CNI_COMMAND", verb).env("CNI_PATH", path);
        if let Some(a) = attach {
            cmd.env("CNI_CONTAINERID", &a.container_id)
                .env("CNI_NETNS", &a.netns)
                .env("CNI_IFNAME", &a.ifname)
                .env("CNI_ARGS", &a.args);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                CniError::new(
                    code::IO_FAILURE,
                    format!("cannot run {}: {e}", binary.display()),
                )
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(conf.to_string().as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|e| CniError::new(code::IO_FAILURE, format!("waiting for {plugin}: {e}")))?;
        let printed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        if out.status.success() {
            Ok(printed)
        } else {
            Err(printed
                .as_ref()
                .and_then(CniError::from_json)
                .unwrap_or_else(|| {
                    CniError::new(
                        code::IO_FAILURE,
                        format!("{plugin} {verb} failed: {}", out.status),
                    )
                    .details(String::from_utf8_lossy(&out.stderr).trim().to_string())
                }))
        }
    }

    /// ADD through the whole list; returns the final result.
    pub fn add(&self, list: &ConfList, attach: &Attach) -> Result<Value, CniError> {
        let mut prev: Option<Value> = None;
        for i in 0..list.plugins.len() {
            let conf = list.plugin_conf(i, prev.as_ref(), Some(attach), &[]);
            let result = self.invoke(list.plugin_type(i)?, "ADD", Some(attach), &conf)?;
            prev = Some(result.ok_or_else(|| {
                CniError::new(
                    code::DECODING_FAILURE,
                    format!(
                        "plugin {} printed no result",
                        list.plugin_type(i).unwrap_or("?")
                    ),
                )
            })?);
        }
        prev.ok_or_else(|| CniError::new(code::INVALID_CONFIG, "empty plugin list"))
    }

    /// DEL through the list in reverse, with the ADD result as prevResult.
    pub fn del(
        &self,
        list: &ConfList,
        attach: &Attach,
        prev: Option<&Value>,
    ) -> Result<(), CniError> {
        for i in (0..list.plugins.len()).rev() {
            let conf = list.plugin_conf(i, prev, Some(attach), &[]);
            self.invoke(list.plugin_type(i)?, "DEL", Some(attach), &conf)?;
        }
        Ok(())
    }

    /// CHECK through the list, with the ADD result as prevResult.
    pub fn check(&self, list: &ConfList, attach: &Attach, prev: &Value) -> Result<(), CniError> {
        for i in 0..list.plugins.len() {
            let conf = list.plugin_conf(i, Some(prev), Some(attach), &[]);
            self.invoke(list.plugin_type(i)?, "CHECK", Some(attach), &conf)?;
        }
        Ok(())
    }

    /// GC: every plugin learns which attachments are still valid.
    pub fn gc(&self, list: &ConfList, valid: &[Attachment]) -> Result<(), CniError> {
        let valid: Vec<Value> = valid
            .iter()
            .map(|a| json!({"containerID": a.container_id, "ifname": a.ifname}))
            .collect();
        for i in 0..list.plugins.len() {
            let valid = [("cni.dev/valid-attachments", Value::Array(valid.clone()))];
            let conf = list.plugin_conf(i, None, None, &valid);
            self.invoke(list.plugin_type(i)?, "GC", None, &conf)?;
        }
        Ok(())
    }

    /// STATUS of every plugin in the list.
    pub fn status(&self, list: &ConfList) -> Result<(), CniError> {
        for i in 0..list.plugins.len() {
            self.invoke(
                list.plugin_type(i)?,
                "STATUS",
                None,
                &list.plugin_conf(i, None, None, &[]),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_picks_the_highest_supported_cni_versions_entry() {
        let list = ConfList::parse(
            br#"{"cniVersion":"0.4.0","cniVersions":["0.4.0","1.1.0","9.0.0"],"name":"n",
                "plugins":[{"type":"berth-cni"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        )
        .expect("valid");
        assert_eq!(list.cni_version, "1.1.0");
        let attach = Attach {
            container_id: "c".into(),
            netns: "/run/netns/p".into(),
            ifname: "eth0".into(),
            args: String::new(),
            capability_args: json!({"portMappings": [{"hostPort": 8080}], "bandwidth": {}})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        };
        let conf = list.plugin_conf(1, Some(&json!({"ips": []})), Some(&attach), &[]);
        assert_eq!(
            conf["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 8080}]}),
            "only declared capabilities"
        );
        assert!(
            list.plugin_conf(0, None, Some(&attach), &[])
                .get("runtimeConfig")
                .is_none()
        );
        assert_eq!(conf["name"], "n");
        assert_eq!(conf["type"], "portmap");
        assert_eq!(conf["prevResult"], json!({"ips": []}));
    }

    #[test]
    fn bad_conflists_are_refused() {
        assert_eq!(
            ConfList::parse(b"[").expect_err("json").code,
            code::DECODING_FAILURE
        );
        assert_eq!(
            ConfList::parse(br#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#)
                .expect_err("empty")
                .code,
            code::INVALID_CONFIG
        );
    }
}

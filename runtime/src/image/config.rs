//! What an image's config contributes to a container: the command (Kubernetes' rules for
//! `command`/`args` against `Entrypoint`/`Cmd`), environment, working directory and user
//! (names looked up in the image's own `/etc/passwd` and `/etc/group`).

use std::path::{Path, PathBuf};

use super::Error;

/// Kubernetes' merge (see "Define a Command and Arguments for a Container"):
/// no command and no args → Entrypoint + Cmd; command → command + args; only args →
/// Entrypoint + args.
pub fn merge_command(
    entrypoint: &[String],
    cmd: &[String],
    command: &[String],
    args: &[String],
) -> Vec<String> {
    match (command.is_empty(), args.is_empty()) {
        (true, true) => entrypoint.iter().chain(cmd).cloned().collect(),
        (false, _) => command.iter().chain(args).cloned().collect(),
        (true, false) => entrypoint.iter().chain(args).cloned().collect(),
    }
}

/// Image env first, then the container's, a later key replacing an earlier one in place.
pub fn merge_env(image: &[String], container: &[(String, String)]) -> Vec<String> {
    let mut out: Vec<String> = image.to_vec();
    for (k, v) in container {
        let entry = format!("{k}={v}");
        match out
            .iter_mut()
            .find(|e| e.split_once('=').map(|(key, _)| key) == Some(k.as_str()))
        {
            Some(slot) => *slot = entry,
            None => out.push(entry),
        }
    }
    out
}

/// A resolved user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// Finds `rel` in the first of `layers` (top layer first) that has it.
fn find_file(layers: &[PathBuf], rel: &str) -> Option<String> {
    layers
        .iter()
        .find_map(|l| std::fs::read_to_string(l.join(rel)).ok())
}

impl ImageUser {
    /// Resolves `user[:group]` (names or numbers) against the image's files; `layers` are
    /// the rootfs directories, top first (or just the merged rootfs).
    pub fn resolve(spec: &str, layers: &[PathBuf]) -> Result<Self, Error> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let passwd = find_file(layers, "etc/passwd").unwrap_or_default();
        let groups = find_file(layers, "etc/group").unwrap_or_default();
        let (uid, mut gid, name) = if user.is_empty() {
            (0, 0, Some("root".to_string()))
        } else if let Ok(uid) = user.parse::<u32>() {
            let entry = passwd
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 3 && f[2] == user);
            match entry {
                Some(f) => (uid, f[3].parse().unwrap_or(0), Some(f[0].to_string())),
                None => (uid, 0, None),
            }
        } else {
            let f = passwd
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 3 && f[0] == user)
                .ok_or_else(|| {
                    Error::Unsupported(format!(
                        "user {user:?}: no such user in the image's /etc/passwd"
                    ))
                })?;
            let uid = f[2].parse().map_err(|_| {
                Error::Unsupported(format!("user {user:?}: bad uid in /etc/passwd"))
            })?;
            (uid, f[3].parse().unwrap_or(0), Some(user.to_string()))
        };
        if let Some(g) = group {
            gid = match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => groups
                    .lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|f| f.len() > 2 && f[0] == g)
                    .and_then(|f| f[2].parse().ok())
                    .ok_or_else(|| {
                        Error::Unsupported(format!(
                            "group {g:?}: no such group in the image's /etc/group"
                        ))
                    })?,
            };
        }
        let mut additional = Vec::new();
        if let Some(name) = name {
            for f in groups.lines().map(|l| l.split(':').collect::<Vec<_>>()) {
                if f.len() > 3
                    && f[3].split(',').any(|m| m == name)
                    && let Ok(g) = f[2].parse::<u32>()
                    && g != gid
                {
                    additional.push(g);
                }
            }
        }
        Ok(Self {
            uid,
            gid,
            additional_gids: additional,
        })
    }
}

/// The image's working directory, `/` when unset.
pub fn working_dir(image: Option<&str>, container: Option<&str>) -> PathBuf {
    container
        .filter(|s| !s.is_empty())
        .or(image.filter(|s| !s.is_empty()))
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new("/").to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn command_and_args_merge_as_kubernetes() {
        let ep = v(&["/ep"]);
        let cmd = v(&["a"]);
        assert_eq!(merge_command(&ep, &cmd, &[], &[]), v(&["/ep", "a"]));
        assert_eq!(merge_command(&ep, &cmd, &v(&["/c"]), &[]), v(&["/c"]));
        assert_eq!(
            merge_command(&ep, &cmd, &v(&["/c"]), &v(&["x"])),
            v(&["/c", "x"])
        );
        assert_eq!(merge_command(&ep, &cmd, &[], &v(&["x"])), v(&["/ep", "x"]));
    }

    #[test]
    fn env_overrides_in_place() {
        let merged = merge_env(
            &v(&["PATH=/bin", "A=1"]),
            &[("A".into(), "2".into()), ("B".into(), "3".into())],
        );
        assert_eq!(merged, v(&["PATH=/bin", "A=2", "B=3"]));
    }

    #[test]
    fn users_resolve_from_the_image() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("etc")).expect("mkdir");
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nwww:x:33:33::/var/www:/bin/false\n",
        )
        .expect("passwd");
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nwww:x:33:\nextra:x:500:www\n",
        )
        .expect("group");
        let layers = vec![dir.path().to_path_buf()];
        let u = ImageUser::resolve("www", &layers).expect("www");
        assert_eq!(
            (u.uid, u.gid, u.additional_gids.clone()),
            (33, 33, vec![500])
        );
        let u = ImageUser::resolve("1000:extra", &layers).expect("numeric");
        assert_eq!((u.uid, u.gid), (1000, 500));
        let err = ImageUser::resolve("nobody-here", &layers).expect_err("unknown");
        assert!(err.to_string().contains("no such user"), "{err}");
    }
}

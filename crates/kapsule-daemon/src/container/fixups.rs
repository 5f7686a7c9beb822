//! What a new container gets once, right after it first started, in this order (the original
//! daemon's, plus the host name): `/.kapsule` (Konsole's marker), `systemd-networkd-wait-online`
//! masked, the container's name in `/etc/hosts`, the image's own `/.kapsule/init/*` scripts,
//! file capabilities on `newuidmap`/`newgidmap`, the cgroupfs drop-in for rootless podman, and,
//! in an unprivileged container, the nested runtimes' networking.
//!
//! Only the marker is required; every other step that fails is a warning and creation goes on,
//! as a container without it still works for most of what users do.

use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use kapsule_rootfs::Meta;

use crate::container::Containers;
use crate::container::error::Error;
use crate::container::files::ContainerFiles;
use crate::container::files::{IfMissing, edit_file};
use crate::operation::{Failure, MessageKind, Notes};

/// Where an image keeps the scripts to run once when a container is made from it.
pub(crate) const INIT_DIR: &str = "/.kapsule/init";

/// How long one init script may run. Key rings and package caches take a while; a script still
/// running then is reported and left alone.
const INIT_SCRIPT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The podman drop-in: its default cgroup manager is systemd, which only works with a systemd
/// user session podman can reach; users entering a container have none, so rootless podman
/// would fail to make its cgroups.
pub(crate) const PODMAN_DROP_IN: (&str, &str) = (
    "/etc/containers/containers.conf.d/50-kapsule-cgroupfs.conf",
    "# Written by Kapsule when the container was created: rootless podman here has no systemd\n\
     # user session to manage its cgroups, so it manages them itself.\n\
     [engine]\n\
     cgroup_manager = \"cgroupfs\"\n",
);

/// The helpers rootless podman maps its user namespaces with, and the capability each needs.
/// Images lose file capabilities on the way (tarballs without xattrs, lxc/lxc-ci#955), so they
/// are set again. Helpers an image makes setuid-root instead (Debian) are left alone: on a
/// setuid-root file, capabilities take the place of root's (capabilities(7)), and newuidmap
/// then fails to open the map files.
const ID_MAP_HELPERS: [(&str, u32); 2] = [("/usr/bin/newuidmap", CAP_SETUID), ("/usr/bin/newgidmap", CAP_SETGID)];
const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;

/// Every step, in order. `session_mode` containers run their own systemd user session and keep
/// podman's default cgroup manager.
pub(crate) async fn apply(
    containers: &Containers,
    notes: Notes<'_>,
    name: &str,
    session_mode: bool,
) -> Result<(), Failure> {
    let files = ContainerFiles::open(containers, name).await?;
    // Konsole detects Kapsule containers by /.kapsule; it exists even without the host mount.
    files
        .with_root(|root| root.ensure_dir("/.kapsule", Meta::new(0, 0, 0o755)))
        .await
        .map_err(|e| Failure::Failed(format!("Cannot create /.kapsule: {}", e.reason())))?;
    // Masked, as systemctl mask would: with the host's network there is nothing to wait for, and
    // the unit would stall boot for 30 s.
    let masked = files
        .with_root(|root| root.symlink("/etc/systemd/system/systemd-networkd-wait-online.service", "/dev/null"))
        .await;
    if let Err(e) = masked {
        notes
            .warn(&format!("Could not mask systemd-networkd-wait-online: {}", e.reason()))
            .await;
    }
    // On the host's network no DNS server knows the container's name, and sudo, among others,
    // looks it up on every run ("unable to resolve host").
    let hosts_meta = Meta::new(0, 0, 0o644);
    if let Err(e) = edit_file(&files, "/etc/hosts", IfMissing::Create(hosts_meta), |hosts| {
        hosts_with_name(hosts, name)
    })
    .await
    {
        notes
            .warn(&format!("Could not add '{name}' to /etc/hosts: {}", e.message()))
            .await;
    }
    run_init_scripts(containers, &files, notes).await?;
    if let Err(e) = set_id_map_capabilities(&files).await {
        notes
            .warn(&format!(
                "Could not set file capabilities on newuidmap/newgidmap (rootless podman may fail): {e}"
            ))
            .await;
    }
    if !session_mode && let Err(e) = write_podman_drop_in(&files).await {
        notes
            .warn(&format!("Could not write the rootless podman drop-in: {}", e.reason()))
            .await;
    }
    let unprivileged = files.with_root(|root| Ok(root.host_uid(0) != Some(0))).await;
    if unprivileged.unwrap_or(false) {
        nested_networking(containers, &files, notes, name).await;
    }
    Ok(())
}

/// Nested podman in an unprivileged container: its root may not make bridges in the host's
/// network namespace (it is not that namespace's owner), so containers it starts get user-mode
/// networking in a namespace of their own (slirp4netns, through the container's `/dev/net/tun`),
/// or the host's network where the image has no slirp4netns.
const PODMAN_NETWORK_DROP_IN: &str = "/etc/containers/containers.conf.d/50-kapsule-unprivileged.conf";

/// Docker cannot get around that: its daemon sets up NAT and forwarding in its own network
/// namespace (the host's here) before it serves anything, so it is told not to, and its
/// containers run without a network of their own (`--network none`, its default then; a
/// container that needs the network, `podman run` gives it one).
const DOCKER_CONFIG: (&str, &str) = (
    "/etc/docker/daemon.json",
    "{\n  \"iptables\": false,\n  \"ip-forward\": false,\n  \"bridge\": \"none\"\n}\n",
);

/// What [`PODMAN_NETWORK_DROP_IN`] and [`DOCKER_CONFIG`] say; docker restarted if it is enabled
/// (it failed at boot, before its configuration was there). A user's own `daemon.json` is left
/// alone, with a warning saying what docker needs here.
async fn nested_networking(containers: &Containers, files: &ContainerFiles, notes: Notes<'_>, name: &str) {
    let written = files
        .with_root(|root| {
            let has = |path: &str| root.open_path_on_root_fs(path).map(|found| found.is_some());
            let netns = if has("/usr/bin/slirp4netns")? {
                "slirp4netns"
            } else {
                "host"
            };
            let text = format!(
                "# Written by Kapsule when the container was created: it is unprivileged on the\n\
                 # host's network, whose namespace its root may not change, so podman's containers\n\
                 # get a network namespace of their own with user-mode networking (or the host's).\n\
                 [containers]\n\
                 netns = \"{netns}\"\n"
            );
            root.ensure_dir("/etc/containers", Meta::new(0, 0, 0o755))?;
            root.ensure_dir("/etc/containers/containers.conf.d", Meta::new(0, 0, 0o755))?;
            root.write(PODMAN_NETWORK_DROP_IN, text.as_bytes(), Meta::new(0, 0, 0o644))?;
            let docker = has("/usr/bin/dockerd")? || has("/usr/sbin/dockerd")?;
            if !docker {
                return Ok(None);
            }
            let (path, text) = DOCKER_CONFIG;
            if has(path)? {
                return Ok(Some(false));
            }
            root.ensure_dir("/etc/docker", Meta::new(0, 0, 0o755))?;
            root.write(path, text.as_bytes(), Meta::new(0, 0, 0o644))?;
            Ok(Some(true))
        })
        .await;
    match written {
        Err(e) => {
            notes
                .warn(&format!("Could not set up nested containers' networking: {}", e.reason()))
                .await
        }
        Ok(None) => {}
        Ok(Some(false)) => {
            notes
                .warn(&format!(
                    "{} is the image's own: docker starts here only with \"iptables\": false, \"ip-forward\": false and \"bridge\": \"none\" in it",
                    DOCKER_CONFIG.0
                ))
                .await
        }
        Ok(Some(true)) => {
            let restart = "systemctl reset-failed docker.service docker.socket 2>/dev/null; \
                           if systemctl -q is-enabled docker.service; then systemctl --no-block restart docker.service; fi";
            let ran = crate::container::exec::run_as_root(
                containers,
                name,
                &["/bin/sh", "-c", restart],
                b"",
                Duration::from_secs(60),
            )
            .await;
            let failed = match ran {
                Ok(ran) if ran.success() => None,
                Ok(ran) => Some(ran.failure()),
                Err(e) => Some(format!(": {e}")),
            };
            if let Some(why) = failed {
                notes
                    .warn(&format!("Could not restart docker with its new configuration{why}"))
                    .await;
            }
        }
    }
}

/// A copy of container `old` named `new`: `new` in `/etc/hosts` in place of `old` (a warning if
/// that cannot be done; the copy works without it).
pub(crate) async fn rename(containers: &Containers, notes: Notes<'_>, old: &str, new: &str) {
    let edited = match ContainerFiles::open(containers, new).await {
        Ok(files) => edit_file(
            &files,
            "/etc/hosts",
            IfMissing::Create(Meta::new(0, 0, 0o644)),
            |hosts| {
                let without = hosts_without_name(hosts, old);
                hosts_with_name(&without, new).or((without != hosts).then_some(without))
            },
        )
        .await
        .map_err(|e| e.message().to_owned()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = edited {
        notes.warn(&format!("Could not put '{new}' in /etc/hosts: {e}")).await;
    }
}

/// `hosts` without the `127.0.1.1 <name>` line [`hosts_with_name`] adds.
pub(crate) fn hosts_without_name(hosts: &str, name: &str) -> String {
    hosts
        .lines()
        .filter(|line| line.split_whitespace().collect::<Vec<_>>() != ["127.0.1.1", name])
        .map(|line| format!("{line}\n"))
        .collect()
}

/// `hosts` with a `127.0.1.1 <name>` line (Debian's convention for the own name) added, unless
/// a line names it already; `None` when nothing changes.
pub(crate) fn hosts_with_name(hosts: &str, name: &str) -> Option<String> {
    let named = hosts.lines().any(|line| {
        let line = line.split('#').next().unwrap_or("");
        line.split_whitespace().skip(1).any(|host| host == name)
    });
    if named {
        return None;
    }
    let mut out = if hosts.is_empty() {
        "127.0.0.1\tlocalhost\n::1\tlocalhost\n".to_owned()
    } else {
        hosts.to_owned()
    };
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!("127.0.1.1\t{name}\n"));
    Some(out)
}

/// Runs every entry of the image's `/.kapsule/init/` as root, in name order, one at a time.
/// A failing script is a warning with its exit code and error output; only a cancel stops them.
async fn run_init_scripts(containers: &Containers, files: &ContainerFiles, notes: Notes<'_>) -> Result<(), Failure> {
    let name = files.name();
    let mut scripts = match files.with_root(|root| root.list(INIT_DIR)).await {
        Ok(Some(scripts)) => scripts,
        Ok(None) => {
            log::debug!("{name}: the image has no {INIT_DIR}");
            return Ok(());
        }
        Err(e) => {
            notes.warn(&format!("Cannot list {INIT_DIR}: {}", e.reason())).await;
            return Ok(());
        }
    };
    scripts.sort();
    for script in scripts {
        let path = format!("{INIT_DIR}/{script}");
        notes.say(MessageKind::Dim, &format!("Running {path}")).await;
        let command = [path.as_str()];
        let ran = tokio::select! {
            ran = crate::container::exec::run_as_root(containers, name, &command, b"", INIT_SCRIPT_TIMEOUT) => ran,
            () = notes.cancelled() => return Err(Failure::Cancelled),
        };
        match ran {
            Ok(ran) if ran.success() => {}
            Ok(ran) => notes.warn(&init_script_failure(&path, ran.code(), &ran.stderr)).await,
            Err(e) => notes.warn(&format!("{path} failed: {e}")).await,
        }
    }
    Ok(())
}

/// The warning for a script that exited non-zero: its code and the end of its error output.
pub(crate) fn init_script_failure(path: &str, code: i32, stderr: &[u8]) -> String {
    const KEEP: usize = 2000;
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    let tail = match text.char_indices().rev().nth(KEEP) {
        Some((cut, _)) => format!("...{}", &text[cut..]),
        None => text.to_owned(),
    };
    if tail.is_empty() {
        format!("{path} exited with code {code}")
    } else {
        format!("{path} exited with code {code}: {tail}")
    }
}

/// `cap_setuid+ep` on newuidmap and `cap_setgid+ep` on newgidmap, where the image has them.
///
/// Set directly as the `security.capability` attribute, through the container's root as its init
/// sees it, so the image needs no `setcap`. The paths are resolved with `RESOLVE_IN_ROOT` (a
/// symlink in the image resolves inside the container) and `RESOLVE_NO_XDEV`: the walk stays on
/// the container's own root file system, so a symlink into a mount (`/.kapsule/host` is the
/// host's `/`) cannot lead to a host file.
async fn set_id_map_capabilities(files: &ContainerFiles) -> Result<(), Error> {
    // Each helper on its own: one that cannot be done does not keep the other from it.
    let failed = files
        .with_root(|root| {
            Ok(ID_MAP_HELPERS
                .iter()
                .filter_map(|(path, cap)| set_file_capability(root, path, *cap).err().map(|e| (*path, e)))
                .collect::<Vec<_>>())
        })
        .await?;
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Files(failed))
    }
}

/// Gives the regular file at `path` (in the container) the capability `cap`, effective and
/// permitted. A missing file, or one that is setuid-root, is nothing to do.
fn set_file_capability(root: &kapsule_rootfs::Root, path: &str, cap: u32) -> std::io::Result<()> {
    use rustix::fs::{FileType, Mode, XattrFlags};
    let file = match root.open_path_on_root_fs(path) {
        Ok(Some(fd)) => fd,
        Ok(None) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
            return Err(std::io::Error::other(
                "it leads off the container's own file system (into a mount); left alone",
            ));
        }
        Err(e) => return Err(std::io::Error::new(e.kind(), e.reason().to_string())),
    };
    let stat = rustix::fs::fstat(&file)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(std::io::Error::other("not a regular file"));
    }
    // The container's root as the host sees it: the host's in a privileged container.
    let Some(container_root) = root.host_uid(0) else {
        return Err(std::io::Error::other("the container maps no root"));
    };
    if stat.st_uid == container_root && Mode::from_raw_mode(stat.st_mode).contains(Mode::SUID) {
        return Ok(());
    }
    // An O_PATH descriptor takes no xattr calls; its /proc/self/fd link names exactly the file
    // opened above, wherever the path pointed in the meantime.
    let by_fd = format!("/proc/self/fd/{}", file.as_fd().as_raw_fd());
    rustix::fs::setxattr(
        by_fd.as_str(),
        "security.capability",
        &file_capability(cap, container_root),
        XattrFlags::empty(),
    )?;
    Ok(())
}

/// The `security.capability` value (`struct vfs_cap_data`, little-endian) that `setcap <cap>+ep`
/// writes: the capability permitted and the effective flag set. Revision 2 where the container's
/// root is the host's (`root` 0); in an unprivileged container, revision 3 with the host uid of
/// its root, which the kernel honours only in user namespaces whose root that is (a revision 2
/// value would count only for the host's root, so the helpers would get nothing inside).
pub(crate) fn file_capability(cap: u32, root: u32) -> Vec<u8> {
    const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
    const VFS_CAP_REVISION_3: u32 = 0x0300_0000;
    const VFS_CAP_FLAGS_EFFECTIVE: u32 = 0x1;
    let mut permitted = [0u32; 2];
    permitted[(cap / 32) as usize] |= 1 << (cap % 32);
    let revision = if root == 0 {
        VFS_CAP_REVISION_2
    } else {
        VFS_CAP_REVISION_3
    };
    let mut words = vec![
        revision | VFS_CAP_FLAGS_EFFECTIVE,
        permitted[0],
        0, // inheritable, low
        permitted[1],
        0, // inheritable, high
    ];
    if root != 0 {
        words.push(root);
    }
    words.iter().flat_map(|word| word.to_le_bytes()).collect()
}

/// `cgroup_manager = "cgroupfs"` for podman, in a drop-in of its own so the image's
/// containers.conf stays the image's.
async fn write_podman_drop_in(files: &ContainerFiles) -> kapsule_rootfs::Result<()> {
    files
        .with_root(|root| {
            let dir = Meta::new(0, 0, 0o755);
            root.ensure_dir("/etc/containers", dir)?;
            root.ensure_dir("/etc/containers/containers.conf.d", dir)?;
            let (path, text) = PODMAN_DROP_IN;
            root.write(path, text.as_bytes(), Meta::new(0, 0, 0o644))
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_what_setcap_writes() {
        // `setcap cap_setuid+ep f; getfattr -e hex -n security.capability f`
        assert_eq!(
            file_capability(CAP_SETUID, 0),
            [1, 0, 0, 2, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(file_capability(CAP_SETGID, 0)[4], 0x40);
        // A capability above 31 lands in the second word (cap_setfcap is 31, cap_bpf 39).
        assert_eq!(file_capability(39, 0)[12..16], [0x80, 0, 0, 0]);
        // The same `setcap` as root of a user namespace whose root is host uid 1000000.
        assert_eq!(
            file_capability(CAP_SETUID, 1_000_000),
            [
                1, 0, 0, 3, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0x42, 0x0f, 0
            ]
        );
    }

    #[test]
    fn a_failed_init_script_says_its_code_and_the_end_of_its_errors() {
        assert_eq!(
            init_script_failure("/.kapsule/init/a", 3, b""),
            "/.kapsule/init/a exited with code 3"
        );
        assert_eq!(
            init_script_failure("/.kapsule/init/a", 1, b"no keyring\n"),
            "/.kapsule/init/a exited with code 1: no keyring"
        );
        let long = "x".repeat(5000) + "END";
        let said = init_script_failure("/s", 1, long.as_bytes());
        assert!(
            said.len() < 2100 && said.ends_with("END") && said.contains(": ..."),
            "{said}"
        );
    }

    #[test]
    fn the_own_name_is_added_to_hosts_once() {
        let debian = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n";
        assert_eq!(
            hosts_with_name(debian, "dev").as_deref(),
            Some("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n127.0.1.1\tdev\n")
        );
        assert_eq!(hosts_with_name("127.0.1.1 box dev\n", "dev"), None);
        assert!(
            hosts_with_name("127.0.1.1 box\t# dev\n", "dev").is_some(),
            "a comment names nothing"
        );
        assert_eq!(
            hosts_with_name("10.0.0.1 dev-server", "dev").as_deref(),
            Some("10.0.0.1 dev-server\n127.0.1.1\tdev\n"),
            "another name containing it is not it"
        );
        assert_eq!(
            hosts_with_name("", "dev").as_deref(),
            Some("127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\tdev\n")
        );
    }

    #[test]
    fn a_copy_loses_the_sources_own_line_only() {
        let source = "127.0.0.1\tlocalhost\n127.0.1.1\tdev\n10.0.0.1 dev\n127.0.1.1 box dev\n";
        assert_eq!(
            hosts_without_name(source, "dev"),
            "127.0.0.1\tlocalhost\n10.0.0.1 dev\n127.0.1.1 box dev\n",
            "only the line hosts_with_name adds goes; the user's own lines stay"
        );
        let copy = hosts_without_name(source, "dev");
        assert!(hosts_with_name(&copy, "dev2").unwrap().ends_with("127.0.1.1\tdev2\n"));
    }

    #[test]
    fn the_drop_in_is_a_valid_engine_section() {
        let (path, text) = PODMAN_DROP_IN;
        assert!(path.starts_with("/etc/containers/containers.conf.d/") && path.ends_with(".conf"));
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines, ["[engine]", "cgroup_manager = \"cgroupfs\""]);
    }
}

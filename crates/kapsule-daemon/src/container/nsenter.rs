//! Starting `kapsule-nsenter` in a container's cgroup and handing it a request: how sessions and
//! the daemon's own commands get into a container.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use kapsule_dbus::Error;
use kapsule_nsenter::{Confinement, EnterRequest, Reply, Request};
use kapsule_seccomp::{Host, Instruction, Policy};

use crate::container::Containers;
use crate::host::procfs::exited;

/// Has `kapsule-nsenter` start `request` in container `name` (whose init is `pid`, `pidfd`),
/// in the container's cgroup, with `stdio` as the command's descriptors when it has no
/// terminal. Returns the session channel (how it ends comes there) and the descriptors of the
/// helper's reply (a terminal's master).
pub(crate) async fn start_helper(
    containers: &Containers,
    role: Role,
    name: &str,
    (pid, pidfd): (u32, OwnedFd),
    mut request: EnterRequest,
    stdio: Vec<OwnedFd>,
) -> Result<(UnixStream, Vec<OwnedFd>), Error> {
    // Confined as the container's own processes are: what its init has, read now (the pidfd
    // still open after the reads shows the pid was the init's).
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| Error::Failed(format!("Cannot read what confines '{name}': {e}")))?;
    request.confinement = Confinement::of_status(&status);
    request.confinement.user_namespace = own_user_namespace(pid).map_err(|e| {
        Error::Failed(format!(
            "Cannot tell whether '{name}' has a user namespace of its own: {e}"
        ))
    })?;
    if exited(&pidfd) {
        return Err(Error::Failed(format!("Container '{name}' stopped")));
    }
    if kapsule_nsenter::filtered(&status) {
        request.confinement.seccomp_filter = seccomp_filter(containers, name)?;
    }
    let (client_channel, helper_channel) = UnixStream::pair().map_err(failed)?;
    let (control, helper_control) = UnixStream::pair().map_err(failed)?;
    let helper_path = containers.settings.nsenter_path();
    let mut command = tokio::process::Command::new(&helper_path);
    if role == Role::DaemonCommand {
        command.arg(DAEMON_COMMAND_ARG);
    }
    command
        .env_clear()
        .stdin(std::process::Stdio::from(OwnedFd::from(helper_control)))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    // Exactly the control socket: what else the daemon holds right now (another call's
    // descriptors) is not the session's; what the session gets comes over the control socket.
    kapsule_sys::only_stdio_on_exec(command.as_std_mut());
    let mut helper = command
        .spawn()
        .map_err(|e| Error::Failed(format!("Cannot run {}: {e}", helper_path.display())))?;
    // Never 0: written to cgroup.procs, 0 would move the daemon itself.
    let helper_pid = helper
        .id()
        .ok_or_else(|| Error::Failed("The session helper ended at once".into()))?;
    // Reap the helper whenever it ends (with its session, perhaps hours from now); until then
    // the daemon is not idle.
    let busy = containers.activity.hold();
    tokio::spawn(async move {
        let _ = helper.wait().await;
        drop(busy);
    });
    if let Err(e) = join_container_cgroups(name, pid, helper_pid) {
        // The helper has not been told anything yet; without its request it just exits.
        drop(control);
        return Err(Error::Failed(format!("Cannot join the cgroup of '{name}': {e}")));
    }
    let request = Request::Enter(request);
    let reply = tokio::task::spawn_blocking(move || -> std::io::Result<(Reply, Vec<OwnedFd>)> {
        let mut fds = vec![pidfd.as_fd(), helper_channel.as_fd()];
        fds.extend(stdio.iter().map(|f| f.as_fd()));
        kapsule_nsenter::send(&control, &request, &fds)?;
        control.set_read_timeout(Some(Duration::from_secs(30)))?;
        kapsule_nsenter::recv(&control)
    })
    .await
    .map_err(failed)?
    .map_err(|e| Error::Failed(format!("The session helper did not answer: {e}")))?;
    match reply {
        (Reply::Started { .. }, fds) => Ok((client_channel, fds)),
        (Reply::Failed { error }, _) => Err(Error::Failed(error)),
    }
}

fn failed(e: impl std::fmt::Display) -> Error {
    Error::Failed(e.to_string())
}

/// Whether process `pid` is in another user namespace than the daemon's (its `ns/user` link
/// names another namespace). The caller checks afterwards that `pid` is still the process it
/// meant.
pub(crate) fn own_user_namespace(pid: u32) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let theirs = std::fs::metadata(format!("/proc/{pid}/ns/user"))?;
    let ours = std::fs::metadata("/proc/self/ns/user")?;
    Ok((theirs.dev(), theirs.ino()) != (ours.dev(), ours.ino()))
}

/// The seccomp policy of container `name` compiled for this host: what LXC loaded into its
/// init, read where Incus wrote it for LXC (beside Incus's socket, `security/seccomp/<name>`).
/// A container whose init has a filter gets no session without it.
fn seccomp_filter(containers: &Containers, name: &str) -> Result<Vec<Instruction>, Error> {
    let path = containers.incus_dir().join("security/seccomp").join(name);
    let refuse = |why: String| {
        Error::Failed(format!(
            "Cannot hold a session in '{name}' to the container's seccomp policy ({}): {why}",
            path.display()
        ))
    };
    let text = std::fs::read_to_string(&path).map_err(|e| refuse(e.to_string()))?;
    let filter = Host::current()
        .and_then(|host| Policy::parse(&text)?.compile(host))
        .map_err(|e| refuse(e.to_string()))?;
    if !filter.unknown.is_empty() {
        // As LXC does with them: left out, since no architecture here has them.
        log::debug!(
            "{name}: seccomp policy names unknown system calls: {}",
            filter.unknown.join(", ")
        );
    }
    Ok(filter.program)
}

/// Puts process `pid` into the cgroups of container `name` (whose init is `init_pid`), where
/// `incus exec` puts its sessions: the container's cgroup in each v1 hierarchy, and its `.lxc`
/// leaf in the unified one (cgroup v2 allows no process next to child cgroups).
fn join_container_cgroups(name: &str, init_pid: u32, pid: u32) -> std::io::Result<()> {
    let mut joined_unified = false;
    for (dir, unified) in session_cgroups(name, init_pid)? {
        if unified {
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        match std::fs::write(dir.join("cgroup.procs"), pid.to_string()) {
            Ok(()) => joined_unified |= unified,
            Err(e) if unified => return Err(e),
            Err(e) => log::warn!("cannot join {}: {e}", dir.display()),
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    if !joined_unified && mountinfo.contains(" - cgroup2 ") {
        return Err(std::io::Error::other(format!(
            "no cgroup of '{name}' found for its init {init_pid}"
        )));
    }
    Ok(())
}

/// The process name (`comm`) of the session helper, which the kernel cuts to 15 bytes: exactly
/// `kapsule-nsenter`.
const HELPER_COMM: &str = "kapsule-nsenter";

/// The argument a helper that runs one of the daemon's own commands is started with (the helper
/// ignores it): its command line tells it from a session's from the moment it is in the
/// container's cgroup, which the watch of an ephemeral container relies on.
const DAEMON_COMMAND_ARG: &str = "--daemon-command";

/// What a helper is started for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// A user's session (`Enter`): what keeps an ephemeral container.
    Session,
    /// A command of the daemon's own in the container (a hook, a host-sync script, a setup
    /// step): not a session.
    DaemonCommand,
}

/// Whether the process with `comm` is a session's helper; its command line (NUL-separated, as
/// `/proc/<pid>/cmdline`) is read only for a helper.
fn is_session_helper(comm: &str, cmdline: impl FnOnce() -> Vec<u8>) -> bool {
    comm.trim_end() == HELPER_COMM
        && !cmdline()
            .split(|&b| b == 0)
            .any(|arg| arg == DAEMON_COMMAND_ARG.as_bytes())
}

/// How many sessions run in container `name` (whose init is `init_pid`): its session helpers
/// alive, whichever daemon started them (they outlive a daemon restart). A helper lives in the
/// cgroup it joined (see [`join_container_cgroups`]) until its command ends; what the command
/// left running behind it is not a session, and neither is a helper of the daemon's own
/// commands (a host-sync script run at a create was once taken for a session that ended, and
/// the ephemeral container removed before its first session).
pub(crate) fn count_sessions(name: &str, init_pid: u32) -> std::io::Result<usize> {
    let dirs = session_cgroups(name, init_pid)?;
    // The unified leaf holds sessions only; a v1 cgroup of the container is the next best.
    let Some((dir, _)) = dirs.iter().find(|(_, unified)| *unified).or(dirs.first()) else {
        return Err(std::io::Error::other(format!(
            "no cgroup of '{name}' found for its init {init_pid}"
        )));
    };
    let procs = match std::fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(procs) => procs,
        // No session ever made the leaf.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    Ok(procs
        .lines()
        .filter(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            is_session_helper(&comm, || {
                std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()
            })
        })
        .count())
}

/// The cgroups sessions of container `name` join: `(directory, unified)`, the unified one being
/// the `.lxc` leaf (which may not exist yet).
fn session_cgroups(name: &str, init_pid: u32) -> std::io::Result<Vec<(PathBuf, bool)>> {
    let cgroups = std::fs::read_to_string(format!("/proc/{init_pid}/cgroup"))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let payload = format!("lxc.payload.{name}");
    let mut dirs = Vec::new();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Some(at) = path.find(&payload) else { continue };
        let root = &path[..at + payload.len()];
        let unified = id == "0";
        let Some(mount) = cgroup_mount(&mountinfo, unified, controllers) else {
            continue;
        };
        let mut dir = mount.join(root.trim_start_matches('/'));
        if unified {
            dir.push(".lxc");
        }
        dirs.push((dir, unified));
    }
    Ok(dirs)
}

/// The mount point of the unified hierarchy, or of the v1 hierarchy with `controllers`.
fn cgroup_mount(mountinfo: &str, unified: bool, controllers: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split_whitespace().nth(4)?;
        let mut right = right.split_whitespace();
        let fstype = right.next()?;
        let _source = right.next();
        let options = right.next().unwrap_or("");
        let matches = if unified {
            fstype == "cgroup2"
        } else {
            fstype == "cgroup" && controllers.split(',').all(|c| options.split(',').any(|o| o == c))
        };
        matches.then(|| PathBuf::from(mount_point))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_sessions_helper_counts_as_a_session() {
        let cmdline = |text: &[u8]| {
            let text = text.to_vec();
            move || text
        };
        assert!(is_session_helper(
            "kapsule-nsenter\n",
            cmdline(b"/usr/lib/kapsule/kapsule-nsenter\0")
        ));
        assert!(!is_session_helper(
            "kapsule-nsenter\n",
            cmdline(b"/usr/lib/kapsule/kapsule-nsenter\0--daemon-command\0")
        ));
        // What a session left behind (its command line never read), and a process gone
        // meanwhile (nothing read).
        assert!(!is_session_helper("sleep\n", || unreachable!(
            "read for a process not a helper"
        )));
        assert!(!is_session_helper("", || unreachable!("read for a process gone")));
    }

    #[test]
    fn cgroup_mounts_are_found_for_both_layouts() {
        let hybrid = "\
30 23 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
33 30 0:29 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
34 30 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct";
        assert_eq!(cgroup_mount(hybrid, true, ""), Some("/sys/fs/cgroup/unified".into()));
        assert_eq!(cgroup_mount(hybrid, false, "cpu"), Some("/sys/fs/cgroup/cpu".into()));
        assert_eq!(
            cgroup_mount(hybrid, false, "cpu,cpuacct"),
            Some("/sys/fs/cgroup/cpu,cpuacct".into())
        );
        assert_eq!(
            cgroup_mount(hybrid, false, "name=systemd"),
            Some("/sys/fs/cgroup/systemd".into())
        );
        assert_eq!(cgroup_mount(hybrid, false, "memory"), None);
        let pure = "25 20 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate";
        assert_eq!(cgroup_mount(pure, true, ""), Some("/sys/fs/cgroup".into()));
    }
}

//! A running container's init process, found once through Incus and then remembered: the entry
//! point of every way into the container (sessions, the daemon's commands, its files).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

use kapsule_dbus::Error;

use crate::container::Containers;

/// The init pid of each container entered so far, checked before each use.
#[derive(Debug, Default)]
pub(crate) struct InitPids(Mutex<HashMap<String, u32>>);

/// The container's init process and a pidfd for it. Reading it from Incus costs a state request
/// (which gathers usage figures: the slowest part of an enter), so the pid is remembered and,
/// on later enters, checked instead: after the pidfd is open, `/proc` must show a pid-namespace
/// init in the container's cgroup. A pid recycled by another process fails that check, and a
/// process that died after it makes `setns` fail; neither enters the wrong place.
pub(crate) async fn container_init(containers: &Containers, name: &str) -> Result<(u32, OwnedFd), Error> {
    let cached = containers.init_pids.0.lock().expect("init pids").get(name).copied();
    if let Some(pid) = cached
        && let Some(pidfd) = open_init(pid, name)
    {
        return Ok((pid, pidfd));
    }
    let pid = init_pid(containers, name).await?;
    let pidfd =
        open_init(pid, name).ok_or_else(|| Error::Failed(format!("Container '{name}' stopped while entering it")))?;
    containers
        .init_pids
        .0
        .lock()
        .expect("init pids")
        .insert(name.to_owned(), pid);
    Ok((pid, pidfd))
}

/// A pidfd for `pid` if, once it is open, `pid` is the init of container `name`.
fn open_init(pid: u32, name: &str) -> Option<OwnedFd> {
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?,
        rustix::process::PidfdFlags::empty(),
    )
    .ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    is_container_init(&status, &cgroups, name).then_some(pidfd)
}

/// True when `/proc/<pid>/status` and `/proc/<pid>/cgroup` describe the init (pid 1 of its
/// namespace) of container `name` (in cgroup `lxc.payload.<name>`).
fn is_container_init(status: &str, cgroups: &str, name: &str) -> bool {
    let payload = format!("lxc.payload.{name}");
    let init_of_namespace = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|ids| ids.split_whitespace().last())
        == Some("1");
    let in_container = cgroups
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .any(|path| path.split('/').any(|component| component == payload));
    init_of_namespace && in_container
}

async fn init_pid(containers: &Containers, name: &str) -> Result<u32, Error> {
    let instance_state = containers
        .incus
        .instance_state(name)
        .await
        .map_err(crate::error::incus_error)?;
    instance_state
        .init_pid()
        .ok_or_else(|| Error::Failed(format!("Container '{name}' is not running")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_init_of_that_container_passes() {
        let init = "Name:\tsystemd\nNSpid:\t4242\t1\n";
        let child = "Name:\tbash\nNSpid:\t4243\t57\n";
        let host = "Name:\tbash\nNSpid:\t4243\n";
        let cg = "0::/lxc.payload.dev/init.scope\n";
        assert!(is_container_init(init, cg, "dev"));
        assert!(!is_container_init(child, cg, "dev"), "not pid 1 of its namespace");
        assert!(!is_container_init(host, cg, "dev"));
        assert!(
            !is_container_init(init, cg, "de"),
            "another container's name is not a prefix match"
        );
        assert!(!is_container_init(init, "0::/lxc.payload.dev-2/init.scope\n", "dev"));
        assert!(is_container_init(init, "5:pids:/lxc.payload.dev\n0::/\n", "dev"));
    }
}

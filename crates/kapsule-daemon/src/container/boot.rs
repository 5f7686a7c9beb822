//! Waiting for the steps of a container's boot that a user's first command depends on, before
//! the user is set up and their first command runs:
//!
//! * systemd-sysusers may rewrite `/etc/passwd` and `/etc/group` whole: an account written
//!   meanwhile can be lost (seen in CI: "sudo: you do not exist in the passwd database" on the
//!   second enter of a just-created container);
//! * systemd-tmpfiles-setup empties `/tmp` (`D /tmp` in tmpfiles.d's `tmp.conf`, applied with
//!   `--remove` at boot): a first command's temporary directory vanished under it (seen in the
//!   nested test once the rest of the setup had become fast enough to land before it);
//! * the sockets of `sockets.target` listen (the system bus's `dbus.socket`, `docker.socket`):
//!   before that a user's `systemctl` or `busctl` says "Failed to connect to bus" (seen in CI on
//!   the first enter of a just-created container) and `docker` finds no daemon.
//!
//! A start job on each unit waits for exactly that and is a no-op once it ran. The sockets come
//! after sysinit.target, 100 ms to a second after sysusers (measured); the rest of the boot
//! (services, multi-user.target) is not waited for.
//!
//! What can be seen from the host is looked at from the host: whether the init runs systemd, and
//! whether it listens on its socket yet (right after a start `systemctl` cannot connect: "Failed
//! to connect to bus"). Then `systemctl start` runs through the session helper (`exec.rs`), not
//! `incus exec` (which took about 60 ms even when both units were long done). Talking to
//! systemd's private socket from the host does not work: the daemon's pid means nothing in the
//! container's pid namespace, and systemd refuses such a peer ("Incoming private connection
//! from unprivileged client, refusing").

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kapsule_dbus::session::Status;

use crate::container::Containers;
use crate::container::error::Error;
use crate::container::files::ContainerFiles;

/// The units whose start jobs are waited for.
const UNITS: [&str; 3] = [
    "systemd-sysusers.service",
    "systemd-tmpfiles-setup.service",
    "sockets.target",
];
/// The longest the whole wait may take.
const LIMIT: Duration = Duration::from_secs(90);
/// How often systemd's socket is looked for right after a start.
const POLL: Duration = Duration::from_millis(10);

/// Waits (at most [`LIMIT`]) until the container's systemd-sysusers and
/// systemd-tmpfiles-setup have run and its sockets listen. Images whose init is not systemd have nothing to wait for;
/// anything that keeps the wait from working is logged and the setup goes on, as it would have
/// without it.
pub(crate) async fn wait_for_early_boot(containers: &Containers, files: &ContainerFiles) {
    let name = files.name();
    match wait(containers, files).await {
        Ok(result) => log::debug!("{name}: boot wait: {result}"),
        Err(e) => log::info!("{name}: not waiting for boot: {e}"),
    }
}

/// The wait itself; says how it ended.
async fn wait(containers: &Containers, files: &ContainerFiles) -> Result<String, Error> {
    let started = Instant::now();
    let pid = files.init_pid();
    // Right after a start the init may not have executed its program yet (Incus says Running
    // once LXC is about to): until then it is a copy of its parent, LXC's monitor, and what it
    // runs says nothing (a container taken for one without systemd was entered before its
    // system bus listened). Then its program is looked at, not its name: systemd started as
    // /sbin/init is called `init` until it names itself (seen under load too).
    let program = loop {
        if let Some(program) = executed_program(pid)? {
            break program;
        }
        if started.elapsed() > LIMIT {
            return Err(Error::Timeout {
                what: "the container's init did not start its program",
                after: LIMIT,
            });
        }
        tokio::time::sleep(POLL).await;
    };
    if program.file_name().is_none_or(|name| name != "systemd") {
        return Ok(format!("nothing to wait for (the init is {})", program.display()));
    }
    loop {
        let socket = files.with_root(|root| root.metadata("/run/systemd/private")).await?;
        if socket.is_some() {
            break;
        }
        if started.elapsed() > LIMIT {
            return Err(Error::Timeout {
                what: "systemd did not listen on its socket",
                after: LIMIT,
            });
        }
        tokio::time::sleep(POLL).await;
    }
    let left = LIMIT.saturating_sub(started.elapsed());
    let mut command = vec!["systemctl", "start"];
    command.extend(UNITS);
    let ran = crate::container::exec::run_as_root(containers, files.name(), &command, b"", left)
        .await
        .map_err(Error::Command)?;
    let units = UNITS.join(", ");
    Ok(match ran.status {
        Status::Exited(0) => format!("{units} have run"),
        // No such unit (5: an image without one; the others are still waited for) or a failed
        // one: going on either way.
        Status::Exited(code) => format!(
            "starting {units} exited with {code}: {}",
            String::from_utf8_lossy(&ran.stderr).trim()
        ),
        Status::Killed(signal) => format!("starting {units} was killed by signal {signal}"),
    })
}

/// The program process `pid` runs, once it has executed one of its own; `None` while it still
/// runs its parent's.
fn executed_program(pid: u32) -> Result<Option<PathBuf>, Error> {
    let proc_error = |source| Error::Proc {
        what: "program",
        source,
    };
    let exe = |pid: u32| std::fs::read_link(format!("/proc/{pid}/exe"));
    let own = exe(pid).map_err(proc_error)?;
    let parents = crate::host::procfs::parent(pid).and_then(exe);
    // The parent gone or unreadable: nothing to compare with; the program is what it is.
    Ok((parents.ok().as_ref() != Some(&own)).then_some(own))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_running_its_own_program_has_executed() {
        // This test's process runs another program than its parent (the test runner's shell or
        // harness), and so does a child that executed `sleep`.
        assert!(executed_program(std::process::id()).unwrap().is_some());
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(
            executed_program(child.id()).unwrap().unwrap().file_name().unwrap(),
            "sleep"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        // A process running its parent's program looks like one that has not executed yet: a
        // shell's subshell (a fork of the shell, no exec).
        use std::os::unix::process::CommandExt;
        let mut outer = std::process::Command::new("sh")
            .args(["-c", "(sleep 3; :); :"])
            .process_group(0)
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", outer.id())).unwrap();
        let subshell: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
        let looked = executed_program(subshell);
        // The whole group: the shell, its subshell and the sleep.
        let group = rustix::process::Pid::from_raw(outer.id() as i32).unwrap();
        rustix::process::kill_process_group(group, rustix::process::Signal::KILL).unwrap();
        outer.wait().unwrap();
        assert_eq!(looked.unwrap(), None, "a subshell runs its parent's program");
    }
}

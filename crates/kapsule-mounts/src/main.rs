//! kapsule-mounts: run by the daemon (as root) when someone enters a container whose socket
//! mounts are not known to be current. Synchronous and single-threaded (setns into a mount
//! namespace needs that).
//!
//! Usage: `kapsule-mounts REQUEST` with REQUEST a [`kapsule_mounts::Request`] as JSON and
//! stdin a pidfd of the container's init (so a recycled pid cannot be hit). Prints the
//! [`kapsule_mounts::Report`] as JSON and exits 0, whatever became of each entry; exits 2 for a
//! bad request and 1 when it cannot act at all (capabilities, the namespace), saying why on
//! stderr.

use std::collections::HashSet;
use std::os::fd::AsFd;
use std::process::ExitCode;

use caps::{CapSet, Capability};
use kapsule_mounts::{Request, apply, open_mount_source};
use rustix::fs::{Mode, OFlags};
use rustix::thread::ThreadNameSpaceType;

/// What the work needs, and nothing else: joining a mount namespace (SYS_ADMIN, SYS_CHROOT;
/// through a pidfd the kernel also asks for ptrace read access to the container's init, which
/// a non-dumpable init grants only with SYS_PTRACE), cloning and attaching mounts (SYS_ADMIN), reaching into the user's 0700 runtime directory
/// and the container's (DAC_OVERRIDE), removing a stale file from a sticky directory such as
/// /tmp/.X11-unix (FOWNER), giving the files to the user (CHOWN), and in an unprivileged
/// container making them with its root's file-system ids (SETUID, SETGID: `setfsuid` and
/// `setfsgid` only; no_new_privs and the empty bounding set beyond these keep it at that).
const KEEP: [Capability; 8] = [
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_SYS_PTRACE,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
    Capability::CAP_CHOWN,
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
];

fn main() -> ExitCode {
    let fail = |code: u8, message: String| {
        eprintln!("kapsule-mounts: {message}");
        ExitCode::from(code)
    };
    let mut args = std::env::args().skip(1);
    let (Some(json), None) = (args.next(), args.next()) else {
        return fail(2, "usage: kapsule-mounts REQUEST-JSON < container-init-pidfd".into());
    };
    let request: Request = match serde_json::from_str(&json) {
        Ok(request) => request,
        Err(e) => return fail(2, format!("bad request: {e}")),
    };
    if let Err(e) = request.validate() {
        return fail(2, format!("bad request: {e}"));
    }
    if let Err(e) = drop_capabilities() {
        return fail(1, format!("cannot drop capabilities: {e}"));
    }
    // Directory modes are set explicitly; the umask would only get in the way of making them.
    rustix::process::umask(Mode::empty());

    let container = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => return fail(1, format!("no pidfd on stdin: {e}")),
    };
    // Sources first, on the host, while this process still sees the host's tree.
    let sources: Vec<_> = request.mounts.iter().map(open_mount_source).collect();
    if let Err(e) = rustix::thread::move_into_thread_name_spaces(container.as_fd(), ThreadNameSpaceType::MOUNT) {
        return fail(1, format!("cannot join the container's mount namespace: {e}"));
    }
    // setns moved this process's root and working directory to the container's root.
    let root = match rustix::fs::open("/", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        Err(e) => return fail(1, format!("cannot open the container's root: {e}")),
    };
    let report = apply(root.as_fd(), &request, sources);
    match serde_json::to_string(&report) {
        Ok(json) => {
            #[allow(clippy::print_stdout, reason = "the report is this program's output")]
            {
                println!("{json}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, format!("cannot write the report: {e}")),
    }
}

/// Keeps [`KEEP`] in the effective and permitted sets, empties the inheritable and ambient
/// sets and the bounding set beyond it, and sets no_new_privs: nothing this process could exec
/// would get more.
fn drop_capabilities() -> Result<(), caps::errors::CapsError> {
    let keep: HashSet<Capability> = KEEP.into_iter().collect();
    // The bounding set first: shrinking it needs CAP_SETPCAP, which goes next.
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap)? {
            caps::drop(None, CapSet::Bounding, cap)?;
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::set(None, CapSet::Effective, &keep)?;
    caps::set(None, CapSet::Permitted, &keep)?;
    rustix::thread::set_no_new_privs(true).map_err(|e| caps::errors::CapsError::from(e.to_string()))?;
    Ok(())
}

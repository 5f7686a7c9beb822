//! The only Kapsule crate with `unsafe` code, kept to what the safe crates cannot express:
//!
//! * [`become_user_on_exec`]: what a session process does between `fork` and `exec` (new
//!   session, controlling terminal, seccomp filter, groups, gid, uid, working directory). The
//!   standard library runs such code through the unsafe `CommandExt::pre_exec`; its `uid`/`gid`
//!   setters cannot set supplementary groups and run before any hook, so the whole sequence
//!   lives here. Loading the filter is a raw `seccomp` system call with a pointer to it.
//! * [`reset_and_raise`]: ending the process by a signal the way a child ended, which needs the
//!   signal's default disposition back (an unsafe `sigaction`).
//! * [`make_read_only`]: `mount_setattr`, which neither rustix nor the standard library wraps.
//! * [`listen_sockets`]: taking ownership of the sockets systemd passed by number (socket
//!   activation), which is `from_raw_fd`.
//! * [`peer_pidfd`]: `getsockopt(SO_PEERPIDFD)`, which rustix does not have yet.
//! * [`only_stdio_on_exec`] and [`no_inherited_descriptors`]: `close_range` with
//!   `CLOSE_RANGE_CLOEXEC`, which rustix wraps only as unsafe (it could close descriptors other
//!   code owns; marking them close-on-exec cannot).
//!
//! Everything else (pidfds, setns, ptys, fd passing) comes safe from rustix.

use std::io;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use rustix::process::{Gid, Uid};

/// Who a session process becomes before it runs its program.
#[derive(Clone, Debug)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the primary group may be among them).
    pub groups: Vec<u32>,
    /// The working directory, changed to as the user (so it must be theirs to enter).
    pub cwd: PathBuf,
    /// Where to go instead when `cwd` cannot be entered; `None` makes that an error.
    pub fallback_cwd: Option<PathBuf>,
    /// Start a new session with stdin (a terminal) as its controlling terminal.
    pub controlling_terminal: bool,
    /// A seccomp filter loaded before the identity changes (loading one needs `CAP_SYS_ADMIN`
    /// or `no_new_privs`, and the user has neither); empty: none.
    pub seccomp_filter: Vec<kapsule_seccomp::Instruction>,
}

/// Makes `command`'s child become `identity` just before it executes its program: a new session
/// (with stdin as controlling terminal when asked), the seccomp filter, supplementary groups,
/// gid, uid (all three of real, effective and saved, so nothing can be regained), then the
/// working directory.
///
/// A failing step makes `Command::spawn` fail with that step's error, and nothing runs.
pub fn become_user_on_exec(command: &mut Command, identity: Identity) {
    let groups: Vec<Gid> = identity.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    let uid = Uid::from_raw(identity.uid);
    let gid = Gid::from_raw(identity.gid);
    let cwd = identity.cwd;
    let fallback = identity.fallback_cwd;
    let terminal = identity.controlling_terminal;
    let filter: Vec<libc::sock_filter> = identity
        .seccomp_filter
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    let hook = move || -> io::Result<()> {
        // Nothing but stdin, stdout and stderr goes into the session, whatever its parent held.
        cloexec_from(3)?;
        rustix::process::setsid()?;
        if terminal {
            rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())?;
        }
        if !filter.is_empty() {
            load_seccomp_filter(&filter)?;
        }
        // Per-thread system calls (no libc broadcast): the child has exactly one thread.
        rustix::thread::set_thread_groups(&groups)?;
        rustix::thread::set_thread_res_gid(gid, gid, gid)?;
        rustix::thread::set_thread_res_uid(uid, uid, uid)?;
        match rustix::process::chdir(&cwd) {
            Ok(()) => Ok(()),
            // Only the error number reaches the parent, so no message is added here.
            Err(e) => match &fallback {
                Some(fallback) => rustix::process::chdir(fallback).map_err(io::Error::from),
                None => Err(io::Error::from(e)),
            },
        }
    };
    // SAFETY: `pre_exec` runs the hook in the forked child before exec. The hook only makes
    // raw system calls, through rustix's linux_raw backend and one `libc::syscall` (no
    // allocation, no locks, no libc state but errno), which is what is allowed between fork and
    // exec; everything it uses, the filter too, was made and moved in before the fork.
    unsafe {
        command.pre_exec(hook);
    }
}

/// Loads `filter` into this thread (the only one of a forked child), without allocating.
fn load_seccomp_filter(filter: &[libc::sock_filter]) -> io::Result<()> {
    let program = libc::sock_fprog {
        len: u16::try_from(filter.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: `program` points at `filter`, which outlives the call; the kernel only reads
    // `len` instructions from it and checks them before use.
    let result = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &program as *const libc::sock_fprog,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes `command`'s child execute its program with stdin, stdout and stderr only: every other
/// descriptor it inherited (one received from a client meanwhile, say, which the D-Bus library
/// does not mark close-on-exec) is closed at the `exec`. Anything the child needs comes another
/// way (over its control socket).
pub fn only_stdio_on_exec(command: &mut Command) {
    // SAFETY: `pre_exec` runs the hook in the forked child before exec; the hook is one raw
    // system call (or, on a kernel without it, `fcntl` calls), no allocation and no locks. It
    // closes nothing itself: the standard library's own error pipe is close-on-exec already and
    // stays usable until the exec.
    unsafe {
        command.pre_exec(|| cloexec_from(3));
    }
}

/// Marks every descriptor this process holds from 3 up close-on-exec: for a helper, first thing
/// in `main`, so what it inherited by mistake never reaches what it runs. (Marking cannot take a
/// descriptor from code that owns it, which closing could.)
pub fn no_inherited_descriptors() -> io::Result<()> {
    cloexec_from(3)
}

/// `close_range(first, ~0, CLOSE_RANGE_CLOEXEC)`, or on a kernel before 5.11 `FD_CLOEXEC` set on
/// each descriptor up to the soft limit.
fn cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on descriptors; it takes no
    // pointers and closes nothing.
    let result = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    if result == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if !matches!(error.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EINVAL)) {
        return Err(error);
    }
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1 << 20)
        .min(1 << 20);
    for fd in first as libc::c_int..limit as libc::c_int {
        // SAFETY: F_SETFD on a number that may not be open only fails with EBADF; no memory is
        // involved.
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
    Ok(())
}

/// A pidfd of the process at the other end of a connected Unix socket, as the kernel recorded it
/// at `connect` (`SO_PEERPIDFD`, Linux 6.5); `None` on a kernel without it. With it, what is
/// read of the peer by pid can be checked to be the peer's: the pid is not reused while the
/// pidfd's process lives.
pub fn peer_pidfd(socket: std::os::fd::BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    use std::os::fd::AsRawFd;
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `fd`, a live c_int of that size, and
    // `len` itself; `socket` is a descriptor borrowed for the call.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if result != 0 {
        let error = io::Error::last_os_error();
        return match error.raw_os_error() {
            Some(libc::ENOPROTOOPT) => Ok(None),
            _ => Err(error),
        };
    }
    // SAFETY: the kernel made this descriptor for this call (O_CLOEXEC, as SO_PEERPIDFD makes
    // them), so this `OwnedFd` is its only owner.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Ends this process by `signal` with its default action (so the parent sees "killed by
/// `signal`", as if the process had been killed), or returns if that action does not end it.
pub fn reset_and_raise(signal: i32) {
    // SAFETY: restoring the default disposition of one signal has no memory-safety
    // consequences: a handler installed for it (the CLI forwards some signals) is simply not
    // called any more, which is the point, and `raise` only sends a signal to this thread.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}

/// Makes the detached mount `tree` (from `open_tree(OPEN_TREE_CLONE)`) read-only, before it is
/// attached anywhere: whoever sees it where it lands cannot write through it.
pub fn make_read_only(tree: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr(2) reads `size` bytes from `&attr`, a live `mount_attr` of exactly
    // that size, and the empty path is a NUL-terminated static string; `tree` is a descriptor
    // borrowed for the call. No memory is written by the kernel.
    let result = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The Unix sockets systemd passed to this process (socket activation: `$LISTEN_PID`,
/// `$LISTEN_FDS`), read with libsystemd and owned from now on; none when it was not
/// socket-activated. Anything passed that is not a Unix socket is closed and is an error.
///
/// libsystemd removes those variables from the environment, which is sound only while the
/// process has one thread: call this first thing in `main`.
pub fn listen_sockets() -> io::Result<Vec<UnixListener>> {
    use libsystemd::activation::IsType;
    let passed = libsystemd::activation::receive_descriptors(true).map_err(io::Error::other)?;
    let mut sockets = Vec::new();
    let mut other = 0;
    for descriptor in passed {
        let unix = descriptor.is_unix();
        // SAFETY: systemd passed this descriptor to this process, libsystemd checked that it is
        // open (fstat) and `into_raw_fd` gives up its claim, so this `OwnedFd` is its only
        // owner; `receive_descriptors` unset the variables, so it cannot be taken twice.
        let fd = unsafe { OwnedFd::from_raw_fd(descriptor.into_raw_fd()) };
        if unix {
            sockets.push(UnixListener::from(fd));
        } else {
            other += 1;
        }
    }
    if other > 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("systemd passed {other} descriptor(s) that are not Unix sockets"),
        ));
    }
    Ok(sockets)
}

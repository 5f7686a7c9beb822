//! kapsule-nsenter: started by the daemon (as root) for one session. Its stdin is the control
//! socket. It reads one request, joins the container's namespaces through the pidfd it was
//! given (setns needs a single-threaded process, which this is until then), starts the session
//! there as the user, replies, then waits for the session and reports how it ended on the
//! session channel.
//!
//! The daemon has already placed this process in the container's cgroups, so the session is
//! accounted to the container, as `incus exec` sessions are.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use kapsule_dbus::quote;
use kapsule_dbus::session::{Status, parse_signal_line};
use kapsule_nsenter::{EnterRequest, Reply, Request};
use rustix::pty::OpenptFlags;
use rustix::thread::ThreadNameSpaceType;

/// The soft limit of descriptors a session starts with, as a login on the host gets it.
const SESSION_NOFILE: u64 = 1024;

/// The PATH a session starts with; login shells then set their own from the image's profile.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn main() -> ExitCode {
    // What this helper inherited beyond its control socket (a spawner's stray descriptor) never
    // reaches the session; what the session gets comes over the control socket.
    if let Err(e) = kapsule_sys::no_inherited_descriptors() {
        eprintln!("kapsule-nsenter: cannot mark inherited descriptors close-on-exec: {e}");
        return ExitCode::from(2);
    }
    // The daemon's unit raises its own descriptor limit; a session gets the usual soft limit
    // of a login (systemd's 1024; programs that use select() break past it), the hard one kept.
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if nofile.current.is_none_or(|soft| soft > SESSION_NOFILE) {
        let soft = nofile.maximum.map_or(SESSION_NOFILE, |hard| hard.min(SESSION_NOFILE));
        let limit = rustix::process::Rlimit {
            current: Some(soft),
            maximum: nofile.maximum,
        };
        if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::Nofile, limit) {
            eprintln!("kapsule-nsenter: cannot set the session's descriptor limit: {e}");
        }
    }
    let control = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => UnixStream::from(fd),
        Err(e) => {
            eprintln!("kapsule-nsenter: no control socket on stdin: {e}");
            return ExitCode::from(2);
        }
    };
    let (request, fds) = match kapsule_nsenter::recv::<Request>(&control) {
        Ok(message) => message,
        Err(e) => {
            eprintln!("kapsule-nsenter: cannot read the request: {e}");
            return ExitCode::from(2);
        }
    };
    match request {
        Request::Enter(request) => enter(control, request, fds),
    }
}

/// A started session: the child, a pidfd for signalling it without a pid race, the channel to
/// the client, and the terminal's master side if there is one.
struct Session {
    child: std::process::Child,
    pidfd: OwnedFd,
    channel: UnixStream,
    master: Option<OwnedFd>,
}

fn enter(control: UnixStream, request: EnterRequest, fds: Vec<OwnedFd>) -> ExitCode {
    let session = match start(&request, fds) {
        Ok(session) => session,
        Err(error) => {
            let _ = kapsule_nsenter::send(&control, &Reply::Failed { error }, &[]);
            return ExitCode::from(1);
        }
    };
    let reply = Reply::Started {
        pid: session.child.id() as i32,
    };
    let master: Vec<_> = session.master.iter().map(|m| m.as_fd()).collect();
    if let Err(e) = kapsule_nsenter::send(&control, &reply, &master) {
        // The daemon is gone before it could hand the session over: nobody will ever see it.
        eprintln!("kapsule-nsenter: cannot reply ({e}); ending the session");
        let _ = rustix::process::pidfd_send_signal(&session.pidfd, rustix::process::Signal::KILL);
    }
    drop(control);
    drop(session.master);
    supervise(session.child, session.pidfd, session.channel)
}

/// Forwards the client's signal requests while waiting for the command; reports its end.
///
/// One thread, by necessity: after joining another pid namespace a process may not create
/// threads (clone with CLONE_THREAD fails), so this polls the channel and the child's pidfd.
fn supervise(mut child: std::process::Child, pidfd: OwnedFd, channel: UnixStream) -> ExitCode {
    use rustix::event::{PollFd, PollFlags, poll};
    let mut pending = Vec::new();
    let mut client_gone = false;
    loop {
        let mut fds = vec![PollFd::new(&pidfd, PollFlags::IN)];
        if !client_gone {
            fds.push(PollFd::new(&channel, PollFlags::IN));
        }
        if let Err(e) = poll(&mut fds, None) {
            if e == rustix::io::Errno::INTR {
                continue;
            }
            eprintln!("kapsule-nsenter: poll: {e}");
            break;
        }
        // A pidfd is readable once its process has ended.
        if !fds[0].revents().is_empty() {
            break;
        }
        if fds.len() > 1 && !fds[1].revents().is_empty() {
            let mut buf = [0u8; 256];
            match rustix::io::read(&channel, &mut buf) {
                Ok(0) | Err(_) => {
                    // The client is gone (its terminal closed, it was killed): hang up, as a
                    // terminal would.
                    client_gone = true;
                    let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::HUP);
                }
                Ok(n) => {
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=end).collect();
                        let line = String::from_utf8_lossy(&line);
                        if let Some(signal) = parse_signal_line(&line).and_then(rustix::process::Signal::from_named_raw)
                        {
                            let _ = rustix::process::pidfd_send_signal(&pidfd, signal);
                        }
                    }
                    if pending.len() > 1024 {
                        pending.clear(); // not a client of ours
                    }
                }
            }
        }
    }
    let status = match child.wait() {
        Ok(status) => Status::from(status),
        Err(e) => {
            eprintln!("kapsule-nsenter: cannot wait for the session: {e}");
            Status::Exited(1)
        }
    };
    let mut writer = &channel;
    let _ = writer.write_all(status.to_line().as_bytes());
    ExitCode::SUCCESS
}

/// Joins the container and starts the command. Errors are what the client is told.
fn start(request: &EnterRequest, fds: Vec<OwnedFd>) -> Result<Session, String> {
    let count = fds.len();
    let mut fds = fds.into_iter();
    let (Some(container), Some(channel)) = (fds.next(), fds.next()) else {
        return Err(format!(
            "expected the container's pidfd and a channel, got {count} descriptors"
        ));
    };
    let channel = UnixStream::from(channel);
    // Without a terminal: exactly stdin, stdout and stderr follow; with one, nothing.
    let stdio: Option<[OwnedFd; 3]> = match (request.terminal, <[OwnedFd; 3]>::try_from(fds.collect::<Vec<_>>())) {
        (None, Ok(stdio)) => Some(stdio),
        (Some(_), Err(rest)) if rest.is_empty() => None,
        _ => return Err(format!("unexpected number of descriptors: {count}")),
    };

    let mut all = ThreadNameSpaceType::MOUNT
        | ThreadNameSpaceType::PROCESS_ID
        | ThreadNameSpaceType::HOST_NAME_AND_NIS_DOMAIN_NAME
        | ThreadNameSpaceType::INTER_PROCESS_COMMUNICATION
        | ThreadNameSpaceType::NETWORK
        | ThreadNameSpaceType::CONTROL_GROUP;
    // An unprivileged container's user namespace too: from there on the ids are the
    // container's, and a setuid-root program in it (sudo) makes the container's root, not the
    // host's. The kernel joins it first and checks the others against it; joining gives this
    // process every capability in it, which `confine` takes back to the init's.
    if request.confinement.user_namespace {
        all |= ThreadNameSpaceType::USER;
    }
    rustix::thread::move_into_thread_name_spaces(container.as_fd(), all)
        .map_err(|e| format!("cannot join the container's namespaces: {e}"))?;
    drop(container);
    confine(&request.confinement)?;

    // From here on every path is the container's.
    let account = Account::lookup(&request.user, request.uid, request.gid);
    let (stdin, stdout, stderr, master) = match request.terminal {
        Some((rows, columns)) => {
            let (master, slave) = open_terminal(rows, columns)?;
            let out = slave.try_clone().map_err(|e| e.to_string())?;
            let err = slave.try_clone().map_err(|e| e.to_string())?;
            (slave, out, err, Some(master))
        }
        None => {
            let [i, o, e] = stdio.ok_or("no stdin, stdout and stderr were passed")?;
            (i, o, e, None)
        }
    };

    if request.working_directory_required && !std::path::Path::new(&request.working_directory).is_dir() {
        return Err(format!(
            "The directory {} does not exist in the container",
            quote(&request.working_directory)
        ));
    }
    let mut command = account.command(&request.command);
    command
        .env_clear()
        .envs(request.environment.iter().map(|(k, v)| (k, v)))
        .env("HOME", &account.home)
        .env("SHELL", &account.shell)
        .env("USER", &request.user)
        .env("LOGNAME", &request.user)
        .env("PATH", DEFAULT_PATH)
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    kapsule_sys::become_user_on_exec(
        &mut command,
        kapsule_sys::Identity {
            uid: request.uid,
            gid: request.gid,
            groups: account.groups.clone(),
            cwd: PathBuf::from(&request.working_directory),
            fallback_cwd: (!request.working_directory_required).then(|| PathBuf::from(&account.home)),
            controlling_terminal: master.is_some(),
            seccomp_filter: request.confinement.seccomp_filter.clone(),
        },
    );
    let child = command.spawn().map_err(|e| {
        format!(
            "Cannot start {} in {} as {}: {e}",
            quote(&command.get_program().to_string_lossy()),
            quote(&request.working_directory),
            request.user
        )
    })?;
    let pid = rustix::process::Pid::from_raw(child.id() as i32).ok_or("the session has no pid")?;
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
        .map_err(|e| format!("cannot watch the session: {e}"))?;
    Ok(Session {
        child,
        pidfd,
        channel,
        master,
    })
}

/// Confines this helper, and so the session it starts, as the container's init is: capabilities
/// outside the init's bounding set leave the bounding set (so no setuid program, sudo included,
/// gains one), and `no_new_privs` where the init has it. This process keeps what it holds now,
/// which the session's own setup needs. (The container's seccomp filter is loaded by the
/// session's process alone, as it starts: `kapsule_sys::become_user_on_exec`.)
fn confine(confinement: &kapsule_nsenter::Confinement) -> Result<(), String> {
    use rustix::thread::{CapabilitySet, remove_capability_from_bounding_set};
    if let Some(keep) = confinement.capability_bounding_set {
        let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(63)
            .min(63);
        for capability in (0..=last).filter(|n| keep & (1 << n) == 0) {
            remove_capability_from_bounding_set(CapabilitySet::from_bits_retain(1 << capability))
                .map_err(|e| format!("cannot drop capability {capability} as the container does: {e}"))?;
        }
    }
    if confinement.no_new_privs {
        rustix::thread::set_no_new_privs(true)
            .map_err(|e| format!("cannot set no_new_privs as the container has it: {e}"))?;
    }
    Ok(())
}

/// A terminal of the container's own devpts: `tty` inside names a real `/dev/pts/N`.
fn open_terminal(rows: u16, columns: u16) -> Result<(OwnedFd, OwnedFd), String> {
    let fail = |what: &str, e: rustix::io::Errno| format!("cannot make a terminal in the container ({what}: {e})");
    let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
        .map_err(|e| fail("openpt", e))?;
    rustix::pty::grantpt(&master).map_err(|e| fail("grantpt", e))?;
    rustix::pty::unlockpt(&master).map_err(|e| fail("unlockpt", e))?;
    let size = rustix::termios::Winsize {
        ws_row: rows,
        ws_col: columns,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(&master, size).map_err(|e| fail("window size", e))?;
    let slave = rustix::pty::ioctl_tiocgptpeer(&master, OpenptFlags::RDWR | OpenptFlags::NOCTTY)
        .map_err(|e| fail("open the terminal", e))?;
    Ok((master, slave))
}

/// The account as the container knows it.
struct Account {
    home: String,
    shell: String,
    groups: Vec<u32>,
}

impl Account {
    /// Home and shell from the container's `/etc/passwd` (falling back to `/home/<user>` and
    /// `/bin/sh`), supplementary groups from its `/etc/group` (so `usermod -aG docker` inside
    /// counts at the next enter).
    fn lookup(user: &str, uid: u32, gid: u32) -> Account {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let entry = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() >= 7 && f[0] == user)
            .or_else(|| {
                passwd
                    .lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|f| f.len() >= 7 && f[2] == uid.to_string())
            });
        let (home, shell) = match entry {
            Some(f) => (f[5].to_owned(), f[6].to_owned()),
            None => (format!("/home/{user}"), String::new()),
        };
        let shell = if shell.is_empty() || !std::path::Path::new(&shell).exists() {
            "/bin/sh".to_owned()
        } else {
            shell
        };
        let group_file = std::fs::read_to_string("/etc/group").unwrap_or_default();
        let mut groups = vec![gid];
        for line in group_file.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() >= 4
                && f[3].split(',').any(|member| member == user)
                && let Ok(g) = f[2].parse::<u32>()
                && !groups.contains(&g)
            {
                groups.push(g);
            }
        }
        Account { home, shell, groups }
    }

    /// A login shell (`-bash`), or the command run through a login `sh` so the image's profile
    /// sets PATH and the like; `exec "$0" "$@"` passes every argument exactly as given.
    fn command(&self, argv: &[String]) -> Command {
        match argv.split_first() {
            None => {
                let mut command = Command::new(&self.shell);
                let name = self.shell.rsplit('/').next().unwrap_or("sh");
                command.arg0(format!("-{name}"));
                command
            }
            Some((program, args)) => {
                let mut command = Command::new("/bin/sh");
                command.args(["-l", "-c", "exec \"$0\" \"$@\""]).arg(program).args(args);
                command
            }
        }
    }
}

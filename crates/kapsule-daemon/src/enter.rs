//! Entering a container: the daemon starts it if needed, sets the caller up once, then has
//! `kapsule-nsenter` start the session inside the container's namespaces and cgroup as the caller.
//! The caller never needs Incus rights; their environment travels in the call, never on a command
//! line; their terminal (or stdin/stdout/stderr) reaches the session by fd passing.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kapsule_dbus::Error;
use kapsule_nsenter::{EnterRequest, Reply, Request};

use crate::State;
use crate::authority::Requester;
use crate::caller::Caller;
use crate::containers;
use crate::users::{self, Account, Notes};

/// Variables of the caller's environment a session does not inherit: shell bookkeeping, the
/// host's name and colours, and PATH (the image's profile sets its own).
const DROPPED: &[&str] = &["_", "SHLVL", "OLDPWD", "PWD", "HOSTNAME", "HOST", "LS_COLORS", "PATH"];
/// Bounds on what a caller may send (the daemon is root; nothing unbounded goes through it).
const MAX_ARGS: usize = 4096;
const MAX_ENV: usize = 4096;
const MAX_TEXT: usize = 128 * 1024;

/// Where the session's input and output go.
#[derive(Debug)]
pub(crate) enum Stdio {
    /// A terminal of this size (rows, columns), made inside the container.
    Terminal(u16, u16),
    /// The caller's own stdin, stdout and stderr.
    Fds([OwnedFd; 3]),
}

/// The options of `Enter`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct EnterOptions {
    /// A terminal of (rows, columns).
    pub terminal: Option<(u16, u16)>,
    pub working_directory_required: bool,
}

impl EnterOptions {
    pub(crate) fn parse(options: &HashMap<String, zbus::OwnedVariant>) -> Result<EnterOptions, Error> {
        let bad = |key: &str, want: &str| Error::InvalidArgument(format!("Option '{key}' must be {want}"));
        let flag = |key: &str| -> Result<bool, Error> {
            options
                .get(key)
                .map(|v| bool::try_from(v).map_err(|_| bad(key, "a boolean")))
                .transpose()
                .map(Option::unwrap_or_default)
        };
        let size = |key: &str, default: u16| -> Result<u16, Error> {
            match options.get(key) {
                None => Ok(default),
                Some(v) => u32::try_from(v)
                    .ok()
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad(key, "a number from 1 to 65535 (u)")),
            }
        };
        if let Some(unknown) = options
            .keys()
            .find(|k| !["terminal", "rows", "columns", "working_directory_required"].contains(&k.as_str()))
        {
            return Err(Error::InvalidArgument(format!("Unknown option '{unknown}'")));
        }
        let terminal = if flag("terminal")? {
            Some((size("rows", 24)?, size("columns", 80)?))
        } else {
            None
        };
        Ok(EnterOptions {
            terminal,
            working_directory_required: flag("working_directory_required")?,
        })
    }
}

/// A session to start.
#[derive(Debug)]
pub(crate) struct Session {
    pub container: String,
    pub command: Vec<String>,
    pub working_directory: String,
    pub working_directory_required: bool,
    pub environment: HashMap<String, String>,
    pub stdio: Stdio,
}

/// What the client gets back: the container's name, the session channel, and the terminal's
/// master side when there is one.
#[derive(Debug)]
pub(crate) struct Started {
    pub container: String,
    pub channel: OwnedFd,
    pub terminal: Option<OwnedFd>,
}

/// The container a caller means: the one named, or their configured default.
pub(crate) async fn resolve_name(state: &State, caller: &Caller, name: &str) -> Result<String, Error> {
    if !name.is_empty() {
        return Ok(name.to_owned());
    }
    Ok(crate::config::for_caller(&state.settings.system_files(), caller)
        .await
        .remove("default_container")
        .unwrap_or_default())
}

/// Everything before the session itself: the container exists and runs, and the caller is set
/// up in it. Returns the caller's account and what the container was made with.
/// The caller must be allowed to enter it (see [`containers::enter_action`]).
pub(crate) async fn prepare(state: &State, who: &Requester, name: &str) -> Result<(Account, users::Wants), Error> {
    let caller = &who.caller;
    let instance = containers::get_kapsule_container(state, name).await?;
    who.authorize(containers::enter_action(&instance, caller.uid), &[("container", name)])
        .await?;
    containers::ensure_running(state, None, &instance)
        .await
        .map_err(|e| Error::Failed(format!("Cannot start container '{name}': {}", e.message())))?;
    let account = Account::of(caller);
    users::ensure(state, Notes(None), &instance, &account)
        .await
        .map_err(|e| Error::Failed(format!("Cannot set up your user in '{name}': {}", e.message())))?;
    Ok((account, users::Wants::of(&instance)))
}

/// Starts `session` as the caller of `who`.
pub(crate) async fn start(state: &State, who: &Requester, session: Session) -> Result<Started, Error> {
    check_bounds(&session)?;
    let name = resolve_name(state, &who.caller, &session.container).await?;
    let (account, wants) = prepare(state, who, &name).await?;
    let (pid, pidfd) = container_init(state, &name).await?;
    let mounts = (pid, &pidfd);
    crate::sockets::ensure(state, &name, &account, &session.environment, wants.session_mode, mounts).await;
    let environment = session_environment(&session.environment);

    let (terminal, stdio) = match session.stdio {
        Stdio::Terminal(rows, columns) => (Some((rows, columns)), Vec::new()),
        Stdio::Fds(fds) => (None, fds.into_iter().collect()),
    };
    let request = EnterRequest {
        user: account.name.clone(),
        uid: account.uid,
        gid: account.gid,
        command: session.command,
        environment,
        working_directory: session.working_directory,
        working_directory_required: session.working_directory_required,
        terminal,
    };
    let (channel, mut fds) = run_helper(state, &name, (pid, pidfd), request, stdio).await?;
    Ok(Started {
        container: name,
        channel: OwnedFd::from(channel),
        terminal: if terminal.is_some() { fds.pop() } else { None },
    })
}

/// Has `kapsule-nsenter` start `request` in container `name` (whose init is `pid`, `pidfd`),
/// in the container's cgroup, with `stdio` as the command's descriptors when it has no
/// terminal. Returns the session channel (how it ends comes there) and the descriptors of the
/// helper's reply (a terminal's master).
pub(crate) async fn run_helper(
    state: &State,
    name: &str,
    (pid, pidfd): (u32, OwnedFd),
    request: EnterRequest,
    stdio: Vec<OwnedFd>,
) -> Result<(UnixStream, Vec<OwnedFd>), Error> {
    let (client_channel, helper_channel) = UnixStream::pair().map_err(failed)?;
    let (control, helper_control) = UnixStream::pair().map_err(failed)?;
    let helper_path = state.settings.nsenter_path();
    let mut helper = tokio::process::Command::new(&helper_path)
        .env_clear()
        .stdin(std::process::Stdio::from(OwnedFd::from(helper_control)))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(|e| Error::Failed(format!("Cannot run {}: {e}", helper_path.display())))?;
    // Never 0: written to cgroup.procs, 0 would move the daemon itself.
    let helper_pid = helper
        .id()
        .ok_or_else(|| Error::Failed("The session helper ended at once".into()))?;
    // Reap the helper whenever it ends (with its session, perhaps hours from now); until then
    // the daemon is not idle.
    let busy = state.activity.hold();
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

/// The container's init process and a pidfd for it. Reading it from Incus costs a state request
/// (which gathers usage figures: the slowest part of an enter), so the pid is remembered and,
/// on later enters, checked instead: after the pidfd is open, `/proc` must show a pid-namespace
/// init in the container's cgroup. A pid recycled by another process fails that check, and a
/// process that died after it makes `setns` fail; neither enters the wrong place.
pub(crate) async fn container_init(state: &State, name: &str) -> Result<(u32, OwnedFd), Error> {
    let cached = state.init_pids.lock().expect("init pids").get(name).copied();
    if let Some(pid) = cached
        && let Some(pidfd) = open_init(pid, name)
    {
        return Ok((pid, pidfd));
    }
    let pid = init_pid(state, name).await?;
    let pidfd =
        open_init(pid, name).ok_or_else(|| Error::Failed(format!("Container '{name}' stopped while entering it")))?;
    state.init_pids.lock().expect("init pids").insert(name.to_owned(), pid);
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

async fn init_pid(state: &State, name: &str) -> Result<u32, Error> {
    let instance_state = state.incus.instance_state(name).await.map_err(crate::incus_error)?;
    instance_state
        .init_pid()
        .ok_or_else(|| Error::Failed(format!("Container '{name}' is not running")))
}

/// Refuses what no real session needs: thousands of arguments or variables, huge strings.
fn check_bounds(session: &Session) -> Result<(), Error> {
    let too_big = |what: &str| Err(Error::InvalidArgument(format!("Too large: {what}")));
    if session.command.len() > MAX_ARGS || session.command.iter().any(|a| a.len() > MAX_TEXT) {
        return too_big("the command");
    }
    if session.environment.len() > MAX_ENV
        || session
            .environment
            .iter()
            .any(|(k, v)| k.len() > MAX_TEXT || v.len() > MAX_TEXT)
    {
        return too_big("the environment");
    }
    if let Some(key) = session.environment.keys().find(|k| k.is_empty() || k.contains('=')) {
        return Err(Error::InvalidArgument(format!(
            "Invalid environment variable name {}: it must be non-empty and without '='",
            kapsule_dbus::quote(key)
        )));
    }
    if session.working_directory.len() > MAX_TEXT {
        return too_big("the working directory");
    }
    if !session.working_directory.is_empty() && !Path::new(&session.working_directory).is_absolute() {
        return Err(Error::InvalidArgument(format!(
            "The working directory '{}' is not absolute",
            session.working_directory
        )));
    }
    Ok(())
}

/// The caller's environment (names already checked) minus what a session must not inherit, in a
/// stable order.
pub(crate) fn session_environment(caller: &HashMap<String, String>) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = caller
        .iter()
        .filter(|(k, _)| !DROPPED.contains(&k.as_str()) && !k.starts_with("LESS_TERMCAP_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.sort();
    env
}

/// Puts process `pid` into the cgroups of container `name` (whose init is `init_pid`), where
/// `incus exec` puts its sessions: the container's cgroup in each v1 hierarchy, and its `.lxc`
/// leaf in the unified one (cgroup v2 allows no process next to child cgroups).
fn join_container_cgroups(name: &str, init_pid: u32, pid: u32) -> std::io::Result<()> {
    let cgroups = std::fs::read_to_string(format!("/proc/{init_pid}/cgroup"))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let payload = format!("lxc.payload.{name}");
    let mut joined_unified = false;
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
    if !joined_unified && mountinfo.contains(" - cgroup2 ") {
        return Err(std::io::Error::other(format!(
            "no cgroup of '{name}' found for its init {init_pid}"
        )));
    }
    Ok(())
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
    fn the_environment_loses_host_bookkeeping_only() {
        let caller: HashMap<String, String> = [
            ("TERM", "xterm-256color"),
            ("WAYLAND_DISPLAY", "wayland-0"),
            ("PATH", "/nix/store/x/bin"),
            ("PWD", "/home/alice"),
            ("SHLVL", "2"),
            ("LESS_TERMCAP_mb", "x"),
            ("LANG", "de_DE.UTF-8"),
            ("MULTI", "line\nvalue"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let env = session_environment(&caller);
        let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["LANG", "MULTI", "TERM", "WAYLAND_DISPLAY"]);
    }

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

    #[test]
    fn options_are_typed_and_known() {
        let opts = |pairs: Vec<(&str, zbus::Variant<'_>)>| -> HashMap<String, zbus::OwnedVariant> {
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), zbus::OwnedVariant::try_from(v).unwrap()))
                .collect()
        };
        assert_eq!(EnterOptions::parse(&opts(vec![])).unwrap(), EnterOptions::default());
        assert_eq!(
            EnterOptions::parse(&opts(vec![
                ("terminal", zbus::Variant::Bool(true)),
                ("rows", zbus::Variant::U32(50)),
                ("working_directory_required", zbus::Variant::Bool(true)),
            ]))
            .unwrap(),
            EnterOptions {
                terminal: Some((50, 80)),
                working_directory_required: true
            }
        );
        for bad in [
            vec![("terminal", zbus::Variant::from("yes"))],
            vec![("terminal", zbus::Variant::Bool(true)), ("rows", zbus::Variant::U32(0))],
            vec![
                ("terminal", zbus::Variant::Bool(true)),
                ("rows", zbus::Variant::U32(70000)),
            ],
            vec![("tty", zbus::Variant::Bool(true))],
        ] {
            assert!(matches!(
                EnterOptions::parse(&opts(bad)),
                Err(Error::InvalidArgument(_))
            ));
        }
    }

    #[test]
    fn oversized_and_relative_requests_are_refused() {
        let session = |command: Vec<String>, cwd: &str| Session {
            container: "c".into(),
            command,
            working_directory: cwd.into(),
            working_directory_required: false,
            environment: HashMap::new(),
            stdio: Stdio::Terminal(24, 80),
        };
        assert!(check_bounds(&session(vec!["true".into()], "/home")).is_ok());
        assert!(check_bounds(&session(vec!["x".into(); MAX_ARGS + 1], "/")).is_err());
        assert!(check_bounds(&session(vec!["x".repeat(MAX_TEXT + 1)], "/")).is_err());
        assert!(check_bounds(&session(vec![], "relative")).is_err());
        for bad in ["A=B", ""] {
            let mut s = session(vec![], "/");
            s.environment.insert(bad.into(), "x".into());
            let e = check_bounds(&s).unwrap_err();
            assert!(e.to_string().contains("Invalid environment variable name"), "{e}");
        }
    }
}

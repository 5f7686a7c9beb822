//! Entering a container: the daemon starts it if needed, sets the caller up once, then has
//! `kapsule-nsenter` start the session inside the container's namespaces and cgroup as the caller.
//! The caller never needs Incus rights; their environment travels in the call, never on a command
//! line; their terminal (or stdin/stdout/stderr) reaches the session by fd passing.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::Path;

use kapsule_dbus::{EnterCommand, Error};
use kapsule_nsenter::EnterRequest;

use crate::container::files::ContainerFiles;
use crate::container::init::container_init;
use crate::container::meta::{self, Wants};
use crate::container::nsenter::{Role, start_helper};
use crate::container::sockets;
use crate::identity::account::Account;
use crate::identity::authority::Requester;
use crate::identity::caller::{Caller, config_for};
use crate::operation::Notes;
use crate::pipeline::{Daemon, lifecycle, recovery, setup_user};

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

impl Stdio {
    /// The session's streams from `Enter`'s arguments: a terminal when the options asked for
    /// one, else the caller's `stdin`, `stdout` and `stderr` descriptors, each required.
    pub(crate) fn of_call(
        terminal: Option<(u16, u16)>,
        mut stdio: HashMap<String, zbus::OwnedFd>,
    ) -> Result<Stdio, Error> {
        if let Some((rows, columns)) = terminal {
            return Ok(Stdio::Terminal(rows, columns));
        }
        let mut take = |key: &str| {
            stdio
                .remove(key)
                .map(OwnedFd::from)
                .ok_or_else(|| Error::InvalidArgument(format!("No '{key}' descriptor and no terminal asked for")))
        };
        Ok(Stdio::Fds([take("stdin")?, take("stdout")?, take("stderr")?]))
    }
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
pub(crate) async fn resolve_name(daemon: &Daemon, caller: &Caller, name: &str) -> Result<String, Error> {
    if !name.is_empty() {
        return Ok(name.to_owned());
    }
    Ok(config_for(&daemon.containers.settings.system_files(), caller)
        .await
        .remove("default_container")
        .unwrap_or_default())
}

/// Everything before the session itself: the container exists and runs, and the caller is set
/// up in it. Returns the caller's account and what the container was made with.
/// The caller must be allowed to enter it (see [`meta::enter_action`]).
pub(crate) async fn prepare(daemon: &Daemon, who: &Requester, name: &str) -> Result<(Account, Wants), Error> {
    let caller = &who.caller;
    let instance = recovery::settled(daemon, name).await?;
    who.authorize(meta::enter_action(&instance, caller.uid), &[("container", name)])
        .await?;
    meta::check_may_hold(&instance, caller.uid)?;
    lifecycle::ensure_booted(daemon, None, &instance)
        .await
        .map_err(|e| Error::Failed(format!("Cannot start container '{name}': {}", e.message())))?;
    let account = Account::of(caller);
    setup_user::ensure(daemon, Notes(None), &instance, &account)
        .await
        .map_err(|e| Error::Failed(format!("Cannot set up your user in '{name}': {}", e.message())))?;
    Ok((account, Wants::of(&instance)))
}

/// `PrepareEnter`, for clients of the original daemon: prepares the container for the caller
/// and returns `kapsule enter` with its arguments (the working directory only when the
/// container has it). Expected failures are the reply's own, not D-Bus errors.
pub(crate) async fn prepare_command(
    daemon: &Daemon,
    who: &Requester,
    container: &str,
    command: Vec<String>,
    working_directory: String,
) -> Result<EnterCommand, Error> {
    let name = resolve_name(daemon, &who.caller, container).await?;
    match prepare(daemon, who, &name).await {
        Ok(_) => {}
        Err(Error::NotFound(message) | Error::Failed(message) | Error::InvalidArgument(message)) => {
            return Ok(EnterCommand {
                success: false,
                message,
                command: Vec::new(),
            });
        }
        Err(e) => return Err(e),
    }
    let mut argv = vec!["kapsule".to_owned(), "enter".to_owned()];
    if !working_directory.is_empty() && is_directory_in(daemon, &name, &working_directory).await {
        argv.extend(["--cwd".to_owned(), working_directory]);
    }
    argv.push(name);
    if !command.is_empty() {
        argv.push("--".to_owned());
        argv.extend(command);
    }
    Ok(EnterCommand {
        success: true,
        message: String::new(),
        command: argv,
    })
}

/// Whether `path` is a directory in running container `name` (symlinks followed inside it);
/// anything that keeps it from being known is a no.
async fn is_directory_in(daemon: &Daemon, name: &str, path: &str) -> bool {
    let Ok(files) = ContainerFiles::open(&daemon.containers, name).await else {
        return false;
    };
    let path = path.to_owned();
    matches!(
        files.with_root(move |root| root.metadata(&path)).await,
        Ok(Some(stat)) if stat.kind == kapsule_rootfs::Kind::Directory
    )
}

/// Starts `session` as the caller of `who`.
pub(crate) async fn start(daemon: &Daemon, who: &Requester, session: Session) -> Result<Started, Error> {
    check_bounds(&session)?;
    let name = resolve_name(daemon, &who.caller, &session.container).await?;
    let (account, wants) = prepare(daemon, who, &name).await?;
    let (pid, pidfd) = container_init(&daemon.containers, &name).await?;
    let mounts = (pid, &pidfd);
    sockets::ensure(
        &daemon.containers,
        &name,
        &account,
        &session.environment,
        wants.session_mode,
        mounts,
    )
    .await;
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
        confinement: Default::default(),
    };
    let (channel, mut fds) =
        start_helper(&daemon.containers, Role::Session, &name, (pid, pidfd), request, stdio).await?;
    if wants.ephemeral {
        daemon.ephemeral.session_started(&name);
    }
    Ok(Started {
        container: name,
        channel: OwnedFd::from(channel),
        terminal: if terminal.is_some() { fds.pop() } else { None },
    })
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
            "The working directory {} is not absolute",
            kapsule_dbus::quote(&session.working_directory)
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

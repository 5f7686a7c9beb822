//! `kapsule-host-exec`: a command run on the host, as the same user, from inside a container.
//!
//! It asks the host session's `flatpak-session-helper` (`org.freedesktop.Flatpak.Development`
//! on the session bus, the interface `flatpak-spawn --host` uses) to start the command, handing
//! it our stdin, stdout and stderr. Kapsule mounts the host's session bus into non-session-mode
//! containers, so nothing goes through the root daemon and the command gets exactly the rights
//! the user has on the host.
//!
//! When stdin is a terminal, the command gets a pty of its own (so the host side sees a terminal,
//! owns it as its controlling terminal and has job control): each of our standard streams that
//! is a terminal is replaced by the pty's other side, keystrokes are relayed into it in raw mode,
//! its output back, and window sizes follow ours. Signals sent to us (Ctrl-C without a
//! terminal, `kill`) go to the host command's process group; if we die, the helper kills the
//! command (it watches our bus connection).
//!
//! The working directory is ours when the host has it, else the home: the helper cannot enter
//! it, says so, and nothing was started, so it is asked again with the home.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use std::path::PathBuf;

use kapsule_dbus::session::Status;

use futures_util::StreamExt;

/// Our own name; invoked under any other (a symlink `xdg-open`), that name is the command.
pub const NAME: &str = "kapsule-host-exec";

/// Flags of `HostCommand`: the environment is exactly the one passed, and the command is killed
/// when our bus connection closes.
const CLEAR_ENV: u32 = 1;
const WATCH_BUS: u32 = 2;

/// Variables that describe the container, not the user's session, and stay behind.
const CONTAINER_ONLY: &[&str] = &["container", "container_uuid"];

#[zbus::proxy(
    interface = "org.freedesktop.Flatpak.Development",
    default_service = "org.freedesktop.Flatpak",
    default_path = "/org/freedesktop/Flatpak/Development"
)]
trait Development {
    /// Starts `argv` in `cwd_path` with `fds` (target number to descriptor) and `envs`; the pid.
    /// Byte strings carry their terminating NUL, as GLib's bytestrings do.
    fn host_command(
        &self,
        cwd_path: &[u8],
        argv: &[&[u8]],
        fds: HashMap<u32, zbus::Fd<'_>>,
        envs: HashMap<&str, &str>,
        flags: u32,
    ) -> zbus::Result<u32>;

    /// Sends `signal` to the command `pid` (or its process group).
    fn host_command_signal(&self, pid: u32, signal: u32, to_process_group: bool) -> zbus::Result<()>;

    /// The command `pid` ended; `exit_status` is its wait status.
    #[zbus(signal)]
    fn host_command_exited(&self, pid: u32, exit_status: u32) -> zbus::Result<()>;
}

/// What to run.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub argv: Vec<OsString>,
}

/// Why there is nothing to run.
#[derive(Debug, PartialEq, Eq)]
pub enum Usage {
    /// `--help`: this text on stdout.
    Help(String),
    /// A mistake: this line on stderr.
    Wrong(String),
}

const HELP: &str = "\
Usage: kapsule-host-exec COMMAND [ARGUMENT...]

Runs COMMAND on the host, as you, with your environment, standard streams (or a terminal of
its own when stdin is one) and working directory (your home when the host has no such
directory). Exits as COMMAND did.

Linked under another name, it runs that name on the host:
    ln -s /usr/local/bin/kapsule-host-exec ~/.local/bin/xdg-open

It needs the host's session bus (containers made without --session-mode have it) and Flatpak's
flatpak-session-helper on it.
";

impl Request {
    /// The request in `args` (our own `argv`, name first).
    pub fn from_args(args: impl IntoIterator<Item = OsString>) -> Result<Request, Usage> {
        let mut args = args.into_iter();
        let zeroth = args.next().unwrap_or_default();
        let name = std::path::Path::new(&zeroth)
            .file_name()
            .map(OsStr::to_owned)
            .unwrap_or_default();
        let mut rest: Vec<OsString> = args.collect();
        if !name.is_empty() && name != NAME {
            // A link: the link's name is the command; every argument is its own.
            rest.insert(0, name);
            return Ok(Request { argv: rest });
        }
        match rest.first().and_then(|a| a.to_str()) {
            Some("-h" | "--help") => return Err(Usage::Help(HELP.to_owned())),
            Some("--") => {
                rest.remove(0);
            }
            Some(option) if option.starts_with('-') => {
                return Err(Usage::Wrong(format!(
                    "unknown option {option} (see --help; put -- before a command that starts with -)"
                )));
            }
            _ => {}
        }
        if rest.is_empty() {
            return Err(Usage::Wrong("no command given (see --help)".into()));
        }
        Ok(Request { argv: rest })
    }
}

/// How the host command ended, from the wait status `HostCommandExited` carries (what
/// `waitpid` gives).
fn ended(wait_status: u32) -> Status {
    use std::os::unix::process::ExitStatusExt;
    Status::from(std::process::ExitStatus::from_raw(wait_status as i32))
}

/// What went wrong on our side, each said in one line.
#[derive(Debug)]
pub enum Error {
    /// No session bus to talk to.
    NoBus(String),
    /// The bus is the container's own (session mode).
    SessionMode,
    /// The host's bus has no flatpak-session-helper.
    NoHelper,
    /// The helper could not start the command.
    NotStarted(String),
    /// Anything else.
    Other(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NoBus(why) => write!(f, "cannot reach the host's session bus: {why}"),
            Error::SessionMode => f.write_str(
                "this container has a session bus of its own (it was made with --session-mode), \
                 so the host's session is out of reach from here",
            ),
            Error::NoHelper => f.write_str(
                "the host's session bus has no flatpak-session-helper (org.freedesktop.Flatpak); \
                 it comes with Flatpak",
            ),
            Error::NotStarted(why) | Error::Other(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// Our exit status for it: 127 when the command could not be started, as a shell does.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::NotStarted(_) => 127,
            _ => 125,
        }
    }
}

/// Our environment as it goes to the host: every variable but the container's own (and those
/// that are not UTF-8, which the helper's interface cannot carry).
pub fn environment(vars: impl IntoIterator<Item = (OsString, OsString)>) -> HashMap<String, String> {
    vars.into_iter()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| !CONTAINER_ONLY.contains(&k.as_str()))
        .collect()
}

/// A GLib bytestring: the bytes and their terminating NUL.
fn bytestring(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 1);
    out.extend_from_slice(bytes);
    out.push(0);
    out
}

/// The standard streams the command gets, and the pty master when it has a terminal.
struct Streams {
    fds: [OwnedFd; 3],
    master: Option<OwnedFd>,
}

fn streams() -> std::io::Result<Streams> {
    let ours = [
        std::io::stdin().as_fd().try_clone_to_owned()?,
        std::io::stdout().as_fd().try_clone_to_owned()?,
        std::io::stderr().as_fd().try_clone_to_owned()?,
    ];
    if !kapsule_terminal::is_terminal(&ours[0]) {
        return Ok(Streams {
            fds: ours,
            master: None,
        });
    }
    let (master, other) = kapsule_terminal::open_pty()?;
    kapsule_terminal::copy_window_size(&ours[0], &master);
    let mut fds = Vec::with_capacity(3);
    for fd in ours {
        fds.push(if kapsule_terminal::is_terminal(&fd) {
            other.try_clone()?
        } else {
            fd
        });
    }
    let fds: [OwnedFd; 3] = fds.try_into().expect("three streams");
    Ok(Streams {
        fds,
        master: Some(master),
    })
}

/// Whether this error from the bus means nobody owns the helper's name, or the bus could not
/// start it.
fn is_unknown_service(error: &zbus::Error) -> bool {
    match error {
        zbus::Error::MethodError(name, _, _) => {
            matches!(
                name.as_str(),
                "org.freedesktop.DBus.Error.ServiceUnknown" | "org.freedesktop.DBus.Error.NameHasNoOwner"
            ) || name.as_str().starts_with("org.freedesktop.DBus.Error.Spawn.")
        }
        zbus::Error::FDO(e) => matches!(
            **e,
            zbus::fdo::Error::ServiceUnknown(_) | zbus::fdo::Error::NameHasNoOwner(_)
        ),
        _ => false,
    }
}

/// The human part of an error from the helper.
fn message_of(error: &zbus::Error) -> String {
    match error {
        zbus::Error::MethodError(_, Some(message), _) => message.clone(),
        other => other.to_string(),
    }
}

/// Whether the bus we reached is run by this container itself (its machine ID is ours).
async fn bus_is_our_own(connection: &zbus::Connection) -> bool {
    let Ok(ours) = std::fs::read_to_string("/etc/machine-id") else {
        return false;
    };
    let peer = zbus::fdo::PeerProxy::builder(connection)
        .destination("org.freedesktop.DBus")
        .path("/org/freedesktop/DBus")
        .build()
        .await;
    match peer {
        Ok(peer) => peer.get_machine_id().await.is_ok_and(|id| id.trim() == ours.trim()),
        Err(_) => false,
    }
}

/// Runs the request on the host and returns how the command ended.
pub async fn run(request: Request) -> Result<Status, Error> {
    let connection = zbus::Connection::session().await.map_err(|e| {
        let address = std::env::var("DBUS_SESSION_BUS_ADDRESS").unwrap_or_default();
        Error::NoBus(if address.is_empty() {
            format!("DBUS_SESSION_BUS_ADDRESS is not set and {e}")
        } else {
            format!("{address}: {e}")
        })
    })?;
    let helper = DevelopmentProxy::new(&connection)
        .await
        .map_err(|e| Error::Other(e.to_string()))?;
    // Subscribed before the command starts, so a quick exit is not missed.
    let mut exits = helper
        .receive_host_command_exited()
        .await
        .map_err(|e| Error::Other(e.to_string()))?;

    let streams = streams().map_err(|e| Error::Other(format!("cannot set up the command's streams: {e}")))?;
    let argv: Vec<Vec<u8>> = request.argv.iter().map(|a| bytestring(a.as_bytes())).collect();
    let argv_refs: Vec<&[u8]> = argv.iter().map(Vec::as_slice).collect();
    let environment = environment(std::env::vars_os());
    let envs: HashMap<&str, &str> = environment.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
    let here = std::env::current_dir().map_or_else(|_| home.clone(), PathBuf::into_os_string);
    let mut places = vec![here.clone()];
    if here != home {
        places.push(home);
    }

    let mut started = None;
    let mut last_error = None;
    for place in places {
        let fds: HashMap<u32, zbus::Fd<'_>> = streams
            .fds
            .iter()
            .enumerate()
            .map(|(n, fd)| (n as u32, zbus::Fd::from(fd.as_fd())))
            .collect();
        match helper
            .host_command(
                &bytestring(place.as_bytes()),
                &argv_refs,
                fds,
                envs.clone(),
                CLEAR_ENV | WATCH_BUS,
            )
            .await
        {
            Ok(pid) => {
                started = Some(pid);
                break;
            }
            Err(e) if is_unknown_service(&e) => {
                return Err(if bus_is_our_own(&connection).await {
                    Error::SessionMode
                } else {
                    Error::NoHelper
                });
            }
            Err(e) => {
                let missing = matches!(&e, zbus::Error::MethodError(name, _, _)
                    if name.as_str() == "org.freedesktop.DBus.Error.FileNotFound"
                        || name.as_str() == "org.freedesktop.DBus.Error.AccessDenied");
                let text = format!("{}: {}", request.argv[0].to_string_lossy(), message_of(&e));
                if missing {
                    // The program itself: another directory would not help.
                    return Err(Error::NotStarted(text));
                }
                last_error = Some(text);
            }
        }
    }
    let Some(pid) = started else {
        return Err(Error::NotStarted(last_error.unwrap_or_default()));
    };
    let Streams { fds, master } = streams;
    // The command holds its own copies; ours would keep the pty open after it exits.
    drop(fds);
    follow(&helper, &mut exits, pid, master).await
}

/// Relays the terminal (if any) and signals until the command `pid` ends.
async fn follow(
    helper: &DevelopmentProxy<'_>,
    exits: &mut HostCommandExitedStream,
    pid: u32,
    master: Option<OwnedFd>,
) -> Result<Status, Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let other = |e: std::io::Error| Error::Other(e.to_string());
    let mut raw = None;
    let mut screen = None;
    if let Some(master) = &master {
        raw = kapsule_terminal::RawMode::enable().ok();
        kapsule_terminal::pump_keyboard(master.try_clone().map_err(other)?);
        let out = master.try_clone().map_err(other)?;
        screen = Some(tokio::task::spawn_blocking(move || {
            // The pty's output goes to whichever of our streams is the terminal.
            if kapsule_terminal::is_terminal(std::io::stdout()) {
                kapsule_terminal::pump_screen(out, std::io::stdout());
            } else {
                kapsule_terminal::pump_screen(out, std::io::stderr());
            }
        }));
    }
    let mut resized = signal(SignalKind::window_change()).map_err(other)?;
    let mut forwarded = kapsule_terminal::Forwarded::catch().map_err(other)?;
    let ended = loop {
        tokio::select! {
            exited = exits.next() => {
                let Some(exited) = exited else {
                    break Err(Error::Other("lost the host's session bus while the command ran".into()));
                };
                match exited.args() {
                    Ok(args) if args.pid == pid => break Ok(ended(args.exit_status)),
                    _ => continue,
                }
            }
            _ = resized.recv() => {
                if let Some(master) = &master {
                    kapsule_terminal::copy_window_size(std::io::stdin(), master);
                }
            }
            number = forwarded.next() => {
                let _ = helper.host_command_signal(pid, number.unsigned_abs(), true).await;
            }
        }
    };
    if let Some(screen) = screen {
        // The last output reaches the screen; a background process still holding the pty does
        // not keep us here.
        let _ = tokio::time::timeout(std::time::Duration::from_millis(500), screen).await;
    }
    drop(raw);
    ended
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    fn args(list: &[&str]) -> Result<Request, Usage> {
        Request::from_args(list.iter().map(OsString::from))
    }

    fn argv(list: &[&str]) -> Request {
        Request {
            argv: list.iter().map(OsString::from).collect(),
        }
    }

    #[test]
    fn the_command_comes_from_the_arguments_or_from_the_name_it_was_called_by() {
        assert_eq!(
            args(&["kapsule-host-exec", "cat", "/etc/hostname"]),
            Ok(argv(&["cat", "/etc/hostname"]))
        );
        assert_eq!(
            args(&["/usr/local/bin/kapsule-host-exec", "--", "-x", "y"]),
            Ok(argv(&["-x", "y"]))
        );
        // Linked as xdg-open: every argument is the command's, options too.
        assert_eq!(
            args(&["/home/u/.local/bin/xdg-open", "--help", "a b"]),
            Ok(argv(&["xdg-open", "--help", "a b"]))
        );
        assert!(matches!(args(&["kapsule-host-exec", "--help"]), Err(Usage::Help(_))));
        assert!(matches!(args(&["kapsule-host-exec"]), Err(Usage::Wrong(_))));
        assert!(matches!(args(&["kapsule-host-exec", "--"]), Err(Usage::Wrong(_))));
        assert!(matches!(args(&["kapsule-host-exec", "-v", "ls"]), Err(Usage::Wrong(w)) if w.contains("-v")));
    }

    #[test]
    fn wait_statuses_decode_as_waitpid_macros_do() {
        assert_eq!(ended(0), Status::Exited(0));
        assert_eq!(ended(7 << 8), Status::Exited(7));
        assert_eq!(ended(2), Status::Killed(2));
        // Killed by SIGSEGV with a core dump (0x80).
        assert_eq!(ended(0x80 | 11), Status::Killed(11));
    }

    #[test]
    fn the_environment_goes_along_but_for_the_containers_own() {
        let env = environment([
            ("PATH".into(), "/usr/bin".into()),
            ("container".into(), "lxc".into()),
            ("BAD".into(), OsString::from_vec(vec![0xff])),
        ]);
        assert_eq!(env, HashMap::from([("PATH".to_owned(), "/usr/bin".to_owned())]));
    }

    #[test]
    fn bytestrings_end_with_nul() {
        assert_eq!(bytestring(b"/home"), b"/home\0");
    }
}

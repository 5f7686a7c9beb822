//! `kapsule enter`: a session in a container as yourself, through the daemon.
//!
//! With a terminal on stdin and stdout, the daemon makes a terminal inside the container and
//! hands its master side back; this process relays bytes both ways in raw mode and passes on
//! window-size changes. Otherwise the command gets this process's own stdin, stdout and stderr
//! (no relay at all), and Ctrl-C and friends are forwarded as signals. Either way the command's
//! exit status (or its signal) becomes ours.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use kapsule_dbus::ManagerProxy;
use kapsule_dbus::session::{Status, signal_line};
use zbus::{Connection, OwnedVariant, Variant};

use crate::daemon::explain;

/// What `enter` was asked for.
#[derive(Debug)]
pub struct EnterArgs {
    pub name: Option<String>,
    pub cwd: Option<PathBuf>,
    pub command: Vec<String>,
    /// A missing default container is an error instead of being made (exported apps and
    /// commands: a click must not start a create).
    pub no_create: bool,
}

/// Enters the container and returns how the session ended.
pub async fn enter(connection: &Connection, manager: &ManagerProxy<'_>, args: EnterArgs) -> Result<Status> {
    // An explicit --cwd must exist inside; the current directory is only a wish (the home is
    // used when the container does not have it).
    let (cwd, required) = match &args.cwd {
        Some(dir) => (std::path::absolute(dir)?, true),
        None => (std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")), false),
    };
    let cwd = cwd
        .to_str()
        .ok_or_else(|| anyhow!("the directory {} is not valid UTF-8", cwd.display()))?
        .to_owned();
    let terminal = rustix::termios::isatty(std::io::stdin()) && rustix::termios::isatty(std::io::stdout());
    let target = args.name.clone().unwrap_or_default();
    let call = || async {
        let (stdio, options) = request(terminal, required)?;
        let environment: HashMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        anyhow::Ok(
            manager
                .enter(&target, &args.command, &cwd, environment, stdio, options)
                .await,
        )
    };
    // One call on the way in; only when the container is missing is the configuration read, to
    // make the default container on first use.
    let (container, mut fds) = match call().await?.map_err(kapsule_dbus::Error::from) {
        Err(kapsule_dbus::Error::NotFound(message)) => {
            let config = manager.get_config().await.map_err(explain)?;
            if let Some(error) = config.get("error") {
                bail!("{error}");
            }
            let default = config.get("default_container").cloned().unwrap_or_default();
            let wanted = if target.is_empty() {
                default.clone()
            } else {
                target.clone()
            };
            if wanted.is_empty() || wanted != default || args.no_create {
                bail!("{message}");
            }
            create_default(connection, manager, &default).await?;
            call().await?.map_err(explain)?
        }
        other => other.map_err(explain)?,
    };
    let channel = UnixStream::from(OwnedFd::from(
        fds.remove("channel")
            .ok_or_else(|| anyhow!("the daemon sent no session channel"))?,
    ));

    let stdout_tty = rustix::termios::isatty(std::io::stdout());
    let _marker = stdout_tty.then(|| ContainerMarker::push(&container));
    match fds.remove("terminal") {
        Some(master) if terminal => relay_terminal(OwnedFd::from(master), channel).await,
        _ => forward_signals(channel).await,
    }
}

/// The descriptors and options of an `Enter` call: a terminal of our size, or our own fds.
type EnterRequest = (HashMap<String, zbus::OwnedFd>, HashMap<String, OwnedVariant>);

fn request(terminal: bool, cwd_required: bool) -> Result<EnterRequest> {
    let mut options: HashMap<String, OwnedVariant> = HashMap::new();
    let mut stdio: HashMap<String, zbus::OwnedFd> = HashMap::new();
    let option = |v: Variant<'_>| OwnedVariant::try_from(v).expect("plain values convert");
    options.insert("working_directory_required".into(), option(Variant::Bool(cwd_required)));
    if terminal {
        options.insert("terminal".into(), option(Variant::Bool(true)));
        let size = rustix::termios::tcgetwinsize(std::io::stdout()).ok();
        if let Some(size) = size.filter(|s| s.ws_row > 0 && s.ws_col > 0) {
            options.insert("rows".into(), option(Variant::U32(size.ws_row.into())));
            options.insert("columns".into(), option(Variant::U32(size.ws_col.into())));
        }
    } else {
        for (key, fd) in [
            ("stdin", std::io::stdin().as_fd().try_clone_to_owned()?),
            ("stdout", std::io::stdout().as_fd().try_clone_to_owned()?),
            ("stderr", std::io::stderr().as_fd().try_clone_to_owned()?),
        ] {
            stdio.insert(key.to_owned(), zbus::OwnedFd::from(fd));
        }
    }
    Ok((stdio, options))
}

/// The configured default container is made on first use from the default image, with
/// progress, as the original CLI did; a create racing ours is fine.
async fn create_default(connection: &Connection, manager: &ManagerProxy<'_>, name: &str) -> Result<()> {
    eprintln!("Creating container: {name}");
    let signals = crate::follow::subscribe(connection).await?;
    let path = match manager.create_container(name, "", HashMap::new()).await {
        Ok(path) => path,
        Err(e) => match kapsule_dbus::Error::from(e) {
            kapsule_dbus::Error::AlreadyExists(_) => return Ok(()),
            other => return Err(explain(other)),
        },
    };
    match crate::follow::follow(connection, signals, &path).await {
        Ok(()) => {
            crate::exports::menu_entry_for_new(manager, name).await;
            Ok(())
        }
        // Made by another create between our check and Incus's: an operation's failure has only
        // its text on the wire, Incus's "already exists".
        Err(e) if e.to_string().contains("already exists") => Ok(()),
        Err(e) => Err(e),
    }
}

/// What a command run with [`capture`] did.
#[derive(Debug)]
pub(crate) struct Captured {
    pub status: Status,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs `argv` in container `name` as the caller, with nothing on stdin, and collects what it
/// prints (as `enter` would run it, so only what the user may read inside is read).
pub(crate) async fn capture(manager: &ManagerProxy<'_>, name: &str, argv: &[&str]) -> Result<Captured> {
    let (out_read, out_write) = std::io::pipe()?;
    let (err_read, err_write) = std::io::pipe()?;
    let null = std::fs::File::open("/dev/null")?;
    let stdio: HashMap<String, zbus::OwnedFd> = HashMap::from([
        ("stdin".to_owned(), zbus::OwnedFd::from(OwnedFd::from(null))),
        ("stdout".to_owned(), zbus::OwnedFd::from(OwnedFd::from(out_write))),
        ("stderr".to_owned(), zbus::OwnedFd::from(OwnedFd::from(err_write))),
    ]);
    let options = HashMap::from([(
        "working_directory_required".to_owned(),
        OwnedVariant::try_from(Variant::Bool(false)).expect("plain values convert"),
    )]);
    let environment = HashMap::from([("LC_ALL".to_owned(), "C.UTF-8".to_owned())]);
    let argv: Vec<String> = argv.iter().map(|a| (*a).to_owned()).collect();
    // The call takes the write ends; once it returns, only the session holds them, so the reads
    // end when it does.
    let (_, mut fds) = manager
        .enter(name, &argv, "/", environment, stdio, options)
        .await
        .map_err(explain)?;
    let channel = UnixStream::from(OwnedFd::from(
        fds.remove("channel")
            .ok_or_else(|| anyhow!("the daemon sent no session channel"))?,
    ));
    let read_all = |mut pipe: std::io::PipeReader| {
        tokio::task::spawn_blocking(move || {
            let mut bytes = Vec::new();
            pipe.read_to_end(&mut bytes).map(|_| bytes)
        })
    };
    let (stdout, stderr) = (read_all(out_read), read_all(err_read));
    let status = tokio::task::spawn_blocking(move || read_status(channel)).await??;
    Ok(Captured {
        status,
        stdout: stdout.await??,
        stderr: stderr.await??,
    })
}

/// A container read through [`capture`], for `kapsule export`: small POSIX shell scripts, so any
/// image with a `sh` will do (BusyBox's included).
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    pub manager: &'a ManagerProxy<'a>,
    pub name: &'a str,
}

impl Reader<'_> {
    /// Runs `script` with `args` under `sh -c`; its stdout, or its stderr as the error.
    async fn sh(&self, script: &str, args: &[&str]) -> kapsule_export::Result<Vec<u8>> {
        let mut argv = vec!["sh", "-c", script, "sh"];
        argv.extend_from_slice(args);
        let ran = capture(self.manager, self.name, &argv)
            .await
            .map_err(|e| kapsule_export::Error::Guest(format!("{e:#}")))?;
        match ran.status {
            Status::Exited(0) => Ok(ran.stdout),
            status => Err(kapsule_export::Error::Guest(format!(
                "reading the container failed ({status:?}): {}",
                String::from_utf8_lossy(&ran.stderr).trim()
            ))),
        }
    }
}

/// NUL-separated strings.
fn split_nul(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

impl kapsule_export::Guest for Reader<'_> {
    async fn desktop_entries(&self) -> kapsule_export::Result<Vec<(String, String)>> {
        // Path NUL text NUL, for each readable entry (desktop entries never hold a NUL).
        let script = r#"for d in "$@"; do for f in "$d"/*.desktop "$d"/*/*.desktop; do
            [ -f "$f" ] && [ -r "$f" ] || continue; printf '%s\0' "$f"; cat "$f"; printf '\0'
        done; done"#;
        let out = self.sh(script, kapsule_export::APPLICATION_DIRS).await?;
        let parts = split_nul(&out);
        Ok(parts
            .chunks_exact(2)
            .map(|pair| (pair[0].clone(), pair[1].clone()))
            .collect())
    }

    async fn icon_files(&self, name: &str) -> kapsule_export::Result<Vec<String>> {
        // theme/size/context/NAME.ext (hicolor/48x48/apps, breeze/apps/48) and the pixmaps.
        let script = r#"n=$1; shift; for d in "$@"; do for f in "$d"/*/*/*/"$n".* "$d"/"$n".*; do
            [ -f "$f" ] && printf '%s\0' "$f"; done; done; :"#;
        let mut args = vec![name];
        args.extend_from_slice(kapsule_export::ICON_DIRS);
        let out = self.sh(script, &args).await?;
        Ok(split_nul(&out)
            .into_iter()
            .filter(|p| !p.is_empty())
            .filter(|p| {
                let file = p.rsplit('/').next().unwrap_or("");
                kapsule_export::ICON_EXTENSIONS
                    .iter()
                    .any(|e| file == format!("{name}.{e}"))
            })
            .collect())
    }

    async fn read(&self, path: &str) -> kapsule_export::Result<Vec<u8>> {
        self.sh(r#"exec cat -- "$1""#, &[path]).await
    }

    async fn executable(&self, command: &str) -> kapsule_export::Result<Option<String>> {
        // PATH walked by hand: `command -v` answers with the shell's builtins (`true`, `test`)
        // before any file.
        let script = r#"case $1 in
            /*) [ -f "$1" ] && [ -x "$1" ] && printf '%s' "$1" ;;
            *) IFS=:; for d in $PATH; do
                case $d in /*) ;; *) continue ;; esac
                if [ -f "$d/$1" ] && [ -x "$d/$1" ]; then printf '%s' "$d/$1"; break; fi
            done ;;
        esac; :"#;
        let out = self.sh(script, &[command]).await?;
        let path = String::from_utf8_lossy(&out).into_owned();
        Ok((!path.is_empty()).then_some(path))
    }
}

/// Konsole's container markers (OSC 777), written when stdout is a terminal: push on the way
/// in, pop on the way out (also when the session fails).
struct ContainerMarker;

impl ContainerMarker {
    fn push(name: &str) -> ContainerMarker {
        let clean: String = name.chars().filter(|c| !matches!(c, ';' | '\x07' | '\x1b')).collect();
        write_stdout(format!("\x1b]777;container;push;{clean};kapsule\x07").as_bytes());
        ContainerMarker
    }
}

impl Drop for ContainerMarker {
    fn drop(&mut self) {
        write_stdout(b"\x1b]777;container;pop;;\x07");
    }
}

fn write_stdout(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes);
    let _ = out.flush();
}

/// Reads the final status line from the channel (blocking; run off the async thread).
fn read_status(channel: UnixStream) -> Result<Status> {
    let mut line = String::new();
    BufReader::new(channel)
        .read_line(&mut line)
        .context("lost the session")?;
    Status::parse(&line).ok_or_else(|| anyhow!("the session ended without a status (its helper died)"))
}

/// Without a terminal: the command has our fds; we only pass on the signals a user sends us.
async fn forward_signals(channel: UnixStream) -> Result<Status> {
    let reader = channel.try_clone()?;
    let mut status = tokio::task::spawn_blocking(move || read_status(reader));
    let mut signals = kapsule_terminal::Forwarded::catch()?;
    loop {
        tokio::select! {
            done = &mut status => return done?,
            number = signals.next() => {
                let mut writer = &channel;
                let _ = writer.write_all(signal_line(number).as_bytes());
            }
        }
    }
}

/// With a terminal: raw mode, bytes both ways, window sizes passed on.
async fn relay_terminal(master: OwnedFd, channel: UnixStream) -> Result<Status> {
    let _raw = kapsule_terminal::RawMode::enable().context("cannot put the terminal in raw mode")?;
    kapsule_terminal::pump_keyboard(master.try_clone()?);
    // The session's output to the screen, until the terminal's last user inside is gone.
    let master_out = master.try_clone()?;
    let output = tokio::task::spawn_blocking(move || kapsule_terminal::pump_screen(master_out, std::io::stdout()));
    let mut resized = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    let mut status = tokio::task::spawn_blocking(move || read_status(channel));
    let status = loop {
        tokio::select! {
            done = &mut status => break done??,
            _ = resized.recv() => kapsule_terminal::copy_window_size(std::io::stdout(), &master),
        }
    };
    // Let the last output reach the screen; a process left running in the background that
    // still holds the terminal must not keep us here.
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), output).await;
    Ok(status)
}

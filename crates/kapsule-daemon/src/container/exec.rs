//! Commands run as root in a running container, for the daemon's own steps (the image's init
//! and sync scripts, the boot wait, copying `/etc/skel`, linger): through the session helper
//! (`kapsule-nsenter`), as `incus exec` would run them but without its websocket session and
//! fork inside: a few milliseconds instead of about 60.
//!
//! The command gets `input` on its stdin (or nothing), its output is discarded and the start of
//! its error output kept for messages; or ([`run_as_root_reporting`]) each line of its output is
//! passed on as it comes (an upgrade's package manager), the end of it kept. It runs through root's login shell with the helper's
//! PATH, as a session does, and `LANG=C.UTF-8`, as `incus exec` gave the original daemon's
//! scripts. If it outlives its time limit, or the caller gives up on it (a
//! cancelled create), the session channel closes and the helper hangs it up (SIGHUP), as a
//! terminal would.

use std::os::fd::OwnedFd;
use std::time::Duration;

use kapsule_dbus::Error;
use kapsule_dbus::session::Status;
use kapsule_nsenter::EnterRequest;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::container::Containers;
use crate::container::nsenter::Role;
use crate::operation::{MessageKind, Notes};

/// How much of a command's error output is kept.
const KEEP_STDERR: usize = 64 * 1024;
/// How much of the end of a reported command's output is kept.
const KEEP_TAIL: usize = 4 * 1024;
/// How long the rest of the error output is waited for once the command ended (a process it
/// left behind may hold the pipe open).
const STDERR_GRACE: Duration = Duration::from_millis(500);

/// How a command ended, with the start of its error output.
#[derive(Debug)]
pub(crate) struct Ran {
    pub status: Status,
    pub stderr: Vec<u8>,
}

impl Ran {
    /// True when it exited with 0.
    pub(crate) fn success(&self) -> bool {
        self.status == Status::Exited(0)
    }

    /// Its exit code, or 128 + the signal that killed it (as a shell says).
    pub(crate) fn code(&self) -> i32 {
        match self.status {
            Status::Exited(code) => code,
            Status::Killed(signal) => 128 + signal,
        }
    }

    /// How it failed, for a message after what failed: ` (exit code N): <last line of its
    /// output>`, without the colon part when it said nothing.
    pub(crate) fn failure(&self) -> String {
        let output = String::from_utf8_lossy(&self.stderr);
        match output.trim().lines().last().unwrap_or_default() {
            "" => format!(" (exit code {})", self.code()),
            last => format!(" (exit code {}): {last}", self.code()),
        }
    }
}

/// Runs `command` as root in running container `name` with `input` on its stdin, waiting at
/// most `limit` for it to end.
pub(crate) async fn run_as_root(
    containers: &Containers,
    name: &str,
    command: &[&str],
    input: &[u8],
    limit: Duration,
) -> Result<Ran, Error> {
    let what = |e: &dyn std::fmt::Display| failed(name, command, e);
    let (stdin, feeder) = if input.is_empty() {
        (null().map_err(|e| what(&e))?, None)
    } else {
        let (read, write) = pipe().map_err(|e| what(&e))?;
        let sender = tokio::net::unix::pipe::Sender::from_owned_fd(write).map_err(|e| what(&e))?;
        (read, Some(sender))
    };
    let (stderr_read, stderr_write) = pipe().map_err(|e| what(&e))?;
    let stderr = tokio::net::unix::pipe::Receiver::from_owned_fd(stderr_read).map_err(|e| what(&e))?;
    let stdout = null().map_err(|e| what(&e))?;
    let channel = start(containers, name, command, vec![stdin, stdout, stderr_write]).await?;
    // Aborted when dropped: a command that outlives the wait (or whose caller gave up) does not
    // leave the reader behind.
    let mut collect = AbortOnDrop(tokio::spawn(read_keeping(stderr, KEEP_STDERR)));
    let input = input.to_vec();
    let feed = async move {
        if let Some(mut sender) = feeder {
            // A command that does not read its input is not an error.
            let _ = sender.write_all(&input).await;
        }
    };
    let status = match tokio::time::timeout(limit, async { tokio::join!(feed, read_status(channel)).1 }).await {
        Ok(status) => status.map_err(|e| what(&e))?,
        Err(_) => return Err(what(&format!("still running after {limit:?}; hung up"))),
    };
    let stderr = match tokio::time::timeout(STDERR_GRACE, &mut collect.0).await {
        Ok(Ok(stderr)) => stderr,
        _ => Vec::new(),
    };
    Ok(Ran { status, stderr })
}

/// Runs `command` as root in running container `name` (nothing on its stdin), passing each line
/// of its output (stdout and stderr, as a terminal shows them) to `notes` as it comes, for at
/// most `limit`. [`Ran::stderr`] keeps the end of that output, for a failure's message.
pub(crate) async fn run_as_root_reporting(
    containers: &Containers,
    name: &str,
    command: &[&str],
    limit: Duration,
    notes: Notes<'_>,
) -> Result<Ran, Error> {
    let what = |e: &dyn std::fmt::Display| failed(name, command, e);
    let (read, write) = pipe().map_err(|e| what(&e))?;
    let output = tokio::net::unix::pipe::Receiver::from_owned_fd(read).map_err(|e| what(&e))?;
    let stderr = write.try_clone().map_err(|e| what(&e))?;
    let channel = start(
        containers,
        name,
        command,
        vec![null().map_err(|e| what(&e))?, write, stderr],
    )
    .await?;
    let mut lines = tokio::io::BufReader::new(output);
    let mut tail = Vec::new();
    let status = read_status(channel);
    tokio::pin!(status);
    let deadline = tokio::time::Instant::now() + limit;
    let mut ended: Option<Status> = None;
    // Once the command ended, what it left behind may hold the pipe: a short grace, counted once.
    let mut until = deadline;
    let mut line = Vec::new();
    loop {
        tokio::select! {
            got = status.as_mut(), if ended.is_none() => {
                ended = Some(got.map_err(|e| what(&e))?);
                until = tokio::time::Instant::now() + STDERR_GRACE;
            }
            read = lines.read_until(b'\n', &mut line) => {
                match read {
                    Ok(0) | Err(_) => {
                        if ended.is_none() {
                            let got = tokio::time::timeout_at(deadline, status.as_mut()).await;
                            ended = Some(got.map_err(|_| what(&format!("still running after {limit:?}; hung up")))?.map_err(|e| what(&e))?);
                        }
                        break;
                    }
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line);
                        // Progress redrawn with carriage returns: its last state.
                        let shown = text.trim_end().rsplit('\r').next().unwrap_or_default();
                        if !shown.is_empty() {
                            notes.say(MessageKind::Dim, shown).await;
                        }
                        tail.extend_from_slice(&line);
                        if tail.len() > 2 * KEEP_TAIL {
                            tail.drain(..tail.len() - KEEP_TAIL);
                        }
                        line.clear();
                    }
                }
            }
            () = tokio::time::sleep_until(until) => match ended {
                Some(_) => break,
                None => return Err(what(&format!("still running after {limit:?}; hung up"))),
            },
        }
    }
    if tail.len() > KEEP_TAIL {
        tail.drain(..tail.len() - KEEP_TAIL);
    }
    let status = ended.ok_or_else(|| what(&"it ended without a status"))?;
    Ok(Ran { status, stderr: tail })
}

fn failed(name: &str, command: &[&str], e: &dyn std::fmt::Display) -> Error {
    Error::Failed(format!("{} in '{name}': {e}", command.join(" ")))
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

fn null() -> std::io::Result<OwnedFd> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
}

/// Starts `command` as root in `name` through the session helper with these standard streams
/// (the helper gets its own copies; ours are closed once it has them, so the pipes end when the
/// command, and what it left behind, close them). Returns the session channel.
async fn start(
    containers: &Containers,
    name: &str,
    command: &[&str],
    stdio: Vec<OwnedFd>,
) -> Result<std::os::unix::net::UnixStream, Error> {
    let init = crate::container::init::container_init(containers, name).await?;
    let request = EnterRequest {
        user: "root".into(),
        uid: 0,
        gid: 0,
        command: command.iter().map(|&a| a.to_owned()).collect(),
        environment: vec![("LANG".into(), "C.UTF-8".into())],
        working_directory: "/".into(),
        working_directory_required: false,
        terminal: None,
        confinement: Default::default(),
    };
    let (channel, _) =
        crate::container::nsenter::start_helper(containers, Role::DaemonCommand, name, init, request, stdio).await?;
    Ok(channel)
}

/// The status the session channel says when the command ended.
async fn read_status(channel: std::os::unix::net::UnixStream) -> std::io::Result<Status> {
    channel.set_nonblocking(true)?;
    let mut line = String::new();
    tokio::io::BufReader::new(tokio::net::UnixStream::from_std(channel)?)
        .read_line(&mut line)
        .await?;
    Status::parse(&line).ok_or_else(|| std::io::Error::other("it ended without a status (its helper died)"))
}

/// A task aborted when its handle goes.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads `from` to its end, keeping the first `keep` bytes (the rest is read and dropped, so
/// the writer never blocks on a full pipe).
async fn read_keeping(mut from: tokio::net::unix::pipe::Receiver, keep: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = keep.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_says_the_code_and_the_last_line() {
        let ran = |status, stderr: &str| Ran {
            status,
            stderr: stderr.as_bytes().to_vec(),
        };
        assert_eq!(
            ran(Status::Exited(100), "E: first\nE: last one\n\n").failure(),
            " (exit code 100): E: last one"
        );
        assert_eq!(ran(Status::Exited(7), "  \n").failure(), " (exit code 7)");
        assert_eq!(ran(Status::Killed(9), "").failure(), " (exit code 137)");
    }
}

//! What the daemon and `kapsule-nsenter` say to each other over the control socket (the
//! helper's stdin): one request with the file descriptors it needs, one reply.
//!
//! A message is a 4-byte little-endian length, sent together with the descriptors, then that
//! many bytes of JSON. The helper is started per request and ends with its session.

use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

/// Far above any real request (argv and environment are bounded by the daemon).
pub const MAX_MESSAGE: usize = 8 * 1024 * 1024;
/// No request carries more descriptors than this.
pub const MAX_FDS: usize = 8;

/// What the daemon asks of the helper.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Start a session. Descriptors: the container init's pidfd, the session channel, and,
    /// without a terminal, the command's stdin, stdout and stderr.
    Enter(EnterRequest),
}

/// A session to start inside a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnterRequest {
    /// The account the session runs as; its shell and home come from the container's own
    /// `/etc/passwd` (the user may have changed them there).
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    /// The command and its arguments, passed as they are; empty for a login shell.
    pub command: Vec<String>,
    /// The environment, already filtered by the daemon; HOME, SHELL, USER, LOGNAME and PATH are
    /// set by the helper.
    pub environment: Vec<(String, String)>,
    pub working_directory: String,
    /// Fail when `working_directory` cannot be entered instead of starting in the home.
    pub working_directory_required: bool,
    /// A terminal of this size (rows, columns), made inside the container; none: the command
    /// gets the passed descriptors.
    pub terminal: Option<(u16, u16)>,
    /// What confines the container's own processes, which the session gets too. The daemon
    /// fills it in from the container's init just before it starts the helper.
    #[serde(default)]
    pub confinement: Confinement,
}

/// What confines a container's processes, as its init shows it in `/proc/<pid>/status`, and as
/// `incus exec` applies it to its commands: a session gets no capability the container's init
/// could not have, `no_new_privs` where the init has it, and the container's seccomp policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confinement {
    /// The init's capability bounding set (`CapBnd`); `None` leaves the helper's.
    pub capability_bounding_set: Option<u64>,
    /// The init runs with `no_new_privs` (`NoNewPrivs: 1`).
    pub no_new_privs: bool,
    /// The container's seccomp policy compiled for this host (the daemon reads it where Incus
    /// wrote it for LXC); empty where the init runs without a filter.
    #[serde(default)]
    pub seccomp_filter: Vec<kapsule_seccomp::Instruction>,
    /// The init runs in a user namespace of its own (an unprivileged container): the session
    /// joins it too, so its ids are the container's and root in it (sudo) is the container's
    /// root, never the host's.
    #[serde(default)]
    pub user_namespace: bool,
}

impl Confinement {
    /// Read from the text of a process's `/proc/<pid>/status`; the seccomp filter is not
    /// there ([`filtered`] says whether the process has one).
    pub fn of_status(status: &str) -> Confinement {
        Confinement {
            capability_bounding_set: field(status, "CapBnd").and_then(|hex| u64::from_str_radix(hex, 16).ok()),
            no_new_privs: field(status, "NoNewPrivs") == Some("1"),
            seccomp_filter: Vec::new(),
            user_namespace: false,
        }
    }
}

/// Whether the process whose `/proc/<pid>/status` this is runs under a seccomp filter
/// (`Seccomp: 2`).
pub fn filtered(status: &str) -> bool {
    field(status, "Seccomp") == Some("2")
}

/// The value of one `Name:\tvalue` line of a status file.
fn field<'s>(status: &'s str, name: &str) -> Option<&'s str> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// The helper's answer once the session runs (or could not be started).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Running as this pid (in the container's pid namespace). With a terminal, the reply
    /// carries its master side.
    Started { pid: i32 },
    /// Nothing was started; the text says why.
    Failed { error: String },
}

/// Sends `message` with `fds` over `socket`.
pub fn send<T: Serialize>(socket: &UnixStream, message: &T, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let body = serde_json::to_vec(message).map_err(io::Error::other)?;
    if body.len() > MAX_MESSAGE {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "message too large"));
    }
    let header = (body.len() as u32).to_le_bytes();
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !ancillary.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors"));
    }
    let mut sent = rustix::net::sendmsg(
        socket,
        &[io::IoSlice::new(&header)],
        &mut ancillary,
        SendFlags::NOSIGNAL,
    )?;
    // The descriptors went with the first byte; the rest of the header and the body follow.
    let mut writer = socket;
    if sent < header.len() {
        writer.write_all(&header[sent..])?;
        sent = header.len();
    }
    debug_assert_eq!(sent, header.len());
    writer.write_all(&body)
}

/// Receives one message and the descriptors that came with it.
pub fn recv<T: for<'de> Deserialize<'de>>(socket: &UnixStream) -> io::Result<(T, Vec<OwnedFd>)> {
    let mut header = [0u8; 4];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        socket,
        &mut [io::IoSliceMut::new(&mut header)],
        &mut ancillary,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    if got.bytes == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the peer closed the socket",
        ));
    }
    let mut fds = Vec::new();
    for message in ancillary.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    let mut reader = socket;
    reader.read_exact(&mut header[got.bytes..])?;
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_MESSAGE {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "message too large"));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    let message = serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok((message, fds))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn confinement_is_read_from_a_status_file() {
        let status =
            "Name:\tsystemd\nCapPrm:\t000001ffffffffff\nCapBnd:\t000001fdffcfffff\nNoNewPrivs:\t0\nSeccomp:\t2\n";
        assert_eq!(
            Confinement::of_status(status),
            Confinement {
                capability_bounding_set: Some(0x1fdffcfffff),
                no_new_privs: false,
                seccomp_filter: Vec::new(),
                user_namespace: false,
            }
        );
        assert!(Confinement::of_status("NoNewPrivs:\t1\n").no_new_privs);
        assert_eq!(Confinement::of_status("").capability_bounding_set, None);
        assert!(filtered(status));
        assert!(!filtered("Seccomp:\t0\n"));
        assert!(!filtered("Seccomp:\t1\n"), "strict mode is not a filter");
    }

    #[test]
    fn messages_and_descriptors_cross_the_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let request = Request::Enter(EnterRequest {
            user: "alice".into(),
            uid: 1000,
            gid: 1000,
            command: vec!["printf".into(), "%s|".into(), "a b".into(), "$HOME".into()],
            environment: vec![("TERM".into(), "xterm".into())],
            working_directory: "/home/alice".into(),
            working_directory_required: false,
            terminal: Some((24, 80)),
            confinement: Confinement {
                capability_bounding_set: Some(0x1fdffcfffff),
                no_new_privs: true,
                seccomp_filter: vec![kapsule_seccomp::Instruction {
                    code: 6,
                    jt: 0,
                    jf: 0,
                    k: 0x7fff_0000,
                }],
                user_namespace: true,
            },
        });
        let file = tempfile::tempfile().unwrap();
        let (pipe_r, pipe_w) = rustix::pipe::pipe().unwrap();
        send(&a, &request, &[file.as_fd(), pipe_w.as_fd()]).unwrap();
        let (got, fds): (Request, _) = recv(&b).unwrap();
        assert_eq!(got, request);
        assert_eq!(fds.len(), 2);
        // The received write end is the same pipe.
        rustix::io::write(&fds[1], b"x").unwrap();
        let mut buf = [0u8; 1];
        rustix::io::read(&pipe_r, &mut buf).unwrap();
        assert_eq!(&buf, b"x");

        // A large message without descriptors.
        let big = Reply::Failed {
            error: "e".repeat(1 << 20),
        };
        let sender = std::thread::spawn(move || send(&a, &big, &[]).unwrap());
        let (got, fds): (Reply, _) = recv(&b).unwrap();
        sender.join().unwrap();
        assert!(matches!(got, Reply::Failed { error } if error.len() == 1 << 20));
        assert!(fds.is_empty());
    }

    #[test]
    fn a_closed_peer_is_an_error_not_a_message() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        let e = recv::<Reply>(&b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}

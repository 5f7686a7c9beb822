//! The daemon's D-Bus transport: a Unix socket whose received descriptors are close-on-exec from
//! the moment they arrive, for the bus connection and for each client of the daemon's own socket.
//!
//! zbus's own Unix socket receives descriptors without `MSG_CMSG_CLOEXEC`, so every helper the
//! daemon started while a call's descriptors were held inherited them, and a descriptor one user
//! sent (even in a call polkit then refused) was open in another user's session. The helpers are
//! also started with nothing but their stdio ([`kapsule_sys::only_stdio_on_exec`]); this closes
//! the window for anything else that might ever fork.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags,
};
use tokio::io::Interest;
use tokio::net::UnixStream;
use zbus::connection::socket::{ReadHalf, Socket, Split, WriteHalf};
use zbus::fdo::ConnectionCredentials;

use crate::dbus::framing::{self, Framing};

/// The most descriptors one message may carry: the kernel's own limit per `sendmsg`
/// (`SCM_MAX_FD`), which is also what dbus-daemon allows.
const MAX_FDS: usize = 253;

/// A connected Unix socket carrying D-Bus.
#[derive(Debug)]
pub(crate) struct CloexecSocket {
    stream: Arc<UnixStream>,
    patience: Option<Duration>,
    /// A client's stream is checked as it arrives (`framing.rs`); the bus's is not.
    checked: bool,
}

impl CloexecSocket {
    /// Takes over a connected socket (switched to non-blocking; it must be made inside the
    /// runtime that drives the connection).
    pub(crate) fn new(stream: std::os::unix::net::UnixStream) -> io::Result<CloexecSocket> {
        stream.set_nonblocking(true)?;
        Ok(CloexecSocket {
            stream: Arc::new(UnixStream::from_std(stream)?),
            patience: None,
            checked: false,
        })
    }

    /// Holds the peer, a client of the daemon's own socket, to a client's limits: a short
    /// handshake without descriptors, then messages of at most [`framing::MAX_MESSAGE`] bytes
    /// carrying at most [`framing::MAX_FDS`] descriptors each.
    /// A peer that breaks them is dropped.
    pub(crate) fn with_client_limits(self) -> CloexecSocket {
        CloexecSocket { checked: true, ..self }
    }

    /// Gives up on a peer that has not taken what was sent for `patience`: the send fails and
    /// the socket is shut down, so the connection ends (a client of the daemon's own socket that
    /// never reads its replies; not the bus, which always reads).
    pub(crate) fn with_send_patience(self, patience: Duration) -> CloexecSocket {
        CloexecSocket {
            patience: Some(patience),
            ..self
        }
    }

    /// Connects to the first Unix address of a D-Bus address list (`unix:path=…` or
    /// `unix:abstract=…`, the forms a system or session bus has). `None` when the list has no
    /// such address.
    pub(crate) async fn connect(addresses: &str) -> Option<io::Result<CloexecSocket>> {
        let path = unix_path(addresses)?;
        Some(
            async {
                let address = socket_address(&path)?;
                let stream =
                    tokio::task::spawn_blocking(move || std::os::unix::net::UnixStream::connect_addr(&address))
                        .await
                        .map_err(io::Error::other)??;
                CloexecSocket::new(stream)
            }
            .await,
        )
    }
}

/// The socket a `unix:` address names: a path, or (first byte 0) an abstract name.
fn socket_address(path: &[u8]) -> io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    match path.strip_prefix(b"\0") {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name),
        None => std::os::unix::net::SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(path)),
    }
}

/// The socket of the first `unix:` address in `addresses` (`;`-separated) that has a `path` or an
/// `abstract` key, with D-Bus's `%XX` escapes undone; an abstract name starts with a 0 byte.
fn unix_path(addresses: &str) -> Option<Vec<u8>> {
    addresses.split(';').find_map(|address| {
        let keys = address.strip_prefix("unix:")?;
        keys.split(',').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            let value = unescape(value)?;
            match key {
                "path" => Some(value),
                "abstract" => Some([&[0u8][..], &value].concat()),
                _ => None,
            }
        })
    })
}

/// A D-Bus address value with its `%XX` escapes undone; `None` for a broken escape.
fn unescape(value: &str) -> Option<Vec<u8>> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

impl Socket for CloexecSocket {
    type ReadHalf = Reader;
    type WriteHalf = Writer;

    fn split(self) -> Split<Reader, Writer> {
        // With patience, reading waits while a send is stuck: a peer that does not read its
        // replies gets no more of its calls read (they stay in its own socket buffer, which the
        // kernel bounds), where zbus would start a task holding each until the peer was dropped.
        let flow = self.patience.map(|_| Arc::new(Flow::default()));
        Split::new(
            Reader {
                stream: self.stream.clone(),
                flow: flow.clone(),
                framing: self.checked.then(Framing::default),
                max_fds: if self.checked { framing::MAX_FDS } else { MAX_FDS },
            },
            Writer {
                stream: self.stream,
                patience: self.patience,
                flow,
            },
        )
    }
}

/// The half a connection receives through.
#[derive(Debug)]
pub(crate) struct Reader {
    stream: Arc<UnixStream>,
    flow: Option<Arc<Flow>>,
    framing: Option<Framing>,
    /// The most descriptors one message may carry.
    max_fds: usize,
}

/// The half a connection sends through.
#[derive(Debug)]
pub(crate) struct Writer {
    stream: Arc<UnixStream>,
    patience: Option<Duration>,
    flow: Option<Arc<Flow>>,
}

/// Whether a send is stuck (the peer's buffer full), for the reader to wait on.
#[derive(Debug, Default)]
pub(crate) struct Flow {
    stuck: std::sync::atomic::AtomicBool,
    moving: tokio::sync::Notify,
}

impl Flow {
    fn set_stuck(&self, stuck: bool) {
        self.stuck.store(stuck, std::sync::atomic::Ordering::SeqCst);
        if !stuck {
            self.moving.notify_waiters();
        }
    }

    /// Returns once no send is stuck.
    async fn wait_moving(&self) {
        loop {
            let moving = self.moving.notified();
            tokio::pin!(moving);
            // Registered before the check, so a change right after it is not missed.
            moving.as_mut().enable();
            if !self.stuck.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            moving.await;
        }
    }
}

/// Marks a send stuck from its first `WouldBlock` until it ends, however it ends.
struct Stuck<'a>(Option<&'a Flow>);

impl Drop for Stuck<'_> {
    fn drop(&mut self) {
        if let Some(flow) = self.0 {
            flow.set_stuck(false);
        }
    }
}

#[async_trait::async_trait]
impl ReadHalf for Reader {
    async fn recvmsg(&mut self, buffer: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
        if let Some(flow) = &self.flow {
            flow.wait_moving().await;
        }
        loop {
            self.stream.readable().await?;
            let (n, fds) = match self.stream.try_io(Interest::READABLE, || {
                receive(self.stream.as_fd(), buffer, self.max_fds)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                received => received?,
            };
            if let Some(framing) = &mut self.framing
                && let Err(refused) = framing.take(&buffer[..n], fds.len())
            {
                // Nothing of it reaches zbus, and the peer finds the connection ended.
                let _ = rustix::net::shutdown(self.stream.as_fd(), rustix::net::Shutdown::Both);
                return Err(io::Error::new(io::ErrorKind::InvalidData, refused.to_string()));
            }
            return Ok((n, fds));
        }
    }

    fn can_pass_unix_fd(&self) -> bool {
        true
    }

    async fn peer_credentials(&mut self) -> io::Result<ConnectionCredentials> {
        credentials(self.stream.as_fd())
    }
}

#[async_trait::async_trait]
impl WriteHalf for Writer {
    async fn sendmsg(&mut self, buffer: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        let stream = &self.stream;
        let flow = self.flow.as_deref();
        let sending = async {
            let mut stuck = Stuck(None);
            loop {
                stream.writable().await?;
                match stream.try_io(Interest::WRITABLE, || send(stream.as_fd(), buffer, fds)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if let (Some(flow), None) = (flow, stuck.0) {
                            flow.set_stuck(true);
                            stuck.0 = Some(flow);
                        }
                    }
                    sent => return sent,
                }
            }
        };
        let Some(patience) = self.patience else {
            return sending.await;
        };
        match tokio::time::timeout(patience, sending).await {
            Ok(sent) => sent,
            Err(_) => {
                // The reader sees the end too, and the connection goes with everything it holds.
                let _ = rustix::net::shutdown(stream.as_fd(), rustix::net::Shutdown::Both);
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the peer took nothing of its replies for {patience:?}: dropped"),
                ))
            }
        }
    }

    async fn close(&mut self) -> io::Result<()> {
        match rustix::net::shutdown(self.stream.as_fd(), rustix::net::Shutdown::Write) {
            // The peer hung up first: closed either way.
            Err(rustix::io::Errno::NOTCONN) | Ok(()) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn can_pass_unix_fd(&self) -> bool {
        true
    }

    async fn peer_credentials(&mut self) -> io::Result<ConnectionCredentials> {
        credentials(self.stream.as_fd())
    }
}

/// One `recvmsg`, descriptors close-on-exec as they arrive, at most `max_fds` of them (one
/// `recvmsg` never takes the descriptors of two `sendmsg`s). More is an error, and the kernel
/// closes the ones that did not fit: the call would be missing some.
fn receive(socket: BorrowedFd<'_>, buffer: &mut [u8], max_fds: usize) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = [IoSliceMut::new(buffer)];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let room = rustix::cmsg_space!(ScmRights(max_fds.min(MAX_FDS))).min(space.len());
    let mut ancillary = RecvAncillaryBuffer::new(&mut space[..room]);
    let received = rustix::net::recvmsg(socket, &mut iov, &mut ancillary, RecvFlags::CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for message in ancillary.drain() {
        if let RecvAncillaryMessage::ScmRights(passed) = message {
            fds.extend(passed);
        }
    }
    // The room is rounded up to the control message's alignment: a few more may have fit.
    if received.flags.contains(ReturnFlags::CTRUNC) || fds.len() > max_fds {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a message carried more than {max_fds} descriptors"),
        ));
    }
    if received.bytes == 0 {
        return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the peer hung up"));
    }
    Ok((received.bytes, fds))
}

/// One `sendmsg` with `fds` attached (never `SIGPIPE`: a peer gone is an error).
fn send(socket: BorrowedFd<'_>, buffer: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !ancillary.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors"));
    }
    Ok(rustix::net::sendmsg(
        socket,
        &[IoSlice::new(buffer)],
        &mut ancillary,
        SendFlags::NOSIGNAL,
    )?)
}

/// What the kernel says of the peer: the uid the `EXTERNAL` authentication is checked against.
fn credentials(socket: BorrowedFd<'_>) -> io::Result<ConnectionCredentials> {
    let peer = rustix::net::sockopt::socket_peercred(socket)?;
    Ok(ConnectionCredentials::default()
        .set_unix_user_id(peer.uid.as_raw())
        .set_process_id(peer.pid.as_raw_nonzero().get().unsigned_abs())
        .add_unix_group_id(peer.gid.as_raw()))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn unix_addresses_are_read_as_dbus_writes_them() {
        assert_eq!(
            unix_path("unix:path=/run/dbus/system_bus_socket").as_deref(),
            Some(&b"/run/dbus/system_bus_socket"[..])
        );
        assert_eq!(
            unix_path("tcp:host=x,port=1;unix:guid=abc,path=/tmp/a%20b").as_deref(),
            Some(&b"/tmp/a b"[..])
        );
        assert_eq!(unix_path("unix:abstract=kt").as_deref(), Some(&b"\0kt"[..]));
        assert_eq!(unix_path("tcp:host=x,port=1"), None);
        assert_eq!(unix_path("unix:path=/a%2"), None);
    }

    /// A peer that never reads is given up on once its buffers are full for the patience: the
    /// send fails and the peer finds the connection ended.
    #[tokio::test]
    async fn a_peer_that_never_reads_is_dropped() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let socket = CloexecSocket::new(ours)
            .unwrap()
            .with_send_patience(Duration::from_millis(200));
        let (_, mut write) = socket.split().take();
        let chunk = vec![0u8; 64 * 1024];
        let started = std::time::Instant::now();
        let failed = loop {
            match write.sendmsg(&chunk, &[]).await {
                Ok(_) => assert!(started.elapsed() < Duration::from_secs(10), "never blocked"),
                Err(e) => break e,
            }
        };
        assert_eq!(failed.kind(), io::ErrorKind::TimedOut, "{failed}");
        // The peer reads what was buffered, then the end.
        let mut theirs = theirs;
        let mut all = Vec::new();
        std::io::Read::read_to_end(&mut theirs, &mut all).unwrap();
        assert!(!all.is_empty());
    }

    /// While a send is stuck, the reader waits; once it moves (or gives up), the reader goes on.
    #[tokio::test]
    async fn reading_waits_while_a_send_is_stuck() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let socket = CloexecSocket::new(ours)
            .unwrap()
            .with_send_patience(Duration::from_millis(500));
        let (mut read, mut write) = socket.split().take();
        (&theirs).write_all(b"a call").unwrap();
        // Fill the peer's buffers: the next send is stuck until the patience runs out.
        let chunk = vec![0u8; 64 * 1024];
        let sending = tokio::spawn(async move {
            loop {
                if let Err(e) = write.sendmsg(&chunk, &[]).await {
                    return e;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut buffer = [0u8; 16];
        let early = tokio::time::timeout(Duration::from_millis(200), read.recvmsg(&mut buffer)).await;
        assert!(early.is_err(), "read while a send was stuck");
        assert_eq!(sending.await.unwrap().kind(), io::ErrorKind::TimedOut);
        // Given up on: reading goes on, and finds what was there.
        let (n, _) = read.recvmsg(&mut buffer).await.unwrap();
        assert_eq!(&buffer[..n], b"a call");
    }

    /// A reader of `socket` without flow control or framing, taking `max_fds` per message.
    fn plain_reader(socket: &CloexecSocket, max_fds: usize) -> Reader {
        Reader {
            stream: socket.stream.clone(),
            flow: None,
            framing: None,
            max_fds,
        }
    }

    /// A client's message may carry eight descriptors, not nine: the ninth is never taken in.
    #[tokio::test]
    async fn a_client_message_with_too_many_descriptors_is_refused() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let socket = CloexecSocket::new(ours).unwrap();
        let mut reader = plain_reader(&socket, framing::MAX_FDS);
        let pipes: Vec<_> = (0..9).map(|_| rustix::pipe::pipe().unwrap().0).collect();
        let fds: Vec<BorrowedFd<'_>> = pipes.iter().map(|p| p.as_fd()).collect();
        let mut buffer = [0u8; 16];
        send(theirs.as_fd(), b"eight", &fds[..8]).unwrap();
        let (n, received) = reader.recvmsg(&mut buffer).await.unwrap();
        assert_eq!((&buffer[..n], received.len()), (&b"eight"[..], 8));
        send(theirs.as_fd(), b"nine", &fds).unwrap();
        let refused = reader.recvmsg(&mut buffer).await.unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::InvalidData);
        assert_eq!(refused.to_string(), "a message carried more than 8 descriptors");
    }

    /// A descriptor sent over the transport arrives close-on-exec, with its bytes.
    #[tokio::test]
    async fn descriptors_arrive_close_on_exec() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let socket = CloexecSocket::new(ours).unwrap();
        let mut reader = plain_reader(&socket, MAX_FDS);
        // Sent without close-on-exec on the sender's side.
        let (read_end, _write_end) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::empty()).unwrap();
        assert!(
            !rustix::io::fcntl_getfd(&read_end)
                .unwrap()
                .contains(rustix::io::FdFlags::CLOEXEC)
        );
        send(theirs.as_fd(), b"hello", &[read_end.as_fd()]).unwrap();
        let mut buffer = [0u8; 16];
        let (n, fds) = reader.recvmsg(&mut buffer).await.unwrap();
        assert_eq!(&buffer[..n], b"hello");
        assert_eq!(fds.len(), 1);
        assert!(
            rustix::io::fcntl_getfd(&fds[0])
                .unwrap()
                .contains(rustix::io::FdFlags::CLOEXEC)
        );
    }
}

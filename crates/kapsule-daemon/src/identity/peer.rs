//! The process at the other end of a connection to the daemon's own socket, as the kernel saw it
//! when it connected (`SO_PEERCRED`, and the start time that tells a reused pid apart).

use std::io;

use crate::host::procfs::start_time;

/// The process at the other end of a connection, as the kernel saw it when it connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Peer {
    pub(crate) pid: u32,
    pub(crate) uid: u32,
    /// When the process started (`/proc/<pid>/stat` field 22): with the pid, names the process
    /// even if the pid is reused later.
    pub(crate) start_time: u64,
}

impl Peer {
    /// Who is at the other end of `stream`.
    pub(crate) fn of(stream: &std::os::unix::net::UnixStream) -> io::Result<Peer> {
        let credentials = rustix::net::sockopt::socket_peercred(stream)?;
        let pid = credentials.pid.as_raw_pid().unsigned_abs();
        Ok(Peer {
            pid,
            uid: credentials.uid.as_raw(),
            start_time: start_time(pid)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_names_the_peer() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let peer = Peer::of(&ours).unwrap();
        drop(theirs);
        assert_eq!(peer.pid, std::process::id());
        assert_eq!(peer.uid, rustix::process::getuid().as_raw());
        assert_eq!(peer.start_time, start_time(std::process::id()).unwrap());
        assert!(peer.start_time > 0);
    }
}

//! The process at the other end of a connection to the daemon's own socket, as the kernel saw it
//! when it connected (`SO_PEERCRED`, and the start time that tells a reused pid apart).

use std::io;

use crate::host::procfs::{exited, start_time};

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
    /// Who is at the other end of `stream`. The start time is read after the connection was
    /// made, so the pid could have been reused in between; where the kernel gives a pidfd of the
    /// peer (`SO_PEERPIDFD`), that process still living after the read shows the start time is
    /// its own.
    pub(crate) fn of(stream: &std::os::unix::net::UnixStream) -> io::Result<Peer> {
        use std::os::fd::AsFd;
        let credentials = rustix::net::sockopt::socket_peercred(stream)?;
        let pidfd = kapsule_sys::peer_pidfd(stream.as_fd())?;
        let pid = credentials.pid.as_raw_pid().unsigned_abs();
        let start_time = start_time(pid)?;
        if pidfd.as_ref().is_some_and(exited) {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the client ended as it connected",
            ));
        }
        Ok(Peer {
            pid,
            uid: credentials.uid.as_raw(),
            start_time,
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

    #[test]
    fn the_kernel_gives_the_peers_pidfd_where_it_can() {
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        // This machine's kernel (6.x) has SO_PEERPIDFD: the pidfd is of this very process.
        let pidfd = kapsule_sys::peer_pidfd(std::os::fd::AsFd::as_fd(&ours))
            .unwrap()
            .expect("SO_PEERPIDFD");
        assert!(!exited(&pidfd));
        let fdinfo =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", std::os::fd::AsRawFd::as_raw_fd(&pidfd))).unwrap();
        assert!(fdinfo.contains(&format!("Pid:\t{}\n", std::process::id())), "{fdinfo}");
    }
}

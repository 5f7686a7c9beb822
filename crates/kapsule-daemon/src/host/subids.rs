//! The host's subordinate id files, where the daemon gives root the ids an unprivileged
//! container maps to themselves (`kapsule-subids` has the why and the how).

use std::io;
use std::path::PathBuf;

/// The files (the host's `/etc/subuid` and `/etc/subgid`; see `Settings::subids`).
#[derive(Clone, Debug)]
pub(crate) struct Subids {
    pub(crate) subuid: PathBuf,
    pub(crate) subgid: PathBuf,
}

impl Subids {
    /// Gives host uid `uid` to root, unless it is already. Blocking.
    pub(crate) fn give_root_uid(&self, uid: u32) -> io::Result<()> {
        kapsule_subids::give_root_id(&self.subuid, uid).map(drop)
    }

    /// Gives host gid `gid` to root, unless it is already. Blocking.
    pub(crate) fn give_root_gid(&self, gid: u32) -> io::Result<()> {
        kapsule_subids::give_root_id(&self.subgid, gid).map(drop)
    }
}

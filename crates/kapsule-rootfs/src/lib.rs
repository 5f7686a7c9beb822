//! A running container's files, as its init sees them, reached from the host through
//! `/proc/<pid>/root` rather than the Incus files API.
//!
//! Why not the files API: each file is a round trip through incusd, and a first use starts an
//! `incusd forkfile` helper (an SFTP server inside the container) that stays after the request.
//! Here a file is a few system calls: a user's account (seven files read and rewritten) took
//! about 35 ms through the files API and takes a few milliseconds (docs/PERFORMANCE.md). And
//! what is done to a path is this crate's to say, not Incus's (see below).
//!
//! Paths are the container's: absolute, resolved below its root with `RESOLVE_IN_ROOT`, so a
//! symlink in the container (absolute, or climbing with `..`) resolves inside it as the
//! container would see it, never to a host file, and magic links (`/proc/self/root`) are
//! refused. What is read, listed or written also stays on the container's root file system
//! (`RESOLVE_NO_XDEV`): Kapsule's containers have the host's `/` at `/.kapsule/host` and the
//! user's home bound in, so a symlink such as `/etc/sudoers.d -> /.kapsule/host/etc/sudoers.d`
//! would otherwise have the root daemon write a host file; such a path fails with
//! `ErrorKind::CrossesDevices` instead. Only [`Root::metadata`] and [`Root::open_path`] cross
//! mounts (a socket in `/run`, a working directory in the home), and they read no file. The last component of a path that is written, linked or removed is never followed:
//! a symlink there is replaced (writing `/etc/resolv.conf` where it links to
//! `../run/systemd/resolve/stub-resolv.conf` replaces the link; the resolver's file is left).
//!
//! Files are written whole: into a new file beside the target, owned and moded, then renamed over
//! it, so a reader finds the old file or the new one, never a part of one. The new file is not
//! synced before the rename: ext4 (`auto_da_alloc`, its default) and btrfs flush a file renamed
//! over an existing one together with the rename, so a crash leaves one or the other there too,
//! and an `fsync` per file cost up to 40 ms each while a container boots (measured: a user setup,
//! seven files, took 130 to 340 ms with them and 80 to 115 ms without). Owners are the container's ids, translated through the
//! process's user-namespace maps.
//!
//! An unprivileged container's root may be an idmapped mount (Incus uses one where the kernel
//! and file system have them), which takes no new file from an id it does not map: made as the
//! host's root, every new file would be `EOVERFLOW`. So each file, directory and link is made
//! with the thread's file-system ids those of the container's root, the host root's file
//! capabilities raised again for that while ([`FsIdentity`]); owners are given afterwards as
//! before.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Uid};
use rustix::io::Errno;

/// How every path is resolved: inside the root, no magic links.
const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);
/// How a path whose file is read, listed or written is resolved: also never into a mount.
const RESOLVE_ON_ROOT_FS: ResolveFlags = RESOLVE.union(ResolveFlags::NO_XDEV);
/// The longest path accepted (the kernel's `PATH_MAX`).
const MAX_PATH: usize = 4096;
/// The id a file owned by an id the container cannot name shows (the kernel's overflow id).
const OVERFLOW_ID: u32 = 65534;

/// The calling thread's file-system ids switched to another uid and gid until this is dropped,
/// with the capabilities such a switch clears from the effective set (the file system's
/// overrides of the host's root) raised again: a file made meanwhile is owned by those ids, and
/// everything else is as the host's root may do it. Per thread: the other threads of the process
/// are not touched. Needs `CAP_SETUID` and `CAP_SETGID` (for the ids); of the capabilities, those
/// in the permitted set are raised.
#[derive(Debug)]
pub struct FsIdentity;

/// What a change of the file-system uid from 0 clears from the effective set (capabilities(7)).
const FS_CAPABILITIES: [caps::Capability; 5] = [
    caps::Capability::CAP_CHOWN,
    caps::Capability::CAP_DAC_OVERRIDE,
    caps::Capability::CAP_DAC_READ_SEARCH,
    caps::Capability::CAP_FOWNER,
    caps::Capability::CAP_FSETID,
];

impl FsIdentity {
    /// Switches to `uid`:`gid`; back to root's when dropped.
    pub fn switch(uid: u32, gid: u32) -> io::Result<FsIdentity> {
        // Made first: should the switch fail halfway, the drop takes the thread back to root's.
        let identity = FsIdentity;
        set_fs_ids(uid, gid)?;
        let caps_error = |e: caps::errors::CapsError| io::Error::other(e.to_string());
        for capability in FS_CAPABILITIES {
            // What the process holds: a helper that keeps only some of them raises those.
            if caps::has_cap(None, caps::CapSet::Permitted, capability).map_err(caps_error)? {
                caps::raise(None, caps::CapSet::Effective, capability).map_err(caps_error)?;
            }
        }
        Ok(identity)
    }

    /// Runs `make` with the thread's file-system ids `ids` as [`FsIdentity::switch`] gives them,
    /// and back; with `None`, as the thread is.
    pub fn run<T>(ids: Option<(u32, u32)>, make: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let _identity = ids.map(|(uid, gid)| FsIdentity::switch(uid, gid)).transpose()?;
        make()
    }
}

/// Gives the calling thread the file-system ids `uid`:`gid` (per thread: the raw system calls),
/// checked. Away from 0, the kernel drops the capabilities that override file permissions from
/// the effective set, so files are then reached as that user would reach them.
pub fn set_fs_ids(uid: u32, gid: u32) -> io::Result<()> {
    // Group first: with the uid no longer 0 the group may not be changed.
    nix::unistd::setfsgid(nix::unistd::Gid::from_raw(gid));
    nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid));
    // Each call answers with the value before it; an invalid id changes nothing.
    let uid_now = nix::unistd::setfsuid(nix::unistd::Uid::from_raw(u32::MAX)).as_raw();
    let gid_now = nix::unistd::setfsgid(nix::unistd::Gid::from_raw(u32::MAX)).as_raw();
    if (uid_now, gid_now) != (uid, gid) {
        return Err(io::Error::other(format!(
            "cannot switch the thread's file-system ids to {uid}:{gid}"
        )));
    }
    Ok(())
}

impl Drop for FsIdentity {
    fn drop(&mut self) {
        // Back to 0: the kernel raises the file-system capabilities from the permitted set again.
        nix::unistd::setfsuid(nix::unistd::Uid::from_raw(0));
        nix::unistd::setfsgid(nix::unistd::Gid::from_raw(0));
    }
}

/// A failed file operation: what, on which path, and why.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {path}: {cause}")]
pub struct Error {
    action: &'static str,
    path: String,
    cause: io::Error,
}

impl Error {
    fn new(action: &'static str, path: &str, cause: impl Into<io::Error>) -> Error {
        let cause = cause.into();
        // The kernel's words ("Invalid cross-device link") say nothing to whoever reads this.
        let cause = match cause.kind() {
            io::ErrorKind::CrossesDevices => io::Error::new(
                io::ErrorKind::CrossesDevices,
                "it leads out of the container's own files into a mount (such as /.kapsule/host)",
            ),
            _ => cause,
        };
        Error {
            action,
            path: path.to_owned(),
            cause,
        }
    }

    /// The kind of the underlying error (`NotFound`, `PermissionDenied`, `InvalidInput`...).
    pub fn kind(&self) -> io::ErrorKind {
        self.cause.kind()
    }

    /// Why it failed, without what and where.
    pub fn reason(&self) -> &io::Error {
        &self.cause
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Owner and permission bits, in the container's ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits, e.g. `0o644` (setuid, setgid and sticky included).
    pub mode: u32,
}

impl Meta {
    /// Owned by `uid:gid` with `mode`.
    pub const fn new(uid: u32, gid: u32, mode: u32) -> Meta {
        Meta { uid, gid, mode }
    }
}

/// What is at a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Directory,
    Symlink,
    /// A device, socket or FIFO.
    Other,
}

/// What [`Root::metadata`] and [`Root::symlink_metadata`] tell of a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub kind: Kind,
    pub meta: Meta,
    pub size: u64,
}

/// A file read whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contents {
    pub data: Vec<u8>,
    pub meta: Meta,
}

/// One user-namespace id map (`/proc/<pid>/uid_map` or `gid_map`): ranges of ids inside and
/// the host ids they stand for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdMap(Vec<(u32, u32, u32)>);

impl IdMap {
    /// Every id is itself: the host's own namespace, and privileged containers.
    pub fn identity() -> IdMap {
        IdMap(vec![(0, 0, u32::MAX)])
    }

    /// Parses the kernel's format: a line `inside outside count` per range.
    pub fn parse(text: &str) -> std::result::Result<IdMap, String> {
        let mut ranges = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let numbers: Vec<u32> = line
                .split_whitespace()
                .map(str::parse)
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| format!("not an id map line: {line:?}"))?;
            let [inside, outside, count] = numbers[..] else {
                return Err(format!("not an id map line: {line:?}"));
            };
            ranges.push((inside, outside, count));
        }
        Ok(IdMap(ranges))
    }

    /// The host id container id `id` stands for, if it is mapped.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        Self::translate(self.0.iter().copied(), id)
    }

    /// The container id host id `id` shows as, if it is mapped.
    pub fn to_container(&self, id: u32) -> Option<u32> {
        Self::translate(
            self.0.iter().map(|&(inside, outside, count)| (outside, inside, count)),
            id,
        )
    }

    fn translate(mut ranges: impl Iterator<Item = (u32, u32, u32)>, id: u32) -> Option<u32> {
        ranges.find_map(|(from, to, count)| {
            let offset = u64::from(id).checked_sub(u64::from(from))?;
            (offset < u64::from(count))
                .then(|| u32::try_from(u64::from(to) + offset).ok())
                .flatten()
        })
    }
}

/// A container's root directory, and the id maps its files are owned through.
#[derive(Debug)]
pub struct Root {
    dir: OwnedFd,
    uids: IdMap,
    gids: IdMap,
}

impl Root {
    /// The directory `path` as a root, with ids as they are (a privileged container's root, or a
    /// test's directory).
    pub fn at(path: &Path) -> Result<Root> {
        let shown = path.to_string_lossy();
        let dir = rustix::fs::open(path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| Error::new("open", &shown, e))?;
        Ok(Root {
            dir,
            uids: IdMap::identity(),
            gids: IdMap::identity(),
        })
    }

    /// The root of process `pid` (`/proc/<pid>/root`: its mount namespace's view, mounts
    /// included), with its user namespace's id maps. The caller makes sure `pid` is the process
    /// it means, e.g. by a pidfd opened before and still running after.
    pub fn of_process(pid: u32) -> Result<Root> {
        let proc = format!("/proc/{pid}");
        let maps = |file: &str| -> Result<IdMap> {
            let path = format!("{proc}/{file}");
            let text = std::fs::read_to_string(&path).map_err(|e| Error::new("read", &path, e))?;
            IdMap::parse(&text).map_err(|e| Error::new("read", &path, io::Error::new(io::ErrorKind::InvalidData, e)))
        };
        let root = format!("{proc}/root");
        let dir = rustix::fs::open(&root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| Error::new("open", &root, e))?;
        Ok(Root {
            dir,
            uids: maps("uid_map")?,
            gids: maps("gid_map")?,
        })
    }

    /// Runs `make`, which makes one new file, directory or link below the root, as the
    /// container's root makes it (see the crate's documentation); in a container whose root is
    /// the host's, as it is.
    fn making<T>(&self, make: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let (Some(uid), Some(gid)) = (self.uids.to_host(0), self.gids.to_host(0)) else {
            return Err(io::Error::other("the container maps no root"));
        };
        FsIdentity::run(((uid, gid) != (0, 0)).then_some((uid, gid)), make)
    }

    /// The host uid that the container's uid `uid` stands for (itself in a privileged container),
    /// if the container maps it.
    pub fn host_uid(&self, uid: u32) -> Option<u32> {
        self.uids.to_host(uid)
    }

    /// The file at `path`, symlinks followed (inside the root); `None` when there is none.
    /// Only a regular file of at most `limit` bytes is read; anything else is never opened for
    /// reading (a FIFO planted at the path is an error, not a hang; a device is not touched).
    pub fn read(&self, path: &str, limit: u64) -> Result<Option<Contents>> {
        let fail = |e: io::Error| Error::new("read", path, e);
        let Some(found) = self.open_path_on_root_fs(path)? else {
            return Ok(None);
        };
        let (fd, stat) = reopen(&found, OFlags::RDONLY, &[FileType::RegularFile]).map_err(fail)?;
        let mut data = Vec::new();
        File::from(fd)
            .take(limit.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(fail)?;
        if data.len() as u64 > limit {
            return Err(fail(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!("larger than {limit} bytes"),
            )));
        }
        Ok(Some(Contents {
            data,
            meta: self.meta_of(&stat),
        }))
    }

    /// What is at `path`, symlinks followed (inside the root); `None` when there is nothing.
    pub fn metadata(&self, path: &str) -> Result<Option<Stat>> {
        let Some(fd) = self.open_path(path)? else {
            return Ok(None);
        };
        let stat = rustix::fs::fstat(&fd).map_err(|e| Error::new("inspect", path, e))?;
        Ok(Some(self.stat_of(&stat)))
    }

    /// An `O_PATH` descriptor for what is at `path`, symlinks followed (inside the root); `None`
    /// when there is nothing. For what takes a path rather than a descriptor, through
    /// `/proc/self/fd/<fd>`: connecting to a socket in the container, for one.
    pub fn open_path(&self, path: &str) -> Result<Option<OwnedFd>> {
        let fail = |e: io::Error| Error::new("open", path, e);
        check(path).map_err(fail)?;
        match rustix::fs::openat2(&self.dir, path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty(), RESOLVE) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(fail(e.into())),
        }
    }

    /// [`Root::open_path`] with the walk kept on the root's own file system
    /// (`RESOLVE_NO_XDEV`): a path that crosses into a mount, by a symlink or otherwise, fails
    /// with `ErrorKind::CrossesDevices`. For what must never reach a file of a mount (the host's
    /// `/` is mounted in Kapsule's containers).
    pub fn open_path_on_root_fs(&self, path: &str) -> Result<Option<OwnedFd>> {
        let fail = |e: io::Error| Error::new("open", path, e);
        check(path).map_err(fail)?;
        match rustix::fs::openat2(
            &self.dir,
            path,
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE_ON_ROOT_FS,
        ) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(fail(e.into())),
        }
    }

    /// What is at `path` itself (a symlink is not followed); `None` when there is nothing.
    pub fn symlink_metadata(&self, path: &str) -> Result<Option<Stat>> {
        let fail = |e: io::Error| Error::new("inspect", path, e);
        let Some((dir, name)) = self.parent(path).map_err(fail)? else {
            return Ok(None);
        };
        match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(self.stat_of(&stat))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(fail(e.into())),
        }
    }

    /// Replaces whatever file or symlink is at `path` with a file holding `data`, owned and
    /// moded as `meta` says, in one step (see the crate's documentation for what a crash
    /// leaves). The directory it is in must exist.
    pub fn write(&self, path: &str, data: &[u8], meta: Meta) -> Result<()> {
        let fail = |e: io::Error| Error::new("write", path, e);
        let (dir, name) = self.parent(path).map_err(fail)?.ok_or_else(|| fail(missing_parent()))?;
        let (uid, gid) = self.host_ids(meta).map_err(fail)?;
        let renamed = self.making(|| {
            let (temporary, fd) = beside(name, |temporary| {
                let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                rustix::fs::openat(&dir, temporary, flags, Mode::from_raw_mode(0o600))
            })?;
            let filled = (|| -> io::Result<()> {
                let mut file = File::from(fd);
                file.write_all(data)?;
                // Owner first: a change of owner clears the setuid and setgid bits.
                rustix::fs::fchown(&file, Some(uid), Some(gid))?;
                Ok(rustix::fs::fchmod(&file, Mode::from_raw_mode(meta.mode & 0o7777))?)
            })();
            Ok((
                filled.and_then(|()| Ok(rustix::fs::renameat(&dir, &temporary, &dir, name)?)),
                temporary,
            ))
        });
        let (renamed, temporary) = renamed.map_err(fail)?;
        match renamed {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = rustix::fs::unlinkat(&dir, &temporary, AtFlags::empty());
                if e.raw_os_error() == Some(Errno::BUSY.raw_os_error()) {
                    // A mount point (a file bind-mounted there) cannot be renamed over: its
                    // contents are replaced instead.
                    return write_in_place(&dir, name, data).map_err(fail);
                }
                Err(fail(e))
            }
        }
    }

    /// Makes the directory `path` with `meta` unless there is one (a symlink to a directory
    /// counts); says whether it made it. Its parent must exist; a file at `path` is an error.
    pub fn ensure_dir(&self, path: &str, meta: Meta) -> Result<bool> {
        let fail = |e: io::Error| Error::new("make the directory", path, e);
        let (dir, name) = self.parent(path).map_err(fail)?.ok_or_else(|| fail(missing_parent()))?;
        let (uid, gid) = self.host_ids(meta).map_err(fail)?;
        let made = self.making(|| Ok(rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700))));
        match made.map_err(fail)? {
            Ok(()) => {
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let made = rustix::fs::openat(&dir, name, flags, Mode::empty()).map_err(|e| fail(e.into()))?;
                rustix::fs::fchown(&made, Some(uid), Some(gid)).map_err(|e| fail(e.into()))?;
                rustix::fs::fchmod(&made, Mode::from_raw_mode(meta.mode & 0o7777)).map_err(|e| fail(e.into()))?;
                Ok(true)
            }
            Err(Errno::EXIST) => match self.metadata(path)? {
                Some(stat) if stat.kind == Kind::Directory => Ok(false),
                _ => Err(fail(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "something other than a directory is there",
                ))),
            },
            Err(e) => Err(fail(e.into())),
        }
    }

    /// Gives the directory or regular file at `path` (a symlink there is not followed) the
    /// owner and mode of `meta`.
    pub fn set_meta(&self, path: &str, meta: Meta) -> Result<()> {
        let fail = |e: io::Error| Error::new("change the owner of", path, e);
        let (dir, name) = self.parent(path).map_err(fail)?.ok_or_else(|| fail(missing_parent()))?;
        let (uid, gid) = self.host_ids(meta).map_err(fail)?;
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let found = rustix::fs::openat(&dir, name, flags, Mode::empty()).map_err(|e| fail(e.into()))?;
        let kinds = [FileType::Directory, FileType::RegularFile];
        let (fd, _) = reopen(&found, OFlags::RDONLY, &kinds).map_err(fail)?;
        rustix::fs::fchown(&fd, Some(uid), Some(gid)).map_err(|e| fail(e.into()))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode & 0o7777)).map_err(|e| fail(e.into()))
    }

    /// Replaces whatever file or symlink is at `path` with a symlink to `target`, owned by the
    /// container's root, in one step. The directory it is in must exist.
    pub fn symlink(&self, path: &str, target: &str) -> Result<()> {
        let fail = |e: io::Error| Error::new("link", path, e);
        let (dir, name) = self.parent(path).map_err(fail)?.ok_or_else(|| fail(missing_parent()))?;
        let (uid, gid) = self.host_ids(Meta::new(0, 0, 0o777)).map_err(fail)?;
        let (temporary, linked) = self
            .making(|| {
                let (temporary, ()) = beside(name, |temporary| rustix::fs::symlinkat(target, &dir, temporary))?;
                let linked = (|| -> io::Result<()> {
                    rustix::fs::chownat(&dir, &temporary, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)?;
                    Ok(rustix::fs::renameat(&dir, &temporary, &dir, name)?)
                })();
                Ok((temporary, linked))
            })
            .map_err(fail)?;
        linked.map_err(|e| {
            let _ = rustix::fs::unlinkat(&dir, &temporary, AtFlags::empty());
            fail(e)
        })
    }

    /// Removes the file or symlink at `path` (never what a symlink names); says whether there
    /// was one.
    pub fn remove(&self, path: &str) -> Result<bool> {
        let fail = |e: io::Error| Error::new("remove", path, e);
        let Some((dir, name)) = self.parent(path).map_err(fail)? else {
            return Ok(false);
        };
        match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(fail(e.into())),
        }
    }

    /// The names in directory `path` (symlinks followed, inside the root), without `.` and
    /// `..`, in no particular order; `None` when there is no such directory.
    pub fn list(&self, path: &str) -> Result<Option<Vec<String>>> {
        let fail = |e: io::Error| Error::new("list", path, e);
        check(path).map_err(fail)?;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat2(&self.dir, path, flags, Mode::empty(), RESOLVE_ON_ROOT_FS) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(fail(e.into())),
        };
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::new(fd).map_err(|e| fail(e.into()))? {
            let entry = entry.map_err(|e| fail(e.into()))?;
            let name = entry.file_name().to_string_lossy();
            if name != "." && name != ".." {
                names.push(name.into_owned());
            }
        }
        Ok(Some(names))
    }

    /// The directory `path` is in, opened, and its last component. `None` when the directory
    /// does not exist.
    fn parent<'p>(&self, path: &'p str) -> io::Result<Option<(OwnedFd, &'p str)>> {
        check(path)?;
        let (parent, name) = path.rsplit_once('/').expect("checked: absolute");
        if name.is_empty() || name == "." || name == ".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the path must end in a name",
            ));
        }
        let parent = if parent.is_empty() { "/" } else { parent };
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        match rustix::fs::openat2(&self.dir, parent, flags, Mode::empty(), RESOLVE_ON_ROOT_FS) {
            Ok(dir) => Ok(Some((dir, name))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn host_ids(&self, meta: Meta) -> io::Result<(Uid, Gid)> {
        let unmapped = |what: &str, id: u32| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{what} {id} of the container stands for no id of the host"),
            )
        };
        let uid = self.uids.to_host(meta.uid).ok_or_else(|| unmapped("uid", meta.uid))?;
        let gid = self.gids.to_host(meta.gid).ok_or_else(|| unmapped("gid", meta.gid))?;
        Ok((Uid::from_raw(uid), Gid::from_raw(gid)))
    }

    fn meta_of(&self, stat: &rustix::fs::Stat) -> Meta {
        Meta {
            uid: self.uids.to_container(stat.st_uid).unwrap_or(OVERFLOW_ID),
            gid: self.gids.to_container(stat.st_gid).unwrap_or(OVERFLOW_ID),
            mode: stat.st_mode & 0o7777,
        }
    }

    fn stat_of(&self, stat: &rustix::fs::Stat) -> Stat {
        let kind = match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Directory,
            FileType::Symlink => Kind::Symlink,
            _ => Kind::Other,
        };
        Stat {
            kind,
            meta: self.meta_of(stat),
            size: u64::try_from(stat.st_size).unwrap_or(0),
        }
    }
}

/// An absolute path of sane length without NUL.
fn check(path: &str) -> io::Result<()> {
    let bad = |why: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, why.to_owned()));
    if !path.starts_with('/') {
        return bad("the path must be absolute");
    }
    if path.len() > MAX_PATH || path.contains('\0') {
        return bad("not a usable path");
    }
    Ok(())
}

fn missing_parent() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "its directory does not exist")
}

/// Makes something under a new name beside `name` in its directory (`make` must fail with
/// `EEXIST` when the name is taken), and returns the name with what `make` gave.
fn beside<T>(name: &str, make: impl Fn(&str) -> rustix::io::Result<T>) -> io::Result<(String, T)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for _ in 0..16 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // Short enough for any file system: the name's start, the process and a counter.
        let stem: String = name.chars().take(64).collect();
        let temporary = format!(".{stem}.kapsule-{:x}-{seed:x}-{n}", std::process::id());
        match make(&temporary) {
            Ok(made) => return Ok((temporary, made)),
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free temporary name beside it",
    ))
}

/// Writes `data` over the regular file `name` in `dir` in place (not following a symlink there).
fn write_in_place(dir: &impl AsFd, name: &str, data: &[u8]) -> io::Result<()> {
    let found = rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let (fd, _) = reopen(&found, OFlags::WRONLY | OFlags::TRUNC, &[FileType::RegularFile])?;
    File::from(fd).write_all(data)
}

/// Opens what the `O_PATH` descriptor `found` stands for with `flags`, if it is one of `kinds`
/// (checked first, so a device or FIFO is never opened), through `/proc/self/fd`: the same
/// file, not the path again. Returns the descriptor and what `fstat` said.
fn reopen(found: &OwnedFd, flags: OFlags, kinds: &[FileType]) -> io::Result<(OwnedFd, rustix::fs::Stat)> {
    let stat = rustix::fs::fstat(found)?;
    if !kinds.contains(&FileType::from_raw_mode(stat.st_mode)) {
        let what = if kinds.contains(&FileType::Directory) {
            "neither a directory nor a regular file"
        } else {
            "not a regular file"
        };
        return Err(io::Error::new(io::ErrorKind::InvalidInput, what));
    }
    let again = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(found));
    let fd = rustix::fs::open(again, flags | OFlags::CLOEXEC | OFlags::NOCTTY, Mode::empty())?;
    Ok((fd, stat))
}

#[cfg(test)]
mod tests;

//! Bind-mounting the desktop's sockets into a container: what `kapsule-mounts` is asked, what
//! it answers, and how it does each entry.
//!
//! The helper opens every source on the host first (as a detached bind mount, `open_tree`),
//! then joins the container's mount namespace and attaches each one at its target
//! (`move_mount`). So the sockets come from the host directly: they do not depend on
//! `/.kapsule/host`, and inside they are real mounts on real files, which programs in mount
//! namespaces of their own (snap, flatpak) see as well, unlike symlinks into `/.kapsule/host`.
//!
//! The container's user controls its filesystem, so nothing there is followed: every path is
//! resolved below the container's root with `RESOLVE_NO_SYMLINKS`, a symlink planted at a target
//! is removed rather than followed, and the file a socket is mounted on is created with
//! `O_EXCL | O_NOFOLLOW` and then mounted on through its descriptor, never by name again.
//! Sources are resolved the same way on the host and must be sockets or regular files owned
//! by the user or by root.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, StatxAttributes, StatxFlags};
use rustix::io::Errno;
use rustix::mount::{MoveMountFlags, OpenTreeFlags, UnmountFlags};
use serde::{Deserialize, Serialize};

/// Most entries one request may hold (a desktop has five or six sockets).
pub const MAX_ENTRIES: usize = 32;
/// Longest path accepted.
pub const MAX_PATH: usize = 1024;

/// What to do in one container: directories first, then mounts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub dirs: Vec<Dir>,
    pub mounts: Vec<Mount>,
    /// The host ids new files and directories are made as: those of an unprivileged container's
    /// root (its file systems, an idmapped root and its own tmpfs mounts, take no new file from
    /// an id they do not map, such as the host's root); none: as this helper is. Owners are
    /// given afterwards, as each entry says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maker: Option<(u32, u32)>,
}

/// A directory the targets need: made when missing (a symlink there is replaced by it), left
/// as it is when it exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dir {
    pub path: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// A host file (`source`) to bind-mount at `target` in the container, on a file owned by
/// `uid`:`gid`; the source must belong to `uid` or root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub source: String,
    pub target: String,
    pub uid: u32,
    pub gid: u32,
    /// Mounted read-only (a program Kapsule places in containers); sockets are not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// What became of one entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "why", rename_all = "snake_case")]
pub enum Outcome {
    /// A directory was made.
    Created,
    /// The directory was there.
    Present,
    /// A mount was made on a new file.
    Mounted,
    /// Something that was in the way (a stale file, a symlink, a mount of a socket the host
    /// has since re-created) was removed and the mount made.
    Replaced,
    /// The target already is a mount of this very source.
    Current,
    /// The host has no such source (that part of the desktop is not running): nothing done.
    Missing,
    /// Not done, on purpose.
    Refused(String),
    /// Not done: a system call failed.
    Failed(String),
}

impl Outcome {
    /// True for the outcomes that leave the entry as asked (or, for a missing source, as the
    /// host is).
    pub fn is_fine(&self) -> bool {
        !matches!(self, Outcome::Refused(_) | Outcome::Failed(_))
    }
}

/// One line of the report: an entry's path (the directory or the target) and its outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The helper's answer, printed as JSON on its stdout.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub entries: Vec<Entry>,
}

impl Request {
    /// Refuses requests that are not well formed: too many entries, paths that are not
    /// absolute and normal (no `.`, `..` or empty components, not `/` itself), modes beyond
    /// the permission bits.
    pub fn validate(&self) -> Result<(), String> {
        if self.dirs.len() + self.mounts.len() > MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} entries"));
        }
        let paths = self
            .dirs
            .iter()
            .map(|d| d.path.as_str())
            .chain(self.mounts.iter().flat_map(|m| [m.source.as_str(), m.target.as_str()]));
        for path in paths {
            split(path)?;
        }
        if let Some(dir) = self.dirs.iter().find(|d| d.mode & !0o7777 != 0) {
            return Err(format!("mode {:o} of {} is not a permission mode", dir.mode, dir.path));
        }
        Ok(())
    }
}

/// `path` as (parent, last component), if it is absolute and normal.
fn split(path: &str) -> Result<(&str, &str), String> {
    let bad = |why: &str| Err(format!("'{path}' {why}"));
    if path.len() > MAX_PATH {
        return bad("is too long");
    }
    let Some(rest) = path.strip_prefix('/') else {
        return bad("is not absolute");
    };
    if path.contains('\0') {
        return bad("contains a NUL byte");
    }
    if rest.is_empty() || rest.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return bad("is not a normal path to a file");
    }
    let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
    Ok((if parent.is_empty() { "/" } else { parent }, name))
}

/// A source opened on the host: a detached bind mount of it, and which file it is.
#[derive(Debug)]
pub struct Source {
    tree: OwnedFd,
    identity: (u64, u64),
}

/// Opens `path` on the host for a mount owned by `uid`: no symlink is followed on the way,
/// and it must be a socket or a regular file owned by `uid` or root.
pub fn open_source(path: &str, uid: u32) -> Result<Source, Outcome> {
    let fd = rustix::fs::openat2(
        rustix::fs::CWD,
        path,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| match e {
        Errno::NOENT => Outcome::Missing,
        Errno::LOOP | Errno::XDEV => Outcome::Refused(format!("{path}: a symbolic link on the way")),
        e => Outcome::Failed(format!("{path}: {e}")),
    })?;
    let stat = rustix::fs::statx(
        &fd,
        "",
        AtFlags::EMPTY_PATH,
        StatxFlags::TYPE | StatxFlags::UID | StatxFlags::INO,
    )
    .map_err(|e| Outcome::Failed(format!("{path}: {e}")))?;
    let kind = FileType::from_raw_mode(stat.stx_mode.into());
    if !matches!(kind, FileType::Socket | FileType::RegularFile) {
        return Err(Outcome::Refused(format!("{path} is not a socket or a regular file")));
    }
    if stat.stx_uid != uid && stat.stx_uid != 0 {
        return Err(Outcome::Refused(format!(
            "{path} belongs to uid {}, neither the user nor root",
            stat.stx_uid
        )));
    }
    let tree = rustix::mount::open_tree(
        &fd,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC | OpenTreeFlags::AT_EMPTY_PATH,
    )
    .map_err(|e| Outcome::Failed(format!("{path}: cannot clone it as a mount: {e}")))?;
    Ok(Source {
        tree,
        identity: identity(&stat),
    })
}

/// The source of `mount`, opened as [`open_source`] does, and made read-only when it asks to be.
pub fn open_mount_source(mount: &Mount) -> Result<Source, Outcome> {
    let source = open_source(&mount.source, mount.uid)?;
    if mount.read_only {
        kapsule_sys::make_read_only(source.tree.as_fd())
            .map_err(|e| Outcome::Failed(format!("{}: cannot make it read-only: {e}", mount.source)))?;
    }
    Ok(source)
}

fn identity(stat: &rustix::fs::Statx) -> (u64, u64) {
    (
        rustix::fs::makedev(stat.stx_dev_major, stat.stx_dev_minor),
        stat.stx_ino,
    )
}

/// Does the whole request below `root` (the container's root once the helper is in its mount
/// namespace; any directory in tests), with `sources` opened beforehand, one per mount.
pub fn apply(root: BorrowedFd<'_>, request: &Request, sources: Vec<Result<Source, Outcome>>) -> Report {
    let mut entries = Vec::with_capacity(request.dirs.len() + request.mounts.len());
    let maker = request.maker;
    for dir in &request.dirs {
        entries.push(Entry {
            path: dir.path.clone(),
            outcome: ensure_dir(root, dir, maker),
        });
    }
    for (mount, source) in request.mounts.iter().zip(sources) {
        let outcome = match source {
            Ok(source) => place(root, mount, &source, maker),
            Err(outcome) => outcome,
        };
        entries.push(Entry {
            path: mount.target.clone(),
            outcome,
        });
    }
    Report { entries }
}

/// The directory `path` below `root`, opened without following any symlink.
fn open_dir(root: BorrowedFd<'_>, path: &str, flags: OFlags) -> Result<OwnedFd, Outcome> {
    let relative = path.trim_start_matches('/');
    rustix::fs::openat2(
        root,
        if relative.is_empty() { "." } else { relative },
        // RESOLVE_NO_SYMLINKS covers the last component too (ELOOP, where O_NOFOLLOW with
        // O_DIRECTORY would say ENOTDIR).
        flags | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| match e {
        Errno::LOOP | Errno::XDEV => Outcome::Refused(format!("a symbolic link on the way to {path}")),
        Errno::NOENT => Outcome::Failed(format!("{path} does not exist")),
        Errno::NOTDIR => Outcome::Refused(format!("{path} is not a directory")),
        e => Outcome::Failed(format!("{path}: {e}")),
    })
}

/// What is at `name` in `dir`, not following a symlink; `None` when nothing is.
fn look(dir: &OwnedFd, name: &str) -> Result<Option<rustix::fs::Statx>, Outcome> {
    match rustix::fs::statx(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::TYPE | StatxFlags::INO | StatxFlags::MNT_ID,
    ) {
        Ok(stat) => Ok(Some(stat)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(Outcome::Failed(format!("{name}: {e}"))),
    }
}

fn kind(stat: &rustix::fs::Statx) -> FileType {
    FileType::from_raw_mode(stat.stx_mode.into())
}

fn is_mount_root(stat: &rustix::fs::Statx) -> bool {
    stat.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT)
        && stat.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
}

/// Runs `make` (one new file or directory) as `maker` (see [`Request::maker`]).
fn making<T>(maker: Option<(u32, u32)>, make: impl FnOnce() -> rustix::io::Result<T>) -> std::io::Result<T> {
    kapsule_rootfs::FsIdentity::run(maker, || Ok(make()?))
}

fn ensure_dir(root: BorrowedFd<'_>, dir: &Dir, maker: Option<(u32, u32)>) -> Outcome {
    let result = (|| {
        let (parent, name) = split(&dir.path).map_err(Outcome::Refused)?;
        let parent = open_dir(root, parent, OFlags::PATH)?;
        let replaced = match look(&parent, name)? {
            None => false,
            Some(stat) if kind(&stat) == FileType::Directory => return Ok(Outcome::Present),
            Some(stat) if kind(&stat) == FileType::Symlink => {
                rustix::fs::unlinkat(&parent, name, AtFlags::empty())
                    .map_err(|e| Outcome::Failed(format!("cannot remove the symlink {}: {e}", dir.path)))?;
                true
            }
            Some(_) => return Err(Outcome::Refused(format!("{} is in the way", dir.path))),
        };
        let fail = |what: &str, e: Errno| Outcome::Failed(format!("cannot {what} {}: {e}", dir.path));
        making(maker, || rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700)))
            .map_err(|e| Outcome::Failed(format!("cannot create {}: {e}", dir.path)))?;
        let made = rustix::fs::openat(
            &parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fail("open", e))?;
        // Mode before owner: root may change the mode of its own directory without CAP_FOWNER.
        rustix::fs::fchmod(&made, Mode::from_raw_mode(dir.mode)).map_err(|e| fail("chmod", e))?;
        chown(&made, dir.uid, dir.gid).map_err(|e| fail("chown", e))?;
        Ok(if replaced { Outcome::Replaced } else { Outcome::Created })
    })();
    result.unwrap_or_else(|outcome| outcome)
}

fn chown(fd: &OwnedFd, uid: u32, gid: u32) -> rustix::io::Result<()> {
    rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
}

fn place(root: BorrowedFd<'_>, mount: &Mount, source: &Source, maker: Option<(u32, u32)>) -> Outcome {
    let result = (|| {
        let target = &mount.target;
        let (parent, name) = split(target).map_err(Outcome::Refused)?;
        let parent = open_dir(root, parent, OFlags::PATH)?;
        let mut replaced = false;
        // Stale mounts (more than one if something stacked them), then the file under them.
        for _ in 0..8 {
            let Some(stat) = look(&parent, name)? else {
                break;
            };
            if is_mount_root(&stat) {
                if identity(&stat) == source.identity {
                    return Ok(Outcome::Current);
                }
                // A mount of a socket the host has re-created since (or of something else):
                // detach it. The name is resolved from the parent checked above, and a symlink
                // swapped in meanwhile is not followed.
                rustix::process::fchdir(&parent)
                    .and_then(|()| rustix::mount::unmount(name, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW))
                    .map_err(|e| Outcome::Failed(format!("cannot unmount the stale {target}: {e}")))?;
            } else if kind(&stat) == FileType::Directory {
                return Err(Outcome::Refused(format!("{target} is a directory")));
            } else {
                rustix::fs::unlinkat(&parent, name, AtFlags::empty())
                    .map_err(|e| Outcome::Failed(format!("cannot remove what is at {target}: {e}")))?;
            }
            replaced = true;
        }
        let file = making(maker, || {
            rustix::fs::openat(
                &parent,
                name,
                OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
        })
        .map_err(|e| Outcome::Failed(format!("cannot create {target}: {e}")))?;
        chown(&file, mount.uid, mount.gid).map_err(|e| Outcome::Failed(format!("cannot chown {target}: {e}")))?;
        rustix::mount::move_mount(
            source.tree.as_fd(),
            "",
            &file,
            "",
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
        )
        .map_err(|e| Outcome::Failed(format!("cannot mount {} on {target}: {e}", mount.source)))?;
        Ok(if replaced { Outcome::Replaced } else { Outcome::Mounted })
    })();
    result.unwrap_or_else(|outcome| outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn root(dir: &tempfile::TempDir) -> OwnedFd {
        rustix::fs::open(dir.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap()
    }

    fn dir(path: &str, mode: u32) -> Dir {
        Dir {
            path: path.to_owned(),
            uid: 0,
            gid: 0,
            mode,
        }
    }

    #[test]
    fn requests_with_odd_paths_are_refused() {
        for bad in [
            "",
            "/",
            "run/user",
            "/run/../etc",
            "/run/./x",
            "/run//x",
            "/run/x/",
            "/a\0b",
        ] {
            let request = Request {
                dirs: vec![dir(bad, 0o700)],
                mounts: vec![],
                ..Default::default()
            };
            assert!(request.validate().is_err(), "{bad:?}");
        }
        let request = Request {
            dirs: vec![dir("/run/user/1000", 0o40700)],
            mounts: vec![],
            ..Default::default()
        };
        assert!(request.validate().unwrap_err().contains("not a permission mode"));
        let many = Request {
            dirs: vec![dir("/run/user", 0o755); MAX_ENTRIES + 1],
            mounts: vec![],
            ..Default::default()
        };
        assert!(many.validate().is_err());
        assert_eq!(split("/tmp/.X11-unix/X0"), Ok(("/tmp/.X11-unix", "X0")));
        assert_eq!(split("/run"), Ok(("/", "run")));
    }

    #[test]
    #[ignore = "tier 1, needs root: tests/run-all.sh runs it (docs/TESTING.md)"]
    fn tier1_directories_are_made_with_their_mode_and_a_planted_symlink_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let root_fd = root(&tmp);
        std::fs::create_dir(tmp.path().join("run")).unwrap();
        std::os::unix::fs::symlink("/etc", tmp.path().join("run/pulse")).unwrap();
        let request = Request {
            dirs: vec![
                dir("/run/user", 0o755),
                dir("/tmp", 0o1777),
                dir("/run/pulse", 0o700),
                dir("/run", 0o700),
            ],
            mounts: vec![],
            ..Default::default()
        };
        request.validate().unwrap();
        let report = apply(root_fd.as_fd(), &request, vec![]);
        let outcomes: Vec<_> = report.entries.iter().map(|e| e.outcome.clone()).collect();
        assert_eq!(
            outcomes,
            [Outcome::Created, Outcome::Created, Outcome::Replaced, Outcome::Present]
        );
        let mode = |p: &str| {
            std::fs::symlink_metadata(tmp.path().join(p))
                .unwrap()
                .permissions()
                .mode()
        };
        assert_eq!(mode("run/user") & 0o7777, 0o755);
        assert_eq!(mode("tmp") & 0o7777, 0o1777, "the sticky bit survives the umask");
        assert!(
            std::fs::symlink_metadata(tmp.path().join("run/pulse"))
                .unwrap()
                .is_dir()
        );
        assert!(std::fs::read_dir("/etc").unwrap().next().is_some(), "/etc untouched");
    }

    #[test]
    fn nothing_is_followed_out_of_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root_fd = root(&tmp);
        // The container's user points a parent directory somewhere else.
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("run")).unwrap();
        let request = Request {
            dirs: vec![dir("/run/user", 0o755)],
            mounts: vec![],
            ..Default::default()
        };
        let report = apply(root_fd.as_fd(), &request, vec![]);
        assert!(
            matches!(&report.entries[0].outcome, Outcome::Refused(why) if why.contains("symbolic link")),
            "{report:?}"
        );
        assert_eq!(
            std::fs::read_dir(outside.path()).unwrap().count(),
            0,
            "nothing made outside"
        );
    }

    #[test]
    #[ignore = "tier 1, needs root: tests/run-all.sh runs it (docs/TESTING.md)"]
    fn tier1_sources_must_be_sockets_or_files_of_the_user_reached_without_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let socket = tmp.path().join("wayland-0");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let uid = std::fs::metadata(&socket).unwrap().uid();
        let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();

        let opened = open_source(&path(&socket), uid).unwrap();
        assert_eq!(opened.identity.1, std::fs::metadata(&socket).unwrap().ino());
        assert_eq!(
            open_source(&path(&tmp.path().join("pipewire-0")), uid).unwrap_err(),
            Outcome::Missing
        );
        std::os::unix::fs::symlink("/etc/shadow", tmp.path().join("bus")).unwrap();
        assert!(matches!(
            open_source(&path(&tmp.path().join("bus")), uid).unwrap_err(),
            Outcome::Refused(_)
        ));
        assert!(matches!(
            open_source(&path(tmp.path()), uid).unwrap_err(),
            Outcome::Refused(why) if why.contains("not a socket")
        ));
        if uid == 0 {
            // Root's socket is accepted for any user (an X server running as root).
            assert!(open_source(&path(&socket), 1000).is_ok());
        } else {
            assert!(matches!(
                open_source(&path(&socket), uid + 1).unwrap_err(),
                Outcome::Refused(_)
            ));
        }
    }

    #[test]
    fn the_report_is_one_line_of_json_per_entry_kind() {
        let report = Report {
            entries: vec![
                Entry {
                    path: "/run/user/1000/wayland-0".into(),
                    outcome: Outcome::Mounted,
                },
                Entry {
                    path: "/run/user/1000/bus".into(),
                    outcome: Outcome::Refused("x".into()),
                },
            ],
        };
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(
            json,
            r#"{"entries":[{"path":"/run/user/1000/wayland-0","outcome":"mounted"},{"path":"/run/user/1000/bus","outcome":"refused","why":"x"}]}"#
        );
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), report);
    }
}

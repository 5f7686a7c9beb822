//! Who is calling, from the bus's credentials (never from arguments), and reading files as them.
//!
//! The daemon is root. Whenever it touches a path a user named (their config file, an image
//! directory) it does so with that user's file-system identity, so a symlink to `/etc/shadow` or
//! into another user's home gets the user's own "Permission denied", not root's access.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use kapsule_dbus::Error;
use nix::unistd::{Gid, Uid, User};
use zbus::Connection;
use zbus::message::Header;
use zbus::names::BusName;

use crate::host::config;

/// The user behind a method call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Caller {
    pub(crate) uid: u32,
    /// The primary group, from the user database.
    pub(crate) gid: u32,
    pub(crate) name: String,
    pub(crate) home: PathBuf,
    /// The login shell on the host.
    pub(crate) shell: String,
}

impl Caller {
    /// Asks the bus who sent the message with `header`, then looks the uid up in the user
    /// database. A caller the bus cannot vouch for, or a uid without an account, is refused.
    pub(crate) async fn of(connection: &Connection, header: &Header<'_>) -> Result<Caller, Error> {
        let sender = header
            .sender()
            .ok_or_else(|| Error::NotAuthorized("The call has no sender; cannot tell who is calling".into()))?;
        let credentials = zbus::fdo::DBusProxy::new(connection)
            .await?
            .get_connection_credentials(BusName::from(sender.to_owned()))
            .await
            .map_err(|e| Error::NotAuthorized(format!("Cannot tell who is calling: {e}")))?;
        let uid = credentials
            .unix_user_id()
            .ok_or_else(|| Error::NotAuthorized("The bus does not know the caller's user".into()))?;
        Caller::from_uid(uid)
    }

    /// The account of `uid` in the user database.
    pub(crate) fn from_uid(uid: u32) -> Result<Caller, Error> {
        let user = User::from_uid(Uid::from_raw(uid))
            .map_err(|e| Error::Failed(format!("Cannot look up user {uid}: {e}")))?
            .ok_or_else(|| Error::NotAuthorized(format!("User {uid} has no account on this system")))?;
        Ok(Caller {
            uid,
            gid: user.gid.as_raw(),
            name: user.name,
            home: user.dir,
            shell: user.shell.to_string_lossy().into_owned(),
        })
    }

    /// This user's file-system identity, groups included.
    pub(crate) fn identity(&self) -> FsIdentity {
        FsIdentity::of(self.uid, self.gid, &self.name)
    }

    /// Opens a regular file for reading with this user's file-system identity (see
    /// [`open_as`]).
    pub(crate) async fn open(&self, path: &Path) -> std::io::Result<File> {
        let identity = self.identity();
        let path = path.to_owned();
        run_as(move || {
            identity.assume()?;
            open_as(&path)
        })
        .await
    }

    /// Reads a small text file as this user: at most `limit` bytes, else an error.
    pub(crate) async fn read_small(&self, path: &Path, limit: u64) -> std::io::Result<String> {
        let file = self.open(path).await?;
        tokio::task::spawn_blocking(move || {
            let mut text = String::new();
            file.take(limit + 1).read_to_string(&mut text)?;
            if text.len() as u64 > limit {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("larger than {limit} bytes"),
                ));
            }
            Ok(text)
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

/// Who the kernel checks file access against: a file-system uid and gid and the supplementary
/// groups, applied to one thread only (see [`run_as`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FsIdentity {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

/// Whether [`FsIdentity::mount_source`] may create a missing directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Missing {
    /// Create it (and its parents) as the user.
    Create,
    /// Only check that the user could create it.
    Check,
}

impl FsIdentity {
    /// The identity of user `name` (`uid`, primary group `gid`) with the groups the user
    /// database gives them. A lookup failure leaves only the primary group: fewer rights, never
    /// more.
    pub(crate) fn of(uid: u32, gid: u32, name: &str) -> FsIdentity {
        let groups = std::ffi::CString::new(name)
            .ok()
            .and_then(|name| nix::unistd::getgrouplist(&name, Gid::from_raw(gid)).ok())
            .map(|groups| groups.into_iter().map(Gid::as_raw).collect())
            .unwrap_or_else(|| vec![gid]);
        FsIdentity { uid, gid, groups }
    }

    /// Checks that this user may share the directory `path` with a container, which gets read
    /// and write access to it: it must be a directory they can read, write and enter themselves.
    /// A missing one is created as them ([`Missing::Create`]), or must be one they could create.
    pub(crate) async fn mount_source(&self, path: &Path, missing: Missing) -> std::io::Result<()> {
        let identity = self.clone();
        let path = path.to_owned();
        run_as(move || {
            identity.assume()?;
            if missing == Missing::Create {
                std::fs::create_dir_all(&path)?;
            }
            let mut existing = path.as_path();
            while let Err(e) = std::fs::metadata(existing) {
                match (e.kind(), existing.parent()) {
                    (std::io::ErrorKind::NotFound, Some(parent)) if missing == Missing::Check => existing = parent,
                    _ => return Err(e),
                }
            }
            if !std::fs::metadata(existing)?.is_dir() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotADirectory,
                    format!("{} is not a directory", existing.display()),
                ));
            }
            use rustix::fs::{Access, AtFlags, CWD};
            let needed = if existing == path {
                Access::READ_OK | Access::WRITE_OK | Access::EXEC_OK
            } else {
                Access::WRITE_OK | Access::EXEC_OK
            };
            // AT_EACCESS: check with the file-system identity of this thread, not the real uid.
            rustix::fs::accessat(CWD, existing, needed, AtFlags::EACCESS)?;
            Ok(())
        })
        .await
    }

    /// Gives the current thread this identity (see [`run_as`]).
    fn assume(&self) -> std::io::Result<()> {
        let groups: Vec<rustix::process::Gid> =
            self.groups.iter().map(|&g| rustix::process::Gid::from_raw(g)).collect();
        // The raw system call: glibc's setgroups() would change every thread of the daemon.
        rustix::thread::set_thread_groups(&groups)?;
        // The thread does nothing else afterwards (see `run_as`), so it is never switched back.
        kapsule_rootfs::set_fs_ids(self.uid, self.gid)
    }
}

/// Runs `work` on a fresh thread of its own. The file-system uid and gid and the groups are per
/// thread; a thread that changed them must never run anything else, so it ends with the work.
async fn run_as<T: Send + 'static>(work: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> std::io::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("kapsule-as-user".into())
        .spawn(move || {
            let _ = tx.send(work());
        })?;
    rx.await
        .map_err(|_| std::io::Error::other("the file reader thread died"))?
}

/// Opens `path` for reading on the current thread, which has taken a user's identity and does
/// nothing afterwards (see [`run_as`]).
///
/// Switching the file-system uid away from 0 also drops the capabilities that bypass permission
/// checks, so the kernel checks every path component and the file itself as that user. The file
/// is opened non-blocking (a FIFO must not hang the daemon) and must be a regular file (not a
/// device that never ends).
fn open_as(path: &Path) -> std::io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits() | nix::fcntl::OFlag::O_NOCTTY.bits())
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// The caller's own layer.
pub(crate) fn config_file(caller: &Caller) -> PathBuf {
    caller.home.join(".config/kapsule/kapsule.conf")
}

/// The configuration as `caller` sees it: the system layers (`system_files`, lowest first),
/// then their own file.
pub(crate) async fn config_for(system_files: &[PathBuf], caller: &Caller) -> BTreeMap<String, String> {
    let mut layers = Vec::new();
    for path in system_files {
        let text = tokio::fs::read_to_string(path).await;
        layers.push((path.clone(), text));
    }
    let path = config_file(caller);
    let text = caller.read_small(&path, config::MAX_FILE).await;
    layers.push((path, text));
    config::merge(layers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Only root can switch identities; as anyone else this test proves nothing, so it says so.
    fn is_root() -> bool {
        Uid::effective().is_root()
    }

    #[tokio::test]
    #[ignore = "tier 1, needs root: tests/run-all.sh runs it (docs/TESTING.md)"]
    async fn tier1_reads_as_the_user_and_refuses_what_they_cannot_read() {
        assert!(
            is_root(),
            "this test switches file-system identity and must run as root"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "root only").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let public = dir.path().join("public");
        std::fs::write(&public, "[kapsule]\n").unwrap();
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&secret, &link).unwrap();

        let nobody = Caller::from_uid(65534).expect("the nobody account exists");
        assert_eq!(nobody.read_small(&public, 1024).await.unwrap(), "[kapsule]\n");
        for path in [&secret, &link] {
            let e = nobody.read_small(path, 1024).await.unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{}", path.display());
        }
        let root = Caller::from_uid(0).unwrap();
        assert_eq!(root.read_small(&link, 1024).await.unwrap(), "root only");

        // Not a regular file: a directory, a device that never ends, a FIFO nobody writes to.
        assert_eq!(
            nobody.read_small(dir.path(), 1024).await.unwrap_err().kind(),
            std::io::ErrorKind::InvalidInput
        );
        assert_eq!(
            nobody
                .read_small(Path::new("/dev/zero"), 1024)
                .await
                .unwrap_err()
                .kind(),
            std::io::ErrorKind::InvalidInput
        );
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
        assert!(nobody.read_small(&fifo, 1024).await.is_err());

        let big = dir.path().join("big");
        std::fs::write(&big, "x".repeat(2000)).unwrap();
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            nobody.read_small(&big, 1024).await.unwrap_err().kind(),
            std::io::ErrorKind::InvalidData
        );
    }

    #[tokio::test]
    #[ignore = "tier 1, needs root: tests/run-all.sh runs it (docs/TESTING.md)"]
    async fn tier1_directories_are_made_as_the_user() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let nested = dir.path().join("a/b");
        let nobody = Caller::from_uid(65534).unwrap().identity();
        let e = nobody.mount_source(&nested, Missing::Create).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(!dir.path().join("a").exists());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        nobody.mount_source(&nested, Missing::Create).await.unwrap();
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&nested).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    }

    #[tokio::test]
    #[ignore = "tier 1, needs root: tests/run-all.sh runs it (docs/TESTING.md)"]
    async fn tier1_a_mount_source_is_one_the_user_could_share_themselves() {
        assert!(is_root(), "this test switches identities and must run as root");
        let nobody = Caller::from_uid(65534).unwrap().identity();
        let denied = |e: std::io::Error| e.kind() == std::io::ErrorKind::PermissionDenied;
        // Readable but not writable, missing below a directory they cannot write.
        assert!(denied(
            nobody
                .mount_source(Path::new("/etc"), Missing::Check)
                .await
                .unwrap_err()
        ));
        assert!(denied(
            nobody
                .mount_source(Path::new("/etc/kapsule-x/y"), Missing::Check)
                .await
                .unwrap_err()
        ));
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        mode(dir.path(), 0o777);
        // Missing below one they can write: fine, and only checked, not made.
        let missing = dir.path().join("a/b");
        nobody.mount_source(&missing, Missing::Check).await.unwrap();
        assert!(!dir.path().join("a").exists());
        // A file is not a directory.
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let e = nobody.mount_source(&file, Missing::Check).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotADirectory);
        // Group root, mode 0770: whatever groups the daemon's thread has, the user's check uses
        // the user's. This test's thread gets root's group (the worker it spawns inherits it),
        // as a daemon that could not drop its own groups at start would have.
        rustix::thread::set_thread_groups(&[rustix::process::Gid::ROOT]).unwrap();
        let group_only = dir.path().join("group");
        std::fs::create_dir(&group_only).unwrap();
        mode(&group_only, 0o770);
        assert!(denied(
            nobody.mount_source(&group_only, Missing::Check).await.unwrap_err()
        ));
        // A symlink is followed as the user: to /etc it is /etc.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/etc", &link).unwrap();
        assert!(denied(nobody.mount_source(&link, Missing::Check).await.unwrap_err()));
        let root = Caller::from_uid(0).unwrap().identity();
        root.mount_source(Path::new("/etc"), Missing::Check).await.unwrap();
    }

    #[test]
    fn unknown_uids_are_refused() {
        assert!(matches!(Caller::from_uid(4_000_000_000), Err(Error::NotAuthorized(_))));
        assert_eq!(Caller::from_uid(0).unwrap().name, "root");
    }

    #[tokio::test]
    #[ignore = "tier 1, needs root: tests/run-all.sh runs it (docs/TESTING.md)"]
    async fn tier1_the_callers_file_is_the_top_layer() {
        let home = tempfile::tempdir().unwrap();
        let file = home.path().join(".config/kapsule/kapsule.conf");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "[kapsule]\ndefault_container = mine\n").unwrap();
        let mut caller = Caller::from_uid(0).unwrap();
        caller.home = home.path().to_owned();
        assert_eq!(config_file(&caller), file);
        assert_eq!(config_for(&[], &caller).await["default_container"], "mine");
    }
}

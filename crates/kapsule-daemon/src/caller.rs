//! Who is calling, from the bus's credentials (never from arguments), and reading files as them.
//!
//! The daemon is root. Whenever it touches a path a user named (their config file, an image
//! directory) it does so with that user's file-system identity, so a symlink to `/etc/shadow` or
//! into another user's home gets the user's own "Permission denied", not root's access.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use kapsule_dbus::Error;
use nix::unistd::{Gid, Uid, User};
use zbus::Connection;
use zbus::message::Header;
use zbus::names::BusName;

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

    /// Opens a regular file for reading with this user's file-system identity (see
    /// [`open_as`]).
    pub(crate) async fn open(&self, path: &Path) -> std::io::Result<File> {
        let (uid, gid, path) = (self.uid, self.gid, path.to_owned());
        run_as(move || open_as(uid, gid, &path)).await
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

/// Creates `path` and its missing parents as user `uid`:`gid`: what they could not create fails
/// with their "Permission denied", and what is created is theirs.
pub(crate) async fn create_dir_all_as(uid: u32, gid: u32, path: &Path) -> std::io::Result<()> {
    let path = path.to_owned();
    run_as(move || {
        switch_fs_identity(uid, gid)?;
        std::fs::create_dir_all(&path)
    })
    .await
}

/// Runs `work` on a fresh thread of its own. The file-system uid and gid are per thread; a thread
/// that changed them must never run anything else, so it ends with the work.
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

/// Opens `path` for reading as `uid`:`gid`, on the current thread, which must be one that does
/// nothing afterwards (see [`run_as`]).
///
/// Switching the file-system uid away from 0 also drops the capabilities that bypass permission
/// checks, so the kernel checks every path component and the file itself as that user. The file
/// is opened non-blocking (a FIFO must not hang the daemon) and must be a regular file (not a
/// device that never ends).
fn open_as(uid: u32, gid: u32, path: &Path) -> std::io::Result<File> {
    switch_fs_identity(uid, gid)?;
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

/// Gives the current thread the file-system identity `uid`:`gid` (see [`run_as`]).
fn switch_fs_identity(uid: u32, gid: u32) -> std::io::Result<()> {
    // Group first: once the uid is not 0 the thread may no longer change its group.
    nix::unistd::setfsgid(Gid::from_raw(gid));
    nix::unistd::setfsuid(Uid::from_raw(uid));
    // Both calls answer with the previous value; asking again (with an invalid id, which
    // changes nothing) tells whether the switch took.
    let uid_now = nix::unistd::setfsuid(Uid::from_raw(u32::MAX)).as_raw();
    let gid_now = nix::unistd::setfsgid(Gid::from_raw(u32::MAX)).as_raw();
    if uid_now != uid || gid_now != gid {
        return Err(std::io::Error::other(
            "could not switch to the caller's file-system identity",
        ));
    }
    Ok(())
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
    async fn reads_as_the_user_and_refuses_what_they_cannot_read() {
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
    async fn directories_are_made_as_the_user() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let nested = dir.path().join("a/b");
        let e = create_dir_all_as(65534, 65534, &nested).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(!dir.path().join("a").exists());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        create_dir_all_as(65534, 65534, &nested).await.unwrap();
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&nested).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    }

    #[test]
    fn unknown_uids_are_refused() {
        assert!(matches!(Caller::from_uid(4_000_000_000), Err(Error::NotAuthorized(_))));
        assert_eq!(Caller::from_uid(0).unwrap().name, "root");
    }
}

//! The host's subordinate ids (`/etc/subuid`, `/etc/subgid`): which host ids root may map into a
//! user namespace.
//!
//! An unprivileged container maps its owner's uid and gid to themselves (`raw.idmap`). Where the
//! shadow tools are installed, LXC maps ids through `newuidmap`/`newgidmap` even as root, and
//! those refuse any host id not given to root in these files; so each owner's ids are given to
//! root there (`root:<id>:1`) before Incus starts the container. Nothing else in the files
//! changes: the entry is added at the end, once, under shadow's own lock (`<file>.lock`, made by
//! `link(2)` as `useradd` and `usermod` make it), and the file is replaced in one step.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a lock another program holds is waited for.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// The files (the host's `/etc/subuid` and `/etc/subgid`; see `Settings::subids`).
#[derive(Clone, Debug)]
pub(crate) struct Subids {
    pub(crate) subuid: PathBuf,
    pub(crate) subgid: PathBuf,
}

impl Subids {
    /// Gives host uid `uid` to root, unless it is already. Blocking.
    pub(crate) fn give_root_uid(&self, uid: u32) -> io::Result<()> {
        give_root(&self.subuid, uid)
    }

    /// Gives host gid `gid` to root, unless it is already. Blocking.
    pub(crate) fn give_root_gid(&self, gid: u32) -> io::Result<()> {
        give_root(&self.subgid, gid)
    }
}

/// Adds `root:<id>:1` to the file at `path` unless a range of root's covers `id`. A missing file
/// is made (mode 0644, as shadow makes it).
fn give_root(path: &Path, id: u32) -> io::Result<()> {
    let fail = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("cannot {what} {}: {e}", path.display()));
    let read = |path: &Path| match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(fail("read", e)),
    };
    // Most calls find the entry there: no lock for those.
    if read(path)?.is_some_and(|text| with_root_id(&text, id).is_none()) {
        return Ok(());
    }
    let _lock = ShadowLock::take(path).map_err(|e| fail("lock", e))?;
    let text = read(path)?;
    let Some(new) = with_root_id(text.as_deref().unwrap_or(""), id) else {
        return Ok(());
    };
    let (mode, owner) = match fs::metadata(path) {
        Ok(meta) => (meta.mode() & 0o7777, Some((meta.uid(), meta.gid()))),
        Err(_) => (0o644, None),
    };
    let temporary = sibling(path, ".kapsule-new");
    let written = (|| {
        let mut file = fs::OpenOptions::new().write(true).create_new(true).open(&temporary)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        }
        file.write_all(new.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temporary, path)?;
        if let Some(dir) = path.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written.map_err(|e| fail("write", e))
}

/// `text` with `root:<id>:1` added, or `None` when a range of root's covers `id` already. Lines
/// that are not ranges (comments, junk) are kept as they are.
pub(crate) fn with_root_id(text: &str, id: u32) -> Option<String> {
    let covered = text.lines().any(|line| {
        let mut fields = line.trim().split(':');
        let (Some("root"), Some(start), Some(count), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        let (Ok(start), Ok(count)) = (start.parse::<u64>(), count.parse::<u64>()) else {
            return false;
        };
        (start..start + count).contains(&u64::from(id))
    });
    if covered {
        return None;
    }
    let mut new = text.to_owned();
    if !new.is_empty() && !new.ends_with('\n') {
        new.push('\n');
    }
    new.push_str(&format!("root:{id}:1\n"));
    Some(new)
}

/// `path` with `suffix` added to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(suffix);
    path.with_file_name(name)
}

/// Shadow's lock of a file: `<file>.lock`, a hard link of a file holding the locker's pid, so it
/// is made whole or not at all. A lock whose process is gone is stale and taken over.
struct ShadowLock(PathBuf);

impl ShadowLock {
    fn take(path: &Path) -> io::Result<ShadowLock> {
        let lock = sibling(path, ".lock");
        let mine = sibling(path, &format!(".{}", std::process::id()));
        fs::write(&mine, format!("{}\0", std::process::id()))?;
        let started = Instant::now();
        let taken = loop {
            match fs::hard_link(&mine, &lock) {
                Ok(()) => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let holder = fs::read_to_string(&lock).ok().and_then(|text| {
                        text.trim_matches(|c: char| c == '\0' || c.is_whitespace())
                            .parse::<i32>()
                            .ok()
                    });
                    let alive = holder
                        .and_then(rustix::process::Pid::from_raw)
                        .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok());
                    if !alive {
                        // A holder that is gone (or a lock with no pid in it) left it behind.
                        let _ = fs::remove_file(&lock);
                        continue;
                    }
                    if started.elapsed() > LOCK_WAIT {
                        break Err(io::Error::new(
                            io::ErrorKind::WouldBlock,
                            format!("{} is held by process {}", lock.display(), holder.unwrap_or(0)),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => break Err(e),
            }
        };
        let _ = fs::remove_file(&mine);
        taken.map(|()| ShadowLock(lock))
    }
}

impl Drop for ShadowLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_given_once_and_nothing_else_changes() {
        let text = "# ranges\nalice:100000:65536\nroot:1000000:1000000000\n";
        assert_eq!(
            with_root_id(text, 1001).as_deref(),
            Some("# ranges\nalice:100000:65536\nroot:1000000:1000000000\nroot:1001:1\n")
        );
        assert_eq!(with_root_id(text, 1000000), None, "inside root's range");
        assert_eq!(with_root_id(text, 1000999999), None, "its last id");
        assert!(with_root_id(text, 1001000000).is_some(), "one past it");
        assert_eq!(with_root_id("root:1001:1", 1001), None, "no newline at the end");
        assert_eq!(
            with_root_id("alice:1001:1\n", 1001).as_deref(),
            Some("alice:1001:1\nroot:1001:1\n"),
            "another's range is not root's"
        );
        assert_eq!(with_root_id("alice:1:1", 7).as_deref(), Some("alice:1:1\nroot:7:1\n"));
        assert_eq!(with_root_id("", 7).as_deref(), Some("root:7:1\n"));
        assert_eq!(
            with_root_id("root:x:1\nroot:5\n", 5).as_deref(),
            Some("root:x:1\nroot:5\nroot:5:1\n"),
            "junk is kept, not read"
        );
    }

    #[test]
    fn the_files_get_the_entry_once_keeping_their_mode_and_taking_a_stale_lock() {
        let dir = tempfile::tempdir().unwrap();
        let subids = Subids {
            subuid: dir.path().join("subuid"),
            subgid: dir.path().join("subgid"),
        };
        fs::write(&subids.subuid, "alice:100000:65536\n").unwrap();
        fs::set_permissions(&subids.subuid, fs::Permissions::from_mode(0o640)).unwrap();
        // A lock left by a process that is gone (pid 0 is nobody's).
        fs::write(dir.path().join("subuid.lock"), "0\0").unwrap();
        for _ in 0..2 {
            subids.give_root_uid(1001).unwrap();
            subids.give_root_gid(1002).unwrap();
        }
        assert_eq!(
            fs::read_to_string(&subids.subuid).unwrap(),
            "alice:100000:65536\nroot:1001:1\n"
        );
        assert_eq!(fs::metadata(&subids.subuid).unwrap().mode() & 0o777, 0o640);
        assert_eq!(fs::read_to_string(&subids.subgid).unwrap(), "root:1002:1\n");
        assert_eq!(fs::metadata(&subids.subgid).unwrap().mode() & 0o777, 0o644);
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "no lock or temporary file left: {left:?}");
    }

    #[test]
    fn a_lock_held_by_a_live_process_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subuid");
        fs::write(sibling(&path, ".lock"), format!("{}\0", std::process::id())).unwrap();
        let lock = sibling(&path, ".lock");
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            fs::remove_file(lock).unwrap();
        });
        let started = Instant::now();
        give_root(&path, 5).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(250), "it did not wait");
        release.join().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "root:5:1\n");
    }
}

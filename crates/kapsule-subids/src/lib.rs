//! The host's subordinate ids (`/etc/subuid`, `/etc/subgid`) as unprivileged containers need
//! them: which host ids root may map into a user namespace.
//!
//! Two kinds of entry are Kapsule's to add:
//! - root's range (`root:1000000:1000000000`, as Incus's documentation and Debian's package give
//!   it), the ids every unprivileged container's own come from. Incus reads it when it starts
//!   and, finding none, runs privileged containers alone. `kapsule-init --subids` adds it before
//!   Incus starts (a drop-in of `incus.service`) where root has no range of at least 65536 ids,
//!   after every range already given out.
//! - one id (`root:<id>:1`): an unprivileged container maps its owner's uid and gid to themselves,
//!   and where the shadow tools are installed LXC maps ids through `newuidmap`/`newgidmap` even as
//!   root, which refuse a host id root was not given. The daemon adds the owner's before every
//!   start.
//!
//! Nothing else in the files changes: an entry is added at the end, once, under shadow's own lock
//! (`<file>.lock`, made by `link(2)` as `useradd` and `usermod` make it), and the file is
//! replaced in one step, keeping its owner and mode.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where root's range starts at the earliest.
pub const ROOT_RANGE_START: u32 = 1_000_000;
/// How many ids root's range holds.
pub const ROOT_RANGE_SIZE: u32 = 1_000_000_000;
/// The least a range must hold to be root's range: Incus leaves smaller ones out (POSIX's ids,
/// 0 to 65535, must fit).
pub const POSIX_IDS: u64 = 65536;

/// How long a lock another program holds is waited for.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Adds `root:<id>:1` to the file at `path` unless a range of root's covers `id`; says whether it
/// did. A missing file is made (mode 0644, as shadow makes it). Blocking.
pub fn give_root_id(path: &Path, id: u32) -> io::Result<bool> {
    edit(path, |text| with_root_id(text, id))
}

/// Adds a range for root (see the crate's documentation) to the file at `path` unless root has
/// one; the range added, if one was. Blocking.
pub fn give_root_range(path: &Path) -> io::Result<Option<(u32, u32)>> {
    let mut added = None;
    edit(path, |text| {
        let (new, range) = with_root_range(text)?;
        added = Some(range);
        Some(new)
    })?;
    Ok(added)
}

/// `text` with `root:<id>:1` added, or `None` when a range of root's covers `id` already. Lines
/// that are not ranges (comments, junk) are kept as they are.
pub fn with_root_id(text: &str, id: u32) -> Option<String> {
    if ranges(text).any(|(name, start, count)| name == "root" && (start..start + count).contains(&u64::from(id))) {
        return None;
    }
    Some(appended(text, &format!("root:{id}:1")))
}

/// `text` with a range for root added after every range given out (at [`ROOT_RANGE_START`] at
/// the earliest), and that range; `None` when root has a range of [`POSIX_IDS`] or more, or no
/// room is left.
pub fn with_root_range(text: &str) -> Option<(String, (u32, u32))> {
    if ranges(text).any(|(name, _, count)| name == "root" && count >= POSIX_IDS) {
        return None;
    }
    let after = ranges(text)
        .map(|(_, start, count)| start + count)
        .max()
        .unwrap_or(0)
        .max(u64::from(ROOT_RANGE_START));
    let count = (u64::from(u32::MAX) + 1)
        .saturating_sub(after)
        .min(u64::from(ROOT_RANGE_SIZE));
    if count < POSIX_IDS {
        return None;
    }
    let (start, count) = (u32::try_from(after).ok()?, u32::try_from(count).ok()?);
    Some((appended(text, &format!("root:{start}:{count}")), (start, count)))
}

/// The ranges in `text`: `(name, first id, how many)`.
fn ranges(text: &str) -> impl Iterator<Item = (&str, u64, u64)> {
    text.lines().filter_map(|line| {
        let mut fields = line.trim().split(':');
        let (Some(name), Some(start), Some(count), None) = (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return None;
        };
        Some((
            name,
            start.parse::<u32>().ok()?.into(),
            count.parse::<u32>().ok()?.into(),
        ))
    })
}

/// `text` with `line` at the end.
fn appended(text: &str, line: &str) -> String {
    let mut new = text.to_owned();
    if !new.is_empty() && !new.ends_with('\n') {
        new.push('\n');
    }
    new.push_str(line);
    new.push('\n');
    new
}

/// Replaces the file at `path` with what `change` makes of its text, unless that is `None`; says
/// whether it did. Checked first without the lock (most calls change nothing), then again under
/// it.
fn edit(path: &Path, mut change: impl FnMut(&str) -> Option<String>) -> io::Result<bool> {
    let fail = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("cannot {what} {}: {e}", path.display()));
    let read = |path: &Path| match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(fail("read", e)),
    };
    if let Some(text) = read(path)?
        && change(&text).is_none()
    {
        return Ok(false);
    }
    let _lock = ShadowLock::take(path).map_err(|e| fail("lock", e))?;
    let text = read(path)?;
    let Some(new) = change(text.as_deref().unwrap_or("")) else {
        return Ok(false);
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
    written.map(|()| true).map_err(|e| fail("write", e))
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
    fn roots_range_comes_after_every_range_given_out_once() {
        let users = "alice:100000:65536\nbob:165536:65536\n";
        assert_eq!(
            with_root_range(users),
            Some((format!("{users}root:1000000:1000000000\n"), (1_000_000, 1_000_000_000)))
        );
        // Ranges given out beyond the usual start push it further.
        let many = "carol:2000000:65536\n";
        assert_eq!(with_root_range(many).unwrap().1, (2_065_536, 1_000_000_000));
        // Root's single ids (the daemon's) are no range; a range of 65536 or more is.
        assert!(with_root_range("root:1001:1\nroot:1002:1\n").is_some());
        assert_eq!(with_root_range("root:300000:65536\n"), None);
        assert_eq!(with_root_range(&format!("{users}root:1000000:1000000000\n")), None);
        // Near the top of the id space, what is left, if it is enough.
        assert_eq!(
            with_root_range("x:4294000000:100\n").unwrap().1,
            (4_294_000_100, 967_196)
        );
        assert_eq!(with_root_range("x:4294967000:100\n"), None);
        assert_eq!(with_root_range("").unwrap().1, (1_000_000, 1_000_000_000));
    }

    #[test]
    fn the_file_gets_the_entry_once_keeping_its_mode_and_taking_a_stale_lock() {
        let dir = tempfile::tempdir().unwrap();
        let (subuid, subgid) = (dir.path().join("subuid"), dir.path().join("subgid"));
        fs::write(&subuid, "alice:100000:65536\n").unwrap();
        fs::set_permissions(&subuid, fs::Permissions::from_mode(0o640)).unwrap();
        // A lock left by a process that is gone (pid 0 is nobody's).
        fs::write(dir.path().join("subuid.lock"), "0\0").unwrap();
        assert!(give_root_id(&subuid, 1001).unwrap());
        assert!(!give_root_id(&subuid, 1001).unwrap());
        assert_eq!(give_root_range(&subuid).unwrap(), Some((1_000_000, 1_000_000_000)));
        assert_eq!(give_root_range(&subuid).unwrap(), None);
        assert_eq!(
            fs::read_to_string(&subuid).unwrap(),
            "alice:100000:65536\nroot:1001:1\nroot:1000000:1000000000\n"
        );
        assert_eq!(fs::metadata(&subuid).unwrap().mode() & 0o777, 0o640);
        assert!(give_root_id(&subgid, 1002).unwrap());
        assert_eq!(fs::read_to_string(&subgid).unwrap(), "root:1002:1\n");
        assert_eq!(fs::metadata(&subgid).unwrap().mode() & 0o777, 0o644);
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
        let lock = sibling(&path, ".lock");
        fs::write(&lock, format!("{}\0", std::process::id())).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            fs::remove_file(lock).unwrap();
        });
        let started = Instant::now();
        give_root_id(&path, 5).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(250), "it did not wait");
        release.join().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "root:5:1\n");
    }
}

//! Journal entries for work that spans several steps (a create, a delete, an image import), so a
//! daemon killed halfway leaves a record of what it did not finish.
//!
//! An entry is written into Incus with the first step (a container's config key written with the
//! instance itself, an image's property written with the upload) and cleared as the last one, so
//! at every point either the work is done or an entry says it is not. The entry names its writer:
//! the boot, pid and start time of the daemon process. Whoever reads an entry asks whether that
//! writer is still working on it ([`Entry::is_abandoned`]): a writer that is gone (killed,
//! crashed, the machine rebooted) abandoned it, and the daemon that finds it recovers it. Within
//! one process, the work under way holds the thing it works on ([`hold`]), so an entry of this
//! very process is abandoned only once nothing holds it (the work failed and could not undo
//! itself, e.g. with Incus gone meanwhile). Recoveries of different processes take turns
//! ([`recovery_turn`]), so an abandoned entry is acted on once.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use crate::host::procfs;

/// What an entry says is under way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Work {
    /// A container being made: abandoned, it is removed (its creation was reported failed).
    Create,
    /// A container being removed: abandoned, the removal is finished.
    Delete,
    /// A container being made anew from an image: abandoned, the reset is done again.
    Reset,
    /// An image being imported: abandoned, it is removed unless an alias names it already.
    Import,
    /// An image an alias was moved away from: abandoned, it is removed unless an alias names it.
    Release,
}

impl Work {
    fn word(self) -> &'static str {
        match self {
            Work::Create => "create",
            Work::Delete => "delete",
            Work::Reset => "reset",
            Work::Import => "import",
            Work::Release => "release",
        }
    }

    fn from_word(word: &str) -> Option<Work> {
        [Work::Create, Work::Delete, Work::Reset, Work::Import, Work::Release]
            .into_iter()
            .find(|w| w.word() == word)
    }
}

/// The process that wrote an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Writer {
    /// `/proc/sys/kernel/random/boot_id`: pids and start times are only comparable within a boot.
    boot: String,
    pid: u32,
    /// In clock ticks after boot: a pid used again by another process has another start time.
    start: u64,
}

/// This process, as entries name it.
static THIS_PROCESS: LazyLock<Writer> = LazyLock::new(|| {
    let pid = std::process::id();
    Writer {
        boot: boot_id(),
        pid,
        start: procfs::start_time(pid).unwrap_or(0),
    }
});

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// One journal entry: what is under way, and who is doing it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) work: Work,
    writer: Writer,
}

impl Entry {
    /// An entry for `work` by this process.
    pub(crate) fn new(work: Work) -> Entry {
        Entry {
            work,
            writer: THIS_PROCESS.clone(),
        }
    }

    /// `create pid=1234 start=5678 boot=<uuid>`: readable in `incus config show` too.
    pub(crate) fn value(&self) -> String {
        let Writer { boot, pid, start } = &self.writer;
        format!("{} pid={pid} start={start} boot={boot}", self.work.word())
    }

    /// The entry a value holds; `None` for anything this daemon did not write.
    pub(crate) fn parse(value: &str) -> Option<Entry> {
        let mut words = value.split(' ');
        let work = Work::from_word(words.next()?)?;
        let mut field = |name: &str| words.next()?.strip_prefix(name)?.strip_prefix('=').map(str::to_owned);
        let pid = field("pid")?.parse().ok()?;
        let start = field("start")?.parse().ok()?;
        let boot = field("boot")?;
        if words.next().is_some() {
            return None;
        }
        Some(Entry {
            work,
            writer: Writer { boot, pid, start },
        })
    }

    /// True when nobody will finish or undo this work: its writer is gone, or is this process
    /// and nothing here holds `key` any more.
    pub(crate) fn is_abandoned(&self, key: &str) -> bool {
        if self.writer == *THIS_PROCESS {
            return !is_held(key);
        }
        self.is_abandoned_held()
    }

    /// [`Entry::is_abandoned`] for whoever holds the entry's key now: the work of this process
    /// that wrote it has let go of it then, so only another process can still be at it.
    pub(crate) fn is_abandoned_held(&self) -> bool {
        let writer = &self.writer;
        if *writer == *THIS_PROCESS {
            return true;
        }
        if writer.boot != THIS_PROCESS.boot {
            return true;
        }
        procfs::start_time(writer.pid).ok() != Some(writer.start)
    }
}

type Holds = Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>;

/// What this process is working on, by key (`instance/<name>`, `image/<fingerprint>`). One map for
/// the process: an entry names the process, not one of the daemons a test may run in it.
static HOLDS: LazyLock<Holds> = LazyLock::new(Default::default);

/// This process works on `key` while this lives: its entries there are not abandoned.
#[derive(Debug)]
pub(crate) struct Hold {
    key: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

/// Takes `key`, waiting while other work of this process holds it.
pub(crate) async fn hold(key: &str) -> Hold {
    let lock = HOLDS
        .lock()
        .expect("journal holds")
        .entry(key.to_owned())
        .or_default()
        .clone();
    let guard = lock.clone().lock_owned().await;
    Hold {
        key: key.to_owned(),
        lock,
        guard: Some(guard),
    }
}

/// Whether work of this process holds `key` now.
pub(crate) fn is_held(key: &str) -> bool {
    HOLDS
        .lock()
        .expect("journal holds")
        .get(key)
        .is_some_and(|lock| lock.try_lock().is_err())
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut holds = HOLDS.lock().expect("journal holds");
        drop(self.guard.take());
        // The map's and ours: nobody else waits for it, so it goes.
        if Arc::strong_count(&self.lock) == 2 {
            holds.remove(&self.key);
        }
    }
}

/// Where the daemon processes of this machine take turns at recovery: one in production, but an
/// old one may still be ending while its successor starts, and the tests run many. Without turns
/// two daemons find the same abandoned entry and both act on it (two rebuilds of one container
/// at once fail in Incus).
const RECOVERY_LOCK: &str = "/run/lock/kapsule-recovery.lock";

/// This process's turn at recovery, held while it lives (an exclusive `flock`, released when the
/// file is closed, also by the kernel when the process dies).
#[derive(Debug)]
pub(crate) struct RecoveryTurn {
    _lock: Option<std::fs::File>,
}

/// Waits for this process's turn at recovery. Where the lock file cannot be had (no `/run/lock`),
/// recovery goes on without turns, as it would with one daemon.
pub(crate) async fn recovery_turn() -> RecoveryTurn {
    let taken = tokio::task::spawn_blocking(|| -> std::io::Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(RECOVERY_LOCK)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)?;
        Ok(file)
    })
    .await;
    match taken {
        Ok(Ok(file)) => RecoveryTurn { _lock: Some(file) },
        Ok(Err(e)) => {
            log::warn!("cannot take turns at recovery through {RECOVERY_LOCK}: {e}");
            RecoveryTurn { _lock: None }
        }
        Err(e) => {
            log::warn!("cannot take turns at recovery: {e}");
            RecoveryTurn { _lock: None }
        }
    }
}

/// The key of container `name`.
pub(crate) fn instance_key(name: &str) -> String {
    format!("instance/{name}")
}

/// The key of image `fingerprint`.
pub(crate) fn image_key(fingerprint: &str) -> String {
    format!("image/{fingerprint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recoveries_take_turns() {
        let first = recovery_turn().await;
        assert!(first._lock.is_some(), "{RECOVERY_LOCK} could not be locked");
        let second = tokio::spawn(recovery_turn());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!second.is_finished(), "a second turn while the first is held");
        drop(first);
        let second = tokio::time::timeout(std::time::Duration::from_secs(5), second)
            .await
            .expect("the second turn once the first ended")
            .unwrap();
        assert!(second._lock.is_some());
    }

    #[test]
    fn entries_read_back_and_refuse_what_they_did_not_write() {
        let entry = Entry::new(Work::Import);
        assert!(entry.value().starts_with("import pid="), "{}", entry.value());
        assert_eq!(Entry::parse(&entry.value()), Some(entry));
        for junk in [
            "",
            "create",
            "make pid=1 start=2 boot=x",
            "create pid=x start=2 boot=x",
            "create pid=1 start=2 boot=x extra",
            "create start=2 pid=1 boot=x",
        ] {
            assert_eq!(Entry::parse(junk), None, "{junk:?}");
        }
    }

    #[tokio::test]
    async fn an_entry_of_this_process_is_abandoned_once_nothing_holds_it() {
        let entry = Entry::new(Work::Create);
        let key = instance_key("journal-test");
        assert!(entry.is_abandoned(&key));
        let held = hold(&key).await;
        assert!(is_held(&key) && !entry.is_abandoned(&key));
        assert!(entry.is_abandoned_held(), "to the holder, it is");
        drop(held);
        assert!(entry.is_abandoned(&key));
        assert!(HOLDS.lock().unwrap().get(&key).is_none(), "nothing left behind");
    }

    #[test]
    fn a_dead_writer_or_another_boot_abandoned_its_entry() {
        let mut entry = Entry::new(Work::Delete);
        entry.writer.start += 1; // our pid, but another process's start time
        assert!(entry.is_abandoned("instance/x"));
        let mut entry = Entry::new(Work::Delete);
        entry.writer.boot = "another-boot".into();
        assert!(entry.is_abandoned("instance/x"));
        // A live process of this boot (init) is still at work, for a holder too.
        let init = Entry::parse(&format!(
            "delete pid=1 start={} boot={}",
            procfs::start_time(1).unwrap(),
            boot_id()
        ))
        .unwrap();
        assert!(!init.is_abandoned("instance/x") && !init.is_abandoned_held());
    }
}

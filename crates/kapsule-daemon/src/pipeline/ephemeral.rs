//! Ephemeral containers (`kapsule run`, or the create option `ephemeral`): the daemon removes one
//! once nobody is in it any more, whatever became of the client that made it (it exited, it was
//! killed, the daemon itself was restarted in between).
//!
//! A container is watched from the end of its create, from the start of a session in it, and,
//! for every ephemeral container there is, from the daemon's start. The watch counts the
//! container's sessions (`container::nsenter::count_sessions`: their helpers alive, whichever
//! daemon started them) twice a second. Once it has seen one and sees none, or when nobody came in
//! within the grace, or when the container stopped, the container is removed, journaled as a
//! delete is (a daemon killed meanwhile leaves the removal for the next one to finish). While a
//! watch runs the daemon does not exit idle: it has a removal to make.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kapsule_incus::models::ConfigMap;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::container::init::container_init;
use crate::container::meta::{self, PENDING_KEY, is_ephemeral, is_running};
use crate::container::nsenter::count_sessions;
use crate::host::journal::{self, Entry, Work};
use crate::pipeline::{Daemon, recovery};

/// How long a new ephemeral container waits for its first session: the client that made it
/// enters it at once, so a longer wait means that client is gone.
pub(crate) const FIRST_SESSION_GRACE: Duration = Duration::from_secs(60);

/// At the daemon's start, how long an ephemeral container nobody is in may wait for a client
/// that made it just before the restart and is about to enter.
pub(crate) const AT_START_GRACE: Duration = Duration::from_secs(10);

/// How often a watch looks.
const LOOK_EVERY: Duration = Duration::from_millis(500);

/// The watches asked for, taken by the task [`serve`] runs (which holds the daemon: the
/// pipelines only hold `&Daemon`).
#[derive(Debug)]
pub(crate) struct Watches {
    asks: UnboundedSender<(String, Duration)>,
    taken: Mutex<Option<UnboundedReceiver<(String, Duration)>>>,
    /// Containers a session was started in since their watch last looked.
    started: Mutex<HashSet<String>>,
}

impl Default for Watches {
    fn default() -> Watches {
        let (asks, taken) = unbounded_channel();
        Watches {
            asks,
            taken: Mutex::new(Some(taken)),
            started: Mutex::default(),
        }
    }
}

impl Watches {
    /// Watches ephemeral container `name` (once: a second ask while it is watched does
    /// nothing), removing it when nobody is in it, or when nobody came in within `grace`.
    pub(crate) fn watch(&self, name: &str, grace: Duration) {
        let _ = self.asks.send((name.to_owned(), grace));
    }

    /// A session was started in ephemeral container `name`: it is removed once nobody is in
    /// it, however short the session was.
    pub(crate) fn session_started(&self, name: &str) {
        self.started.lock().expect("started lock").insert(name.to_owned());
        self.watch(name, FIRST_SESSION_GRACE);
    }

    fn take_started(&self, name: &str) -> bool {
        self.started.lock().expect("started lock").remove(name)
    }
}

/// Runs the watches asked for, each in a task of its own, until the daemon ends.
pub(crate) fn serve(daemon: &Arc<Daemon>) {
    let Some(mut asks) = daemon.ephemeral.taken.lock().expect("watches lock").take() else {
        return;
    };
    let daemon = daemon.clone();
    tokio::spawn(async move {
        let watched = Arc::new(Mutex::new(HashSet::new()));
        while let Some((name, grace)) = asks.recv().await {
            if !watched.lock().expect("watched lock").insert(name.clone()) {
                continue;
            }
            let daemon = daemon.clone();
            let watched = watched.clone();
            tokio::spawn(async move {
                let _busy = daemon.containers.activity.hold();
                watch(&daemon, &name, grace).await;
                watched.lock().expect("watched lock").remove(&name);
            });
        }
    });
}

/// At the daemon's start: every ephemeral container is watched (one nobody is in goes after
/// [`AT_START_GRACE`]).
pub(crate) async fn at_start(daemon: &Daemon) {
    match daemon.containers.incus.list_instances().await {
        Ok(instances) => {
            for instance in instances.iter().filter(|i| meta::is_kapsule(i) && is_ephemeral(i)) {
                daemon.ephemeral.watch(&instance.name, AT_START_GRACE);
            }
        }
        Err(e) => log::warn!("cannot look for ephemeral containers: {e}"),
    }
}

/// What a look at a watched container found.
enum Found {
    /// Gone, or no longer ephemeral: nothing to do.
    Nothing,
    /// Not running: nobody can be in it.
    Stopped,
    /// Work under way on it (its create, a removal), or it could not be told: wait.
    Unknown,
    /// Running, with somebody in it or not.
    Running { occupied: bool },
}

async fn look(daemon: &Daemon, name: &str) -> Found {
    let instance = match daemon.containers.incus.get_instance(name).await {
        Ok(instance) => instance,
        Err(e) if e.is_not_found() => return Found::Nothing,
        Err(e) => {
            log::warn!("ephemeral container {name}: cannot look at it: {e}");
            return Found::Unknown;
        }
    };
    if !is_ephemeral(&instance) {
        return Found::Nothing;
    }
    if meta::pending(&instance).is_some() && !meta::is_abandoned(&instance) {
        return Found::Unknown;
    }
    if !is_running(&instance) {
        return Found::Stopped;
    }
    let occupied = match container_init(&daemon.containers, name).await {
        Ok((pid, _)) => count_sessions(name, pid).map(|n| n > 0),
        Err(e) => Err(std::io::Error::other(e.to_string())),
    };
    match occupied {
        Ok(occupied) => Found::Running { occupied },
        Err(e) => {
            // Kept until it stops: better left than removed under someone.
            log::warn!("ephemeral container {name}: cannot tell whether anybody is in it: {e}");
            Found::Unknown
        }
    }
}

async fn watch(daemon: &Daemon, name: &str, grace: Duration) {
    let deadline = tokio::time::Instant::now() + grace;
    let mut seen = false;
    loop {
        // A session that came and went between two looks counts too.
        seen |= daemon.ephemeral.take_started(name);
        match look(daemon, name).await {
            Found::Nothing => return,
            Found::Stopped => break,
            Found::Unknown => {}
            Found::Running { occupied: true } => seen = true,
            Found::Running { occupied: false } if seen || tokio::time::Instant::now() >= deadline => break,
            Found::Running { occupied: false } => {}
        }
        tokio::time::sleep(LOOK_EVERY).await;
    }
    log::info!("ephemeral container {name}: nobody is in it any more; removing it");
    if let Err(e) = remove(daemon, name).await {
        log::warn!("ephemeral container {name}: the removal failed (finished when it is next looked at): {e}");
    }
}

/// Removes the container, journaled as `DeleteContainer` does it.
async fn remove(daemon: &Daemon, name: &str) -> Result<(), kapsule_incus::Error> {
    let _hold = journal::hold(&journal::instance_key(name)).await;
    let entry = ConfigMap::from([(PENDING_KEY.to_owned(), Entry::new(Work::Delete).value())]);
    daemon.containers.incus.patch_instance_config(name, &entry).await?;
    recovery::remove_instance(daemon, name).await?;
    daemon.clients.containers_changed().await;
    Ok(())
}

//! The files of a running container, for the daemon's setup steps: through its init's root with
//! `kapsule-rootfs` (every path resolved inside the container, files replaced whole), not
//! through the Incus files API (a round trip through incusd per file, and a helper process left
//! in the container).

use std::os::fd::OwnedFd;
use std::sync::Arc;

use kapsule_rootfs::Root;

use crate::State;

/// The most of a container's file the daemon reads (its files are small configuration files).
pub(crate) const MAX_READ: u64 = 4 << 20;

/// A running container's root, opened once for a series of steps.
#[derive(Clone, Debug)]
pub(crate) struct ContainerFiles {
    name: String,
    /// The container's init, as it was when the root was opened.
    pid: u32,
    root: Arc<Root>,
}

impl ContainerFiles {
    /// Opens the root of container `name`, which must be running. The root is taken while the
    /// container's init is known to be running (its pidfd, opened before, is checked after), so
    /// it is that container's even if the pid is reused later.
    pub(crate) async fn open(state: &State, name: &str) -> Result<ContainerFiles, String> {
        let (pid, pidfd) = crate::enter::container_init(state, name)
            .await
            .map_err(|e| e.to_string())?;
        let root = tokio::task::spawn_blocking(move || {
            let root = Root::of_process(pid).map_err(|e| e.to_string())?;
            if exited(&pidfd) {
                return Err("it stopped".to_owned());
            }
            Ok(root)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        .map_err(|e| format!("Cannot reach the files of '{name}': {e}"))?;
        Ok(ContainerFiles {
            name: name.to_owned(),
            pid,
            root: Arc::new(root),
        })
    }

    /// The container's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The host's pid of the container's init.
    pub(crate) fn init_pid(&self) -> u32 {
        self.pid
    }

    /// Runs `work` on the root, off the async threads (file system calls block).
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Root) -> kapsule_rootfs::Result<T> + Send + 'static,
    ) -> kapsule_rootfs::Result<T> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || work(&root))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
}

/// True when the process `pidfd` refers to has exited (a pidfd becomes readable then).
fn exited(pidfd: &OwnedFd) -> bool {
    let mut fds = [rustix::event::PollFd::new(pidfd, rustix::event::PollFlags::IN)];
    let zero = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
    matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
}

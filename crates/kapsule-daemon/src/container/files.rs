//! The files of a running container, for the daemon's setup steps: through its init's root with
//! `kapsule-rootfs` (every path resolved inside the container, files replaced whole), not
//! through the Incus files API (a round trip through incusd per file, and a helper process left
//! in the container).

use std::sync::Arc;

use kapsule_rootfs::{Meta, Root};

use crate::container::Containers;
use crate::container::error::Error;
use crate::host::procfs::exited;
use crate::operation::Failure;

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
    pub(crate) async fn open(containers: &Containers, name: &str) -> Result<ContainerFiles, Error> {
        let (pid, pidfd) = crate::container::init::container_init(containers, name)
            .await
            .map_err(Error::Init)?;
        let root = tokio::task::spawn_blocking(move || {
            let root = Root::of_process(pid).map_err(|e| e.to_string())?;
            if exited(&pidfd) {
                return Err("it stopped".to_owned());
            }
            Ok(root)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        .map_err(|reason| Error::Root {
            name: name.to_owned(),
            reason,
        })?;
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
    pub(crate) async fn with_root<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Root) -> kapsule_rootfs::Result<T> + Send + 'static,
    ) -> kapsule_rootfs::Result<T> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || work(&root))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
}

/// What [`edit_file`] does when the image lacks the file.
#[derive(Clone, Copy, Debug)]
pub(crate) enum IfMissing {
    Fail,
    Skip,
    /// Start from an empty file with this owner and mode.
    Create(Meta),
}

/// Rewrites a text file of the container with `edit` (`None`: leave it), keeping its owner and
/// mode; the new file replaces the old one whole. Used for the user database, and for
/// `/etc/hosts` at creation.
pub(crate) async fn edit_file(
    files: &ContainerFiles,
    path: &str,
    if_missing: IfMissing,
    edit: impl Fn(&str) -> Option<String>,
) -> Result<(), Failure> {
    let name = files.name();
    let owned = path.to_owned();
    let (text, meta) = match files.with_root(move |root| root.read(&owned, MAX_READ)).await {
        Ok(Some(file)) => (String::from_utf8_lossy(&file.data).into_owned(), file.meta),
        Ok(None) => match if_missing {
            IfMissing::Skip => return Ok(()),
            IfMissing::Create(meta) => (String::new(), meta),
            IfMissing::Fail => {
                return Err(Failure::Failed(format!(
                    "Cannot read {path} in {name}: it does not exist"
                )));
            }
        },
        Err(e) => return Err(Failure::Failed(format!("Cannot read {path} in {name}: {}", e.reason()))),
    };
    if let Some(new) = edit(&text) {
        let owned = path.to_owned();
        files
            .with_root(move |root| root.write(&owned, new.as_bytes(), meta))
            .await
            .map_err(|e| Failure::Failed(format!("Cannot write {path} in {name}: {}", e.reason())))?;
    }
    Ok(())
}

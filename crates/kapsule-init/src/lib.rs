//! What a fresh system needs before its first Kapsule container, done once at first boot by
//! `kapsule-init.service` (and safe to run again by hand):
//!
//! 1. wait for Incus (its socket starts it);
//! 2. create the storage pool containers' disks live in, if there is none: `btrfs` when Incus's
//!    storage is on btrfs (snapshots and copies are cheap there), else `dir`;
//! 3. import the images bundled in the sysext (`/usr/share/kapsule/images/<alias>/`, the
//!    layout `ImportImage` reads), each under its directory's name, unless that alias exists.
//!
//! Nothing that exists is changed: a pool with that name is kept whatever its driver, an alias
//! is kept whatever it names, and containers are never touched. The stamp file is written only
//! when every step succeeded, so a failed first boot is retried on the next one.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kapsule_dbus::image::{METADATA_FILES, ROOTFS_FILES};
use kapsule_incus::models::StoragePoolsPost;
use kapsule_incus::{Client, UploadFile};

/// Where the stamp goes once the system is initialized.
pub const STAMP: &str = "/var/lib/kapsule/initialized";
/// The images the sysext bundles, one directory each.
pub const IMAGES: &str = "/usr/share/kapsule/images";
/// The pool Kapsule's containers use (see the daemon's create).
pub const POOL: &str = "default";

/// How long an image upload and unpacking may take.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// What to initialize, and where.
#[derive(Clone, Debug)]
pub struct Options {
    /// The stamp file.
    pub stamp: PathBuf,
    /// The bundled images' directory.
    pub images: PathBuf,
    /// The storage pool's name.
    pub pool: String,
    /// Where a new pool keeps its data; default: Incus's own place for it
    /// (`<incus dir>/storage-pools/<pool>`). Its file system decides the driver.
    pub storage: Option<PathBuf>,
    /// How long to wait for Incus.
    pub wait: Duration,
    /// Run even when the stamp says it was done.
    pub force: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            stamp: STAMP.into(),
            images: IMAGES.into(),
            pool: POOL.into(),
            storage: None,
            wait: Duration::from_secs(300),
            force: false,
        }
    }
}

/// How a run ended well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The stamp was there: nothing was done.
    AlreadyDone,
    /// Every step succeeded and the stamp is written.
    Initialized,
}

/// Why a run failed; no stamp is written.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("Incus did not become ready within {} s: {last}", .waited.as_secs())]
    IncusNotReady {
        waited: Duration,
        last: kapsule_incus::Error,
    },
    #[error("cannot create the storage pool '{pool}': {source}")]
    Pool { pool: String, source: kapsule_incus::Error },
    #[error("cannot look at {}: {source}", .path.display())]
    Storage { path: PathBuf, source: io::Error },
    #[error("cannot read the bundled images in {}: {source}", .dir.display())]
    ImagesDir { dir: PathBuf, source: io::Error },
    #[error("the bundled image {} is unusable: {why}", .dir.display())]
    BadImage { dir: PathBuf, why: String },
    #[error("cannot import the bundled image '{alias}': {source}")]
    Import {
        alias: String,
        source: kapsule_incus::Error,
    },
    #[error("cannot write the stamp {}: {source}", .path.display())]
    Stamp { path: PathBuf, source: io::Error },
}

/// Initializes the system Incus serves on `incus`'s socket.
pub async fn run(incus: &Client, options: &Options) -> Result<Outcome, InitError> {
    if !options.force && options.stamp.exists() {
        log::info!(
            "Already initialized ({} exists); kapsule-init --force runs it again",
            options.stamp.display()
        );
        return Ok(Outcome::AlreadyDone);
    }
    wait_for_incus(incus, options.wait).await?;
    ensure_pool(incus, options).await?;
    import_bundled_images(incus, &options.images).await?;
    write_stamp(&options.stamp)?;
    log::info!("Kapsule is initialized (stamp: {})", options.stamp.display());
    Ok(Outcome::Initialized)
}

async fn wait_for_incus(incus: &Client, wait: Duration) -> Result<(), InitError> {
    let started = Instant::now();
    let mut said = false;
    loop {
        match incus.ready().await {
            Ok(()) => {
                log::info!("Incus is ready");
                return Ok(());
            }
            Err(last) if started.elapsed() >= wait => {
                return Err(InitError::IncusNotReady {
                    waited: started.elapsed(),
                    last,
                });
            }
            Err(e) => {
                if !said {
                    log::info!("Waiting for Incus ({e})");
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Creates the pool unless one with its name exists (which is kept as it is).
async fn ensure_pool(incus: &Client, options: &Options) -> Result<(), InitError> {
    let pool = &options.pool;
    let failed = |source| InitError::Pool {
        pool: pool.clone(),
        source,
    };
    match incus.get_storage_pool(pool).await {
        Ok(existing) => {
            log::info!(
                "Storage pool '{pool}' exists (driver {}); left as it is",
                existing.driver
            );
            return Ok(());
        }
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(failed(e)),
    }
    let incus_dir = incus.socket().parent().unwrap_or(Path::new("/var/lib/incus"));
    let data = options
        .storage
        .clone()
        .unwrap_or_else(|| incus_dir.join("storage-pools").join(pool));
    let driver = driver_for(&data)?;
    let mut config = kapsule_incus::models::ConfigMap::new();
    match (driver, &options.storage) {
        // Incus's own place: Incus makes the directory (and refuses one that exists already).
        ("dir", None) => {}
        // Elsewhere, the dir driver takes a directory that exists.
        ("dir", Some(_)) => {
            std::fs::create_dir_all(&data).map_err(|source| InitError::Storage {
                path: data.clone(),
                source,
            })?;
            config.insert("source".into(), data.to_string_lossy().into_owned());
        }
        // Always given to btrfs: without it Incus would make a loop file instead of using the
        // btrfs that is there, and with it, it makes a subvolume at that path (as the original
        // daemon did).
        _ => {
            config.insert("source".into(), data.to_string_lossy().into_owned());
        }
    }
    let request = StoragePoolsPost {
        name: pool.clone(),
        driver: driver.into(),
        config,
        description: "Kapsule containers' disks (made by kapsule-init)".into(),
    };
    match incus.create_storage_pool(&request).await {
        Ok(()) => {
            log::info!("Created storage pool '{pool}' (driver {driver}) at {}", data.display());
            Ok(())
        }
        // Made meanwhile by someone else: that one is kept, as above.
        Err(kapsule_incus::Error::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(failed(e)),
    }
}

/// `btrfs` when `path` (or, while it does not exist, the directory it would be made in) is on
/// btrfs; `dir` otherwise.
pub fn driver_for(path: &Path) -> Result<&'static str, InitError> {
    let mut existing = path;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    let fs = nix::sys::statfs::statfs(existing).map_err(|e| InitError::Storage {
        path: existing.to_owned(),
        source: e.into(),
    })?;
    Ok(if fs.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC {
        "btrfs"
    } else {
        "dir"
    })
}

/// Imports each bundled image whose alias is free. No directory: nothing bundled.
async fn import_bundled_images(incus: &Client, dir: &Path) -> Result<(), InitError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            log::info!("No bundled images ({} does not exist)", dir.display());
            return Ok(());
        }
        Err(source) => {
            return Err(InitError::ImagesDir {
                dir: dir.to_owned(),
                source,
            });
        }
    };
    let mut images = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| InitError::ImagesDir {
            dir: dir.to_owned(),
            source,
        })?;
        if entry.path().is_dir() {
            images.push(entry.path());
        }
    }
    images.sort();
    for image in images {
        import_one(incus, &image).await?;
    }
    Ok(())
}

async fn import_one(incus: &Client, dir: &Path) -> Result<(), InitError> {
    let bad = |why: String| InitError::BadImage {
        dir: dir.to_owned(),
        why,
    };
    let alias = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| bad("its name is not UTF-8".into()))?
        .to_owned();
    kapsule_dbus::image::check_local_alias(&alias).map_err(|e| bad(format!("not an image alias: {e}")))?;
    let failed = |source| InitError::Import {
        alias: alias.clone(),
        source,
    };
    match incus.get_image_alias(&alias).await {
        Ok(existing) => {
            log::info!("Image '{alias}' exists ({}); left as it is", short(&existing.target));
            return Ok(());
        }
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(failed(e)),
    }
    let metadata = open_first(dir, METADATA_FILES).await.map_err(bad)?;
    let rootfs = open_first(dir, ROOTFS_FILES).await.map_err(bad)?;
    log::info!(
        "Importing the bundled image '{alias}' ({} and {})",
        metadata.name(),
        rootfs.name()
    );
    let upload = incus.import_image(metadata, rootfs, None).await.map_err(failed)?;
    if let Err(e) = incus.wait_operation(&upload.operation.id, Some(IMPORT_TIMEOUT)).await {
        // Incus refuses an image it has already: then that one gets the alias.
        if incus.get_image(&upload.fingerprint).await.is_err() {
            return Err(failed(e));
        }
    }
    incus
        .create_image_alias(&alias, &upload.fingerprint, "Bundled with Kapsule")
        .await
        .map_err(failed)?;
    log::info!("Imported image '{alias}' ({})", short(&upload.fingerprint));
    Ok(())
}

/// The first of `names` in `dir`, opened.
async fn open_first(dir: &Path, names: &[&str]) -> Result<UploadFile, String> {
    for name in names {
        match std::fs::File::open(dir.join(name)) {
            Ok(file) => return UploadFile::new(file, *name).await.map_err(|e| e.to_string()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot open {name}: {e}")),
        }
    }
    Err(format!("it has none of {}", names.join(", ")))
}

/// Writes the stamp whole or not at all (a new file renamed into place).
fn write_stamp(path: &Path) -> Result<(), InitError> {
    let failed = |source| InitError::Stamp {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    let partial = path.with_extension("partial");
    let text = format!("kapsule-init {}\n", env!("CARGO_PKG_VERSION"));
    std::fs::write(&partial, text).map_err(failed)?;
    std::fs::rename(&partial, path).map_err(failed)
}

fn short(fingerprint: &str) -> &str {
    fingerprint.get(..12).unwrap_or(fingerprint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_not_made_yet_is_judged_by_where_it_would_be_made() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        assert_eq!(driver_for(&deep).unwrap(), driver_for(dir.path()).unwrap());
    }

    #[test]
    fn the_stamp_is_written_whole_and_says_who_wrote_it() {
        let dir = tempfile::tempdir().unwrap();
        let stamp = dir.path().join("state/initialized");
        write_stamp(&stamp).unwrap();
        assert_eq!(
            std::fs::read_to_string(&stamp).unwrap(),
            format!("kapsule-init {}\n", env!("CARGO_PKG_VERSION"))
        );
        assert!(!stamp.with_extension("partial").exists());
    }
}

//! `kapsule-init` against the real incusd: the pool and the bundled image on the first run, the
//! stamp only when everything succeeded, nothing on the second run, nothing changed by
//! `--force`, and a clear failure (and no stamp) when a step fails. Its own pool name, storage
//! directory, images and stamp, so the machine's pool `default` is never touched; the booted
//! system test (`booted.rs`) runs it with the defaults, as kapsule-init.service does.

use std::path::Path;
use std::process::{Command, Output};

use kapsule_integration_tests::{ImageGuard, env, incus_state, tiny_image_files, unique_name, workspace_binary};

/// Deletes the storage pool when dropped.
struct PoolGuard(String);

impl Drop for PoolGuard {
    fn drop(&mut self) {
        let _ = Command::new("incus").args(["storage", "delete", &self.0]).output();
    }
}

fn init(args: &[&str], stamp: &Path, images: &Path, pool: &str, storage: &Path) -> Output {
    Command::new(workspace_binary("kapsule-init"))
        .arg("--stamp")
        .arg(stamp)
        .arg("--images-dir")
        .arg(images)
        .args(["--pool", pool])
        .arg("--storage")
        .arg(storage)
        .args(args)
        .output()
        .unwrap()
}

fn said(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_boot_makes_the_pool_and_imports_the_bundled_image_once() {
    let env = env().await;
    let dir = tempfile::tempdir().unwrap();
    let stamp = dir.path().join("state/initialized");
    let storage = dir.path().join("pool");
    let images = dir.path().join("images");
    let alias = unique_name("bundled");
    tiny_image_files(&images.join(&alias));
    let pool = unique_name("pool");
    let _pool = PoolGuard(pool.clone());
    let _image = ImageGuard(alias.clone());

    let first = init(&[], &stamp, &images, &pool, &storage);
    let text = said(&first);
    assert!(first.status.success(), "{text}");
    assert!(text.contains("Incus is ready"), "{text}");
    assert!(
        text.contains(&format!(
            "Created storage pool '{pool}' (driver dir) at {}",
            storage.display()
        )),
        "{text}"
    );
    assert!(text.contains(&format!("Imported image '{alias}'")), "{text}");
    assert!(text.contains("Kapsule is initialized"), "{text}");
    let made = env.incus.get_storage_pool(&pool).await.unwrap();
    assert_eq!(made.driver, "dir", "this machine's /tmp is not btrfs");
    assert_eq!(made.config.get("source").map(String::as_str), storage.to_str());
    let target = env.incus.get_image_alias(&alias).await.unwrap().target;
    assert!(env.incus.get_image(&target).await.is_ok());
    assert_eq!(
        std::fs::read_to_string(&stamp).unwrap(),
        format!("kapsule-init {}\n", env!("CARGO_PKG_VERSION"))
    );

    // The second boot: the stamp says done, nothing is asked of Incus.
    let names = [pool.as_str(), alias.as_str()];
    let before = incus_state(&env.incus, &names).await;
    let second = init(&[], &stamp, &images, &pool, &storage);
    assert!(second.status.success(), "{}", said(&second));
    assert!(said(&second).contains("Already initialized"), "{}", said(&second));
    assert!(!said(&second).contains("Incus is ready"), "{}", said(&second));

    // By hand with --force: everything is looked at again and kept as it is.
    let forced = init(&["--force"], &stamp, &images, &pool, &storage);
    let text = said(&forced);
    assert!(forced.status.success(), "{text}");
    assert!(
        text.contains(&format!("Storage pool '{pool}' exists (driver dir); left as it is")),
        "{text}"
    );
    assert!(text.contains(&format!("Image '{alias}' exists")), "{text}");
    assert_eq!(incus_state(&env.incus, &names).await, before, "--force changed Incus");
    assert_eq!(env.incus.get_image_alias(&alias).await.unwrap().target, target);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_first_boot_leaves_no_stamp_and_says_why() {
    let env = env().await;
    let dir = tempfile::tempdir().unwrap();
    let stamp = dir.path().join("initialized");
    let storage = dir.path().join("pool");
    let pool = unique_name("pool");
    let _pool = PoolGuard(pool.clone());

    // Incus does not answer: a bounded wait, then a clear error.
    let out = Command::new(workspace_binary("kapsule-init"))
        .arg("--stamp")
        .arg(&stamp)
        .args(["--wait", "1"])
        .env("INCUS_SOCKET", dir.path().join("no-incus.socket"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = said(&out);
    assert!(text.contains("Incus did not become ready within 1 s"), "{text}");
    assert!(text.contains("nothing is marked done"), "{text}");
    assert!(!stamp.exists());

    // A bundled image without its files.
    let images = dir.path().join("images");
    let alias = unique_name("broken");
    std::fs::create_dir_all(images.join(&alias)).unwrap();
    let _image = ImageGuard(alias.clone());
    let out = init(&[], &stamp, &images, &pool, &storage);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        said(&out).contains("is unusable: it has none of incus.tar.xz, metadata.tar.xz"),
        "{}",
        said(&out)
    );
    assert!(!stamp.exists(), "a failed run wrote the stamp");

    // A bundled image Incus cannot unpack.
    std::fs::write(images.join(&alias).join("metadata.tar.xz"), "not a tarball").unwrap();
    std::fs::write(images.join(&alias).join("rootfs.tar.xz"), "not a tarball").unwrap();
    let out = init(&[], &stamp, &images, &pool, &storage);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        said(&out).contains(&format!("cannot import the bundled image '{alias}'")),
        "{}",
        said(&out)
    );
    assert!(!stamp.exists(), "a failed run wrote the stamp");
    assert!(env.incus.get_image_alias(&alias).await.is_err());

    // Fixed (the next OS image): the next boot completes it.
    std::fs::remove_dir_all(images.join(&alias)).unwrap();
    tiny_image_files(&images.join(&alias));
    let out = init(&[], &stamp, &images, &pool, &storage);
    assert!(out.status.success(), "{}", said(&out));
    assert!(stamp.exists());
    assert!(env.incus.get_image_alias(&alias).await.is_ok());
}

/// A btrfs file system in a loop file, mounted on a temporary directory while it lives (as
/// KDE Linux's `/var` is btrfs).
struct BtrfsMount {
    dir: tempfile::TempDir,
}

impl BtrfsMount {
    fn new() -> BtrfsMount {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("btrfs.img");
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).unwrap();
        let run = |program: &str, args: &[&std::ffi::OsStr]| {
            let out = Command::new(program).args(args).output().unwrap();
            assert!(out.status.success(), "{program}: {}", said(&out));
        };
        // 256 MiB, sparse: mkfs.btrfs's smallest comfortable size.
        std::fs::File::create(&image).unwrap().set_len(256 << 20).unwrap();
        run("mkfs.btrfs", &["-q".as_ref(), image.as_os_str()]);
        run(
            "mount",
            &[
                "-o".as_ref(),
                "loop".as_ref(),
                image.as_os_str(),
                mountpoint.as_os_str(),
            ],
        );
        BtrfsMount { dir }
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for BtrfsMount {
    fn drop(&mut self) {
        // The loop device goes with the mount (mount -o loop sets autoclear).
        let _ = Command::new("umount").arg(self.path()).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_btrfs_the_pool_is_btrfs_and_containers_are_subvolumes_of_it() {
    let env = env().await;
    let btrfs = BtrfsMount::new();
    let dir = tempfile::tempdir().unwrap();
    let stamp = dir.path().join("initialized");
    let images = dir.path().join("images");
    let storage = btrfs.path().join("kapsule");
    let pool = unique_name("pool");
    let out = init(&[], &stamp, &images, &pool, &storage);
    let _pool = PoolGuard(pool.clone());
    let text = said(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "Created storage pool '{pool}' (driver btrfs) at {}",
            storage.display()
        )),
        "{text}"
    );
    let made = env.incus.get_storage_pool(&pool).await.unwrap();
    assert_eq!(made.driver, "btrfs");
    assert_eq!(made.config.get("source").map(String::as_str), storage.to_str());
    // Incus made its pool a subvolume of the file system that was there: no loop file of its own.
    let out = Command::new("btrfs")
        .args(["subvolume", "show"])
        .arg(&storage)
        .output()
        .unwrap();
    assert!(out.status.success(), "not a subvolume: {}", said(&out));
    assert!(!Path::new(&format!("/var/lib/incus/disks/{pool}.img")).exists());
}

/// `kapsule-init --subids`, as Incus's drop-in runs it before incusd starts: root gets a range
/// after the users' where it has none, once; nothing else in the files changes, Incus is not
/// asked anything, no stamp is written.
#[test]
fn before_incus_starts_root_gets_a_range_of_subordinate_ids_once() {
    let dir = tempfile::tempdir().unwrap();
    let users = "alice:100000:65536\nbob:165536:65536\nroot:1001:1\n";
    for file in ["subuid", "subgid"] {
        std::fs::write(dir.path().join(file), users).unwrap();
    }
    let stamp = dir.path().join("stamp");
    let run = || {
        Command::new(workspace_binary("kapsule-init"))
            .arg("--subids")
            .arg("--subid-dir")
            .arg(dir.path())
            .arg("--stamp")
            .arg(&stamp)
            // An Incus that is not there: --subids never asks it.
            .env("INCUS_SOCKET", dir.path().join("no-incus.socket"))
            .output()
            .unwrap()
    };
    for _ in 0..2 {
        let out = run();
        assert!(out.status.success(), "{}", said(&out));
        for file in ["subuid", "subgid"] {
            assert_eq!(
                std::fs::read_to_string(dir.path().join(file)).unwrap(),
                format!("{users}root:1000000:1000000000\n"),
                "{file}"
            );
        }
    }
    assert!(!stamp.exists(), "--subids is not the first boot");
}

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use super::*;

/// A container root in a temporary directory, beside a directory standing for the host.
struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
    host: PathBuf,
}

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let host = dir.path().join("host");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("run")).unwrap();
        fs::create_dir_all(&host).unwrap();
        fs::write(host.join("secret"), "the host's").unwrap();
        Tree { _dir: dir, root, host }
    }

    fn open(&self) -> Root {
        Root::at(&self.root).unwrap()
    }

    fn at(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }
}

fn me(mode: u32) -> Meta {
    Meta::new(
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
        mode,
    )
}

/// The names in directory `path`, sorted.
fn names(root: &Root, path: &str) -> Vec<String> {
    let mut names = root.list(path).unwrap().unwrap();
    names.sort();
    names
}

fn text(root: &Root, path: &str) -> Option<String> {
    root.read(path, 1 << 20)
        .unwrap()
        .map(|c| String::from_utf8(c.data).unwrap())
}

#[test]
fn symlinks_resolve_inside_the_root_never_on_the_host() {
    let tree = Tree::new();
    fs::write(tree.at("/etc/real"), "inside").unwrap();
    symlink("/etc/real", tree.at("/etc/absolute")).unwrap();
    symlink("../../../../../../etc/real", tree.at("/etc/climbing")).unwrap();
    // The host's path to a host file: inside the container it names nothing.
    symlink(tree.host.join("secret"), tree.at("/etc/to-host")).unwrap();
    let root = tree.open();
    assert_eq!(text(&root, "/etc/absolute").as_deref(), Some("inside"));
    assert_eq!(text(&root, "/etc/climbing").as_deref(), Some("inside"));
    assert_eq!(text(&root, "/../../etc/real").as_deref(), Some("inside"));
    assert_eq!(text(&root, "/etc/to-host"), None);

    // A directory linked to the host's: writing below it reaches nothing of the host.
    symlink(&tree.host, tree.at("/evil")).unwrap();
    let refused = root.write("/evil/secret", b"overwritten", me(0o644)).unwrap_err();
    assert_eq!(refused.kind(), io::ErrorKind::NotFound, "{refused}");
    assert_eq!(fs::read_to_string(tree.host.join("secret")).unwrap(), "the host's");
    assert!(!root.remove("/evil/secret").unwrap());
    assert!(tree.host.join("secret").exists());

    // A directory linked inside the container is followed, as the container would.
    fs::create_dir(tree.at("/real-etc")).unwrap();
    fs::remove_dir_all(tree.at("/etc")).unwrap();
    symlink("/real-etc", tree.at("/etc")).unwrap();
    root.write("/etc/passwd", b"root:x:0:0::/root:/bin/sh\n", me(0o644))
        .unwrap();
    assert_eq!(
        fs::read_to_string(tree.at("/real-etc/passwd")).unwrap(),
        "root:x:0:0::/root:/bin/sh\n"
    );
}

#[test]
fn a_socket_in_the_root_is_reached_through_its_descriptor() {
    let tree = Tree::new();
    let listener = std::os::unix::net::UnixListener::bind(tree.at("/run/private")).unwrap();
    symlink("/run/private", tree.at("/etc/linked")).unwrap();
    let root = tree.open();
    let fd = root.open_path("/etc/linked").unwrap().unwrap();
    let via = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    std::os::unix::net::UnixStream::connect(via).unwrap();
    listener.accept().unwrap();
    assert_eq!(root.metadata("/run/private").unwrap().unwrap().kind, Kind::Other);
    assert!(root.open_path("/run/none").unwrap().is_none());
}

#[test]
fn the_walk_can_be_kept_on_the_roots_own_file_system() {
    // /proc is a mount of its own below "/": reached directly or through a symlink (/etc/mtab,
    // a link into /proc on Debian), it is refused on the root's file system, and found without
    // that restriction.
    let root = Root::at(Path::new("/")).unwrap();
    let mtab = fs::read_link("/etc/mtab").expect("/etc/mtab is a symlink on this system");
    assert!(
        mtab.to_string_lossy().contains("proc/"),
        "/etc/mtab -> {}",
        mtab.display()
    );
    for path in ["/proc/self/status", "/etc/mtab"] {
        let refused = root.open_path_on_root_fs(path).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::CrossesDevices, "{path}: {refused}");
        assert!(root.open_path(path).unwrap().is_some(), "{path}");
    }
    assert!(root.open_path_on_root_fs("/etc").unwrap().is_some());
    assert!(root.open_path_on_root_fs("/etc/no-such-file").unwrap().is_none());
}

#[test]
fn what_is_read_listed_or_written_never_lies_on_another_mount() {
    // A container's /etc/sudoers.d pointed at /.kapsule/host/... had the daemon write a host
    // file: here the mounts are the host's own (/proc, /dev/shm), reached directly or through a
    // symlink, and each use fails with CrossesDevices, writing nothing.
    let root = Root::at(Path::new("/")).unwrap();
    let crosses = |what: &str, result: crate::Result<()>| {
        let error = result.expect_err(what);
        assert_eq!(error.kind(), io::ErrorKind::CrossesDevices, "{what}: {error}");
    };
    crosses("read /etc/mtab", root.read("/etc/mtab", 1 << 20).map(drop));
    crosses(
        "read /proc/self/status",
        root.read("/proc/self/status", 1 << 20).map(drop),
    );
    crosses("list /proc", root.list("/proc").map(drop));
    let shm = format!("/dev/shm/kt-rootfs-{}", std::process::id());
    crosses("write", root.write(&shm, b"x", me(0o644)));
    crosses("make a directory", root.ensure_dir(&shm, me(0o755)).map(drop));
    crosses("link", root.symlink(&shm, "/x"));
    assert!(!Path::new(&shm).exists(), "{shm} was made");
    // The same file read where no mount is crossed.
    assert!(root.read("/etc/hostname", 1 << 20).unwrap().is_some());
}

#[test]
fn magic_links_are_refused() {
    let root = Root::at(Path::new("/")).unwrap();
    assert!(root.read("/proc/self/root/etc/hostname", 4096).is_err());
    assert!(root.metadata("/proc/self/cwd").is_err());
}

#[test]
fn a_write_replaces_a_symlink_and_never_writes_through_it() {
    let tree = Tree::new();
    fs::write(tree.at("/run/stub-resolv.conf"), "nameserver 127.0.0.53\n").unwrap();
    symlink("../run/stub-resolv.conf", tree.at("/etc/resolv.conf")).unwrap();
    let root = tree.open();
    assert_eq!(
        root.symlink_metadata("/etc/resolv.conf").unwrap().unwrap().kind,
        Kind::Symlink
    );
    assert_eq!(root.metadata("/etc/resolv.conf").unwrap().unwrap().kind, Kind::File);

    root.write("/etc/resolv.conf", b"nameserver 192.0.2.1\n", me(0o644))
        .unwrap();
    assert_eq!(
        fs::read_to_string(tree.at("/run/stub-resolv.conf")).unwrap(),
        "nameserver 127.0.0.53\n",
        "the link's target is left"
    );
    let written = fs::symlink_metadata(tree.at("/etc/resolv.conf")).unwrap();
    assert!(written.file_type().is_file());
    assert_eq!(
        text(&root, "/etc/resolv.conf").as_deref(),
        Some("nameserver 192.0.2.1\n")
    );
}

#[test]
fn a_write_is_whole_owned_and_moded_and_leaves_nothing_beside() {
    let tree = Tree::new();
    fs::write(tree.at("/etc/shadow"), "old\n").unwrap();
    let root = tree.open();
    let before = fs::metadata(tree.at("/etc/shadow")).unwrap().ino();
    root.write("/etc/shadow", b"new\n", me(0o640)).unwrap();
    let after = fs::metadata(tree.at("/etc/shadow")).unwrap();
    assert_ne!(after.ino(), before, "a new file took the old one's place");
    assert_eq!(after.permissions().mode() & 0o7777, 0o640);
    assert_eq!(after.uid(), me(0).uid);
    let read = root.read("/etc/shadow", 100).unwrap().unwrap();
    assert_eq!(read.data, b"new\n");
    assert_eq!(read.meta, me(0o640));
    assert_eq!(names(&root, "/etc"), ["shadow"], "no temporary file is left");

    // A directory's absence is an error that makes nothing.
    let missing = root.write("/nowhere/file", b"x", me(0o644)).unwrap_err();
    assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    assert!(
        missing.to_string().starts_with("cannot write /nowhere/file: "),
        "{missing}"
    );
    assert!(!tree.at("/nowhere").exists());
    // So is a directory where the file would go.
    fs::create_dir(tree.at("/etc/sudoers.d")).unwrap();
    assert!(root.write("/etc/sudoers.d", b"x", me(0o440)).is_err());
    assert!(tree.at("/etc/sudoers.d").is_dir());
    assert_eq!(names(&root, "/etc"), ["shadow", "sudoers.d"]);
}

#[test]
fn reading_refuses_what_is_not_a_small_regular_file_without_blocking() {
    let tree = Tree::new();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        tree.at("/etc/fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    fs::write(tree.at("/etc/big"), "12345").unwrap();
    let root = tree.open();
    let fifo = root.read("/etc/fifo", 100).unwrap_err();
    assert_eq!(fifo.kind(), io::ErrorKind::InvalidInput, "{fifo}");
    assert_eq!(root.metadata("/etc/fifo").unwrap().unwrap().kind, Kind::Other);
    let big = root.read("/etc/big", 4).unwrap_err();
    assert_eq!(big.kind(), io::ErrorKind::FileTooLarge, "{big}");
    assert_eq!(root.read("/etc/big", 5).unwrap().unwrap().data, b"12345");
    assert_eq!(root.read("/etc/missing", 5).unwrap(), None);
    assert_eq!(root.read("/missing/dir/file", 5).unwrap(), None);
}

#[test]
fn directories_are_made_once_and_never_over_a_file() {
    let tree = Tree::new();
    let root = tree.open();
    assert!(root.ensure_dir("/etc/sudoers.d", me(0o750)).unwrap());
    let made = fs::metadata(tree.at("/etc/sudoers.d")).unwrap();
    assert_eq!(made.permissions().mode() & 0o7777, 0o750);
    assert!(!root.ensure_dir("/etc/sudoers.d", me(0o755)).unwrap());
    assert_eq!(
        fs::metadata(tree.at("/etc/sudoers.d")).unwrap().permissions().mode() & 0o7777,
        0o750,
        "an existing directory is left as it is"
    );
    fs::write(tree.at("/etc/containers"), "a file").unwrap();
    let refused = root.ensure_dir("/etc/containers", me(0o755)).unwrap_err();
    assert_eq!(refused.kind(), io::ErrorKind::AlreadyExists, "{refused}");
    assert_eq!(fs::read_to_string(tree.at("/etc/containers")).unwrap(), "a file");
    // A symlink to a directory in the container counts as one.
    fs::create_dir(tree.at("/usr-etc")).unwrap();
    symlink("/usr-etc", tree.at("/etc/linked")).unwrap();
    assert!(!root.ensure_dir("/etc/linked", me(0o755)).unwrap());
    assert!(root.ensure_dir("/etc/missing/below", me(0o755)).is_err());

    root.set_meta("/etc/sudoers.d", me(0o700)).unwrap();
    let changed = fs::metadata(tree.at("/etc/sudoers.d")).unwrap();
    assert_eq!(changed.permissions().mode() & 0o7777, 0o700);
    // Never through a symlink.
    assert!(root.set_meta("/etc/linked", me(0o777)).is_err());
    assert_eq!(
        fs::metadata(tree.at("/usr-etc")).unwrap().permissions().mode() & 0o7777,
        0o755
    );
}

#[test]
#[ignore = "tier 1, needs root: tests/run-all.sh runs it (docs/TESTING.md)"]
fn tier1_symlinks_replace_what_is_there_and_removal_takes_the_link_only() {
    let tree = Tree::new();
    fs::write(tree.at("/etc/localtime"), "a zone file").unwrap();
    let root = tree.open();
    root.symlink("/etc/localtime", "/usr/share/zoneinfo/Europe/Berlin")
        .unwrap();
    assert_eq!(
        fs::read_link(tree.at("/etc/localtime")).unwrap(),
        Path::new("/usr/share/zoneinfo/Europe/Berlin")
    );
    root.symlink("/etc/localtime", "/usr/share/zoneinfo/UTC").unwrap();
    assert_eq!(
        fs::read_link(tree.at("/etc/localtime")).unwrap(),
        Path::new("/usr/share/zoneinfo/UTC")
    );
    assert_eq!(root.list("/etc").unwrap().unwrap(), ["localtime"]);

    fs::write(tree.at("/run/target"), "kept").unwrap();
    symlink("/run/target", tree.at("/etc/link")).unwrap();
    assert!(root.remove("/etc/link").unwrap());
    assert!(!root.remove("/etc/link").unwrap());
    assert_eq!(fs::read_to_string(tree.at("/run/target")).unwrap(), "kept");
    assert!(root.remove("/run").is_err(), "a directory is not removed");
    assert!(tree.at("/run/target").exists());
}

#[test]
fn listing_a_missing_directory_is_none() {
    let tree = Tree::new();
    let root = tree.open();
    assert_eq!(root.list("/.kapsule/init").unwrap(), None);
    fs::create_dir_all(tree.at("/.kapsule/init")).unwrap();
    fs::write(tree.at("/.kapsule/init/10-machine-id"), "#!/bin/sh\n").unwrap();
    fs::write(tree.at("/.kapsule/init/20-other"), "#!/bin/sh\n").unwrap();
    assert_eq!(names(&root, "/.kapsule/init"), ["10-machine-id", "20-other"]);
}

#[test]
fn bad_paths_are_refused_and_change_nothing() {
    let tree = Tree::new();
    let root = tree.open();
    for path in ["etc/passwd", "", "/", "/etc/", "/etc/.", "/etc/..", "/etc/a\0b"] {
        let refused = root.write(path, b"x", me(0o644)).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::InvalidInput, "{path:?}: {refused}");
        assert!(root.symlink(path, "/x").is_err(), "{path:?}");
        assert!(root.remove(path).is_err(), "{path:?}");
    }
    assert!(root.read("relative", 10).is_err());
    let long = format!("/{}", "a/".repeat(3000));
    assert!(root.metadata(&long).is_err());
    assert_eq!(names(&root, "/"), ["etc", "run"]);
    assert_eq!(root.list("/etc").unwrap().unwrap(), Vec::<String>::new());
}

#[test]
fn id_maps_translate_both_ways() {
    let shifted = IdMap::parse("         0     100000      65536\n").unwrap();
    assert_eq!(shifted.to_host(0), Some(100_000));
    assert_eq!(shifted.to_host(65_535), Some(165_535));
    assert_eq!(shifted.to_host(65_536), None);
    assert_eq!(shifted.to_container(100_001), Some(1));
    assert_eq!(shifted.to_container(0), None);
    let two = IdMap::parse("0 1000 1\n1 100000 65535\n").unwrap();
    assert_eq!(two.to_host(0), Some(1000));
    assert_eq!(two.to_host(1), Some(100_000));
    assert_eq!(two.to_container(1000), Some(0));
    let identity = IdMap::parse("0 0 4294967295\n").unwrap();
    assert_eq!(identity, IdMap::identity());
    assert_eq!(identity.to_host(4_294_967_294), Some(4_294_967_294));
    assert_eq!(identity.to_host(u32::MAX), None);
    assert!(IdMap::parse("0 0\n").is_err());
    assert!(IdMap::parse("0 0 x\n").is_err());
}

#[test]
fn a_process_root_is_its_view() {
    let root = Root::of_process(std::process::id()).unwrap();
    assert_eq!(root.metadata("/").unwrap().unwrap().kind, Kind::Directory);
    let hostname = root.read("/etc/hostname", 4096);
    assert_eq!(hostname.unwrap().unwrap().data, std::fs::read("/etc/hostname").unwrap());
    assert!(Root::of_process(u32::MAX).is_err());
}

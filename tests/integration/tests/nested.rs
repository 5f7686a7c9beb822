//! Nested containers, the project's first goal: in a container made by `kapsule create`, with no
//! registry reachable, a plain user runs docker and podman (root and rootless) on an image they
//! import from a tarball, and two podman containers with network namespaces of their own talk to
//! each other. And what creation does for that: the image's `/.kapsule/init/*` scripts run once,
//! in order; newuidmap/newgidmap get their file capabilities without a way out of the container;
//! podman gets its cgroupfs drop-in; the container's name resolves.

use std::os::unix::fs::PermissionsExt;
use std::process::Output;

use kapsule_integration_tests::{
    DaemonTest, ImageGuard, InstanceGuard, RemoveOnDrop, busybox_rootfs, daemon_test, import_image_files, pack_image,
    sh, succeeded, test_user, unique_name, write_executable,
};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `sh -c script` in container `name` through `kapsule enter`, as the test user.
async fn enter_sh(test: &DaemonTest, name: &str, script: &str) -> Output {
    let mut command = test_user().kapsule(&test.bus);
    command.args(["enter", name, "--", "sh", "-c", script]).current_dir("/");
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

/// A BusyBox image for nested containers, made in the container from its own busybox, as a user
/// without a registry would: a web root with one page, and the applets the tests call.
const MAKE_TARBALL: &str = r#"set -e
d=$(mktemp -d)
mkdir -p "$d/bin" "$d/www"
cp /bin/busybox "$d/bin/"
for a in sh echo httpd wget cat hostname sleep; do ln -s busybox "$d/bin/$a"; done
echo "served from the other container" > "$d/www/index.html"
tar -C "$d" -cf "$HOME/kt-bb.tar" .
rm -rf "$d"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_and_podman_run_offline_in_a_container_made_by_kapsule_create() {
    let test = daemon_test().await;
    let user = test_user();
    let name = unique_name("nest");
    let _guard = InstanceGuard(name.clone());
    // Rootless podman keeps its store in the home, which is the host's: it goes with the test.
    let _store = RemoveOnDrop(user.home.join(".local/share/containers"));
    let _config = RemoveOnDrop(user.home.join(".config/containers"));
    let _cni = RemoveOnDrop(user.home.join(".config/cni"));
    let _tarball = RemoveOnDrop(user.home.join("kt-bb.tar"));

    let image = format!("local:{}", test.env.image);
    let mut create = user.kapsule(&test.bus);
    create.args(["create", &name, "--image", &image]);
    let out = tokio::task::spawn_blocking(move || create.output().unwrap())
        .await
        .unwrap();
    succeeded("kapsule create", &out);

    // The first command runs once the boot's steps that change files under it are done: the
    // user database (systemd-sysusers) and /tmp, which systemd-tmpfiles-setup empties at boot
    // (it took the tarball's temporary directory away once, when the first enter was fast
    // enough to land before it). No start job is left for either, and /tmp is set up.
    let out = enter_sh(
        &test,
        &name,
        "systemctl show -p ActiveState --value systemd-tmpfiles-setup.service && \
         systemctl show -p Job --value systemd-sysusers.service systemd-tmpfiles-setup.service",
    )
    .await;
    let shown = succeeded("the first enter", &out);
    let mut lines = shown.lines();
    assert_eq!(lines.next(), Some("active"), "{shown}");
    assert!(lines.all(str::is_empty), "a start job is pending: {shown}");

    succeeded("making the tarball", &enter_sh(&test, &name, MAKE_TARBALL).await);

    // Podman, as root through sudo: import the tarball, run it.
    let out = enter_sh(
        &test,
        &name,
        "sudo podman import -q ~/kt-bb.tar localhost/kt-bb >/dev/null && \
         sudo podman run --rm localhost/kt-bb echo hello from podman",
    )
    .await;
    assert_eq!(succeeded("sudo podman run", &out), "hello from podman\n");
    // sudo finds the container's own name (it is in /etc/hosts: no DNS knows it).
    assert!(
        !text(&out.stderr).contains("unable to resolve host"),
        "{}",
        text(&out.stderr)
    );

    // Docker: dockerd is started by the container's systemd while it boots, which may still be
    // going on (under load) when creation has finished; a user would wait for it too.
    let out = enter_sh(
        &test,
        &name,
        "timeout 120 sh -c 'until sudo docker info >/dev/null 2>&1; do sleep 0.5; done' && \
         sudo docker import ~/kt-bb.tar kt-bb >/dev/null && \
         sudo docker run --rm kt-bb echo hello from docker",
    )
    .await;
    assert_eq!(succeeded("sudo docker run", &out), "hello from docker\n");

    // Two podman containers, each in a network namespace of its own on podman's bridge: one
    // serves a page, the other fetches it by the first one's address.
    let out = enter_sh(
        &test,
        &name,
        r#"set -e
        sudo podman run -d --name kt-web localhost/kt-bb httpd -f -p 8080 -h /www >/dev/null
        trap 'sudo podman rm -f -t 0 kt-web >/dev/null' EXIT
        ip=$(sudo podman inspect -f '{{.NetworkSettings.IPAddress}}' kt-web)
        [ -n "$ip" ] || { echo "kt-web has no address" >&2; exit 1; }
        web=$(sudo podman inspect -f '{{.State.Pid}}' kt-web)
        [ "$(sudo readlink /proc/$web/ns/net)" != "$(readlink /proc/self/ns/net)" ] ||
            { echo "kt-web shares the container's network namespace" >&2; exit 1; }
        sudo podman run --rm localhost/kt-bb sh -c "
            for i in 1 2 3 4 5 6 7 8 9 10; do wget -qO- http://$ip:8080/ && exit 0; sleep 0.3; done; exit 1"
        "#,
    )
    .await;
    assert_eq!(
        succeeded("podman container to podman container", &out),
        "served from the other container\n"
    );

    // Rootless podman as the user: subordinate ids from the setup, newuidmap/newgidmap, the
    // cgroupfs drop-in. No network: slirp4netns needs /dev/net/tun usable by users, which this
    // machine's udev-less /dev does not give (KDE Linux's does).
    let out = enter_sh(
        &test,
        &name,
        "grep \"^$(id -un):\" /etc/subuid /etc/subgid && \
         podman import -q ~/kt-bb.tar localhost/kt-bb >/dev/null && \
         podman run --rm --network none localhost/kt-bb sh -c 'echo rootless as uid $(id -u) of the inner namespace'",
    )
    .await;
    let said = succeeded("rootless podman run", &out);
    assert!(said.ends_with("rootless as uid 0 of the inner namespace\n"), "{said}");
    let subordinate = format!("{}:100000:65536", user.name);
    assert!(
        said.contains(&format!("/etc/subuid:{subordinate}")) && said.contains(&format!("/etc/subgid:{subordinate}")),
        "{said}"
    );
    // Podman reads the drop-in, as the user and as root (whose default would be systemd).
    let out = enter_sh(
        &test,
        &name,
        "podman info --format '{{.Host.CgroupManager}}' && sudo podman info --format '{{.Host.CgroupManager}}'",
    )
    .await;
    assert_eq!(succeeded("podman info", &out), "cgroupfs\ncgroupfs\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creation_runs_the_images_init_scripts_once_and_prepares_podman() {
    let test = daemon_test().await;
    let incus = &test.env.incus;
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_rootfs(dir.path());
    let init = root.join(".kapsule/init");
    write_executable(
        &init.join("10-first"),
        "#!/bin/sh\necho \"first as $(id -u) in $PWD with LANG=$LANG\" >> /var/log/kt-init\n",
    );
    write_executable(
        &init.join("20-fails"),
        "#!/bin/sh\necho second >> /var/log/kt-init\necho 'no keyring here' >&2\nexit 3\n",
    );
    write_executable(&init.join("30-third"), "#!/bin/sh\necho third >> /var/log/kt-init\n");
    // The id-map helpers: one a plain file, which gets its capability; one a symlink into the
    // host's file system as the container sees it (`/.kapsule/host`, a bind mount of the host's
    // `/`), to a file of the host's, which must stay untouched.
    write_executable(&root.join("usr/bin/newgidmap"), "#!/bin/sh\n");
    let host_file = tempfile::NamedTempFile::new_in("/var/tmp").unwrap();
    std::fs::set_permissions(host_file.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(
        format!("/.kapsule/host{}", host_file.path().display()),
        root.join("usr/bin/newuidmap"),
    )
    .unwrap();

    let (meta, rootfs) = pack_image(dir.path(), "kt busybox with init scripts");
    let alias = unique_name("initimg");
    import_image_files(incus, &meta, &rootfs, &alias).await;
    let _image = ImageGuard(alias.clone());
    let name = unique_name("init");
    let _guard = InstanceGuard(name.clone());

    let seen = test
        .create_from(&name, &format!("local:{alias}"), Default::default())
        .await;
    assert!(
        seen.iter().any(|s| s.contains("Could not set file capabilities")
            && s.contains("/usr/bin/newuidmap: it leads off the container's own file system")),
        "the symlink into a mount is refused, and said: {seen:?}"
    );
    let ran: Vec<&String> = seen.iter().filter(|s| s.contains("Running /.kapsule/init/")).collect();
    assert_eq!(ran.len(), 3, "one message per script: {seen:?}");
    assert!(
        seen.iter()
            .any(|s| s.contains("/.kapsule/init/20-fails exited with code 3: no keyring here")),
        "the failing script is a warning with its code and error output: {seen:?}"
    );
    let (code, log) = sh(incus, &name, "cat /var/log/kt-init").await;
    assert_eq!(
        (code, log.as_str()),
        (0, "first as 0 in / with LANG=C.UTF-8\nsecond\nthird\n"),
        "in name order, as root, in /, with the locale incus exec gave the original's scripts"
    );

    // Once: a restart does not run them again.
    let seen = test.follow(test.manager.stop_container(&name, false)).await;
    assert_eq!(seen.last().unwrap(), "Completed(true, \"\")", "{seen:?}");
    let seen = test.follow(test.manager.start_container(&name)).await;
    assert_eq!(seen.last().unwrap(), "Completed(true, \"\")", "{seen:?}");
    let (_, log) = sh(incus, &name, "cat /var/log/kt-init").await;
    assert_eq!(log, "first as 0 in / with LANG=C.UTF-8\nsecond\nthird\n");

    // newgidmap has cap_setgid+ep, exactly as `setcap` writes it; the host's file has nothing.
    let pid = incus.instance_state(&name).await.unwrap().init_pid().unwrap();
    let mut value = [0u8; 64];
    let n = rustix::fs::getxattr(
        format!("/proc/{pid}/root/usr/bin/newgidmap").as_str(),
        "security.capability",
        &mut value,
    )
    .expect("newgidmap has file capabilities");
    assert_eq!(
        &value[..n],
        &[1, 0, 0, 2, 0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(
        rustix::fs::getxattr(host_file.path(), "security.capability", &mut value),
        Err(rustix::io::Errno::NODATA),
        "a symlink in the image must not lead the daemon to the host's files"
    );

    // Its own name resolves, in an image that had no /etc/hosts.
    let (code, hosts) = sh(incus, &name, "cat /etc/hosts").await;
    assert_eq!(
        (code, hosts),
        (0, format!("127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t{name}\n"))
    );

    // The drop-in, in an image that had no /etc/containers at all.
    let (code, conf) = sh(
        incus,
        &name,
        "stat -c '%a %u' /etc/containers/containers.conf.d/50-kapsule-cgroupfs.conf && \
         grep -v '^#' /etc/containers/containers.conf.d/50-kapsule-cgroupfs.conf",
    )
    .await;
    assert_eq!(
        (code, conf.as_str()),
        (0, "644 0\n[engine]\ncgroup_manager = \"cgroupfs\"\n")
    );
}

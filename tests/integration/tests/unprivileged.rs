//! Unprivileged containers, as a user who is not an administrator has them: `kapsule-other`
//! (whom the test polkit rule treats as a user at the computer, with what the policy gives such
//! a user without a password) creates one and uses it as the same user, root in it is the
//! container's root only, nested podman and docker run, the desktop's sockets connect; and with
//! the trust dial turned down it is a sandbox. They still cannot make a privileged container or
//! enter anyone else's, and nobody else can be a user in theirs.

use std::process::{Command, Output, Stdio};

use kapsule_integration_tests::desktop::FakeDesktop;
use kapsule_integration_tests::{
    DaemonTest, InstanceGuard, RemoveOnDrop, TestUser, daemon_test, incus_state, other_user, sh, succeeded, test_user,
    unique_name,
};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn output(mut command: Command) -> Output {
    command.stdin(Stdio::null());
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

/// `kapsule create NAME --image <the test image> --unprivileged ARGS…` as `user`.
async fn create(test: &DaemonTest, user: &TestUser, name: &str, args: &[&str]) -> Output {
    let mut command = user.kapsule(&test.bus);
    command
        .args(["create", name, "--image", &format!("local:{}", test.env.image)])
        .args(args);
    output(command).await
}

/// `kapsule enter NAME -- sh -c SCRIPT` as `user` (in `desktop`'s session when given).
async fn enter_sh(
    test: &DaemonTest,
    user: &TestUser,
    desktop: Option<&FakeDesktop>,
    name: &str,
    script: &str,
) -> Output {
    let mut command = user.kapsule(&test.bus);
    command
        .args(["enter", name, "--", "sh", "-c", script])
        .current_dir(&user.home);
    if let Some(desktop) = desktop {
        command.envs(desktop.environment());
    }
    output(command).await
}

/// A BusyBox image for nested containers, made inside from the container's own busybox.
const MAKE_TARBALL: &str = r#"set -e
d=$(mktemp -d)
mkdir -p "$d/bin"
cp /bin/busybox "$d/bin/"
for a in sh echo; do ln -s busybox "$d/bin/$a"; done
tar -C "$d" -cf "$HOME/kt-bb.tar" .
rm -rf "$d"
"#;

/// What `sudo <runtime> run` of the BusyBox tarball (made in the home by [`MAKE_TARBALL`]) prints.
///
/// Docker is run in a container without the host's root: on a host with cgroup v1 controllers
/// mounted (this machine, which boots without systemd; not KDE Linux, whose systemd mounts cgroup
/// v2 alone) runc takes the first cpuset mount it finds, which is the host's under
/// `/.kapsule/host/sys/fs/cgroup`, and an unprivileged root may not make a cgroup there.
async fn nested(test: &DaemonTest, user: &TestUser, name: &str, runtime: &str) -> String {
    let script = match runtime {
        "podman" => {
            "sudo podman import -q ~/kt-bb.tar localhost/kt-bb >/dev/null && \
             sudo podman run --rm localhost/kt-bb echo hello from podman"
        }
        _ => {
            "timeout 120 sh -c 'until sudo docker info >/dev/null 2>&1; do sleep 0.5; done' && \
             sudo docker import ~/kt-bb.tar kt-bb >/dev/null && \
             sudo docker run --rm kt-bb echo hello from docker"
        }
    };
    succeeded(
        &format!("sudo {runtime} run"),
        &enter_sh(test, user, None, name, script).await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_is_no_administrator_makes_and_uses_an_unprivileged_container() {
    let test = daemon_test().await;
    let user = other_user();
    let desktop = FakeDesktop::start(&user).await;
    let name = unique_name("unpriv");
    let _guard = InstanceGuard(name.clone());
    let pid = std::process::id();
    let _file = RemoveOnDrop(user.home.join(format!("kt-made-inside-{pid}")));
    let _tarball = RemoveOnDrop(user.home.join("kt-bb.tar"));
    // A root-owned host file that root in the container must not change.
    let host_file = std::path::PathBuf::from(format!("/var/tmp/kt-host-{pid}"));
    std::fs::write(&host_file, "the host's\n").unwrap();
    let _host_file = RemoveOnDrop(host_file.clone());

    // Root's lines for the user an earlier run had the daemon add are taken out first, so what
    // is checked below is this create's doing (the other tests that make unprivileged
    // containers of this user take turns with this one: the desktop group).
    for file in ["/etc/subuid", "/etc/subgid"] {
        let id = if file.ends_with("uid") { user.uid } else { user.gid };
        let kept: String = std::fs::read_to_string(file)
            .unwrap()
            .lines()
            .filter(|l| *l != format!("root:{id}:1"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(file, kept).unwrap();
    }

    // No password (the test rule gives kapsule-other what the policy gives anyone at the
    // computer): the create goes through.
    succeeded(
        "kapsule create --unprivileged",
        &create(&test, &user, &name, &["--unprivileged"]).await,
    );
    let instance = test.env.incus.get_instance(&name).await.unwrap();
    assert_eq!(instance.config["security.privileged"], "false");
    assert_eq!(
        instance.config["raw.idmap"],
        format!("uid {0} {0}\ngid {1} {1}", user.uid, user.gid)
    );
    // What the user is told about it: `kapsule info` (GetContainerDetails' `unprivileged`).
    let mut command = user.kapsule(&test.bus);
    command.args(["info", &name, "--format", "json"]);
    let info: serde_json::Value = serde_json::from_str(&succeeded("kapsule info", &output(command).await)).unwrap();
    assert_eq!(info["unprivileged"], true, "{info}");
    // Root may map the user's ids: given in the host's subordinate id files.
    for (file, id) in [("/etc/subuid", user.uid), ("/etc/subgid", user.gid)] {
        let listed = std::fs::read_to_string(file).unwrap();
        assert!(listed.lines().any(|l| l == format!("root:{id}:1")), "{file}:\n{listed}");
    }

    // Entered as themselves: their ids, the shift for everyone else, a file they make in the
    // home is theirs on the host, the desktop's sockets connect.
    let script = format!(
        "id -u; id -g; cat /proc/self/uid_map; touch ~/kt-made-inside-{pid}; \
         for s in \"$XDG_RUNTIME_DIR/$WAYLAND_DISPLAY\" \"$XDG_RUNTIME_DIR/pipewire-0\" \
             \"$XDG_RUNTIME_DIR/pulse/native\" \"/tmp/.X11-unix/X${{DISPLAY#:}}\"; do \
           socat -u \"UNIX-CONNECT:$s\" - || echo \"cannot connect to $s\"; \
         done"
    );
    let shown = succeeded(
        "the first enter",
        &enter_sh(&test, &user, Some(&desktop), &name, &script).await,
    );
    let mut lines = shown.lines();
    assert_eq!(lines.next(), Some(user.uid.to_string().as_str()), "{shown}");
    assert_eq!(lines.next(), Some(user.gid.to_string().as_str()), "{shown}");
    let map: Vec<Vec<u64>> = lines
        .by_ref()
        .take(3)
        .map(|l| l.split_whitespace().map(|n| n.parse().unwrap()).collect())
        .collect();
    assert_eq!(map[0][0], 0, "{shown}");
    assert!(map[0][1] >= 65536, "root inside is an unmapped id outside: {shown}");
    assert!(
        map.iter()
            .any(|range| range[..] == [u64::from(user.uid), u64::from(user.uid), 1]),
        "the user is themselves: {shown}"
    );
    assert_eq!(
        lines.collect::<Vec<_>>(),
        ["wayland", "pipewire", "pulse", "x11"],
        "the desktop's sockets: {shown}"
    );
    let made = std::fs::metadata(user.home.join(format!("kt-made-inside-{pid}"))).unwrap();
    assert_eq!(
        (
            std::os::unix::fs::MetadataExt::uid(&made),
            std::os::unix::fs::MetadataExt::gid(&made)
        ),
        (user.uid, user.gid)
    );

    // sudo is the container's root: root inside, nobody to a host file of root's.
    let script = format!(
        "sudo id -u; sudo sh -c 'echo changed > /.kapsule/host{0}' 2>/dev/null || echo refused; \
         sudo cat /.kapsule/host/etc/shadow >/dev/null 2>&1 || echo unreadable",
        host_file.display()
    );
    let shown = succeeded("sudo", &enter_sh(&test, &user, None, &name, &script).await);
    assert_eq!(shown, "0\nrefused\nunreadable\n");
    assert_eq!(std::fs::read_to_string(&host_file).unwrap(), "the host's\n");

    // Nested containers as root: podman runs a local BusyBox image (docker: in the sandbox
    // test, whose container has no host root, see `nested`).
    succeeded(
        "making the tarball",
        &enter_sh(&test, &user, None, &name, MAKE_TARBALL).await,
    );
    assert_eq!(nested(&test, &user, &name, "podman").await, "hello from podman\n");
    // And rootless, as the user: their subordinate ids inside, mapped by newuidmap with the
    // capabilities Kapsule set (revision 3, for the container's root).
    let _store = (
        RemoveOnDrop(user.home.join(".local/share/containers")),
        RemoveOnDrop(user.home.join(".config/containers")),
    );
    let out = enter_sh(
        &test,
        &user,
        None,
        &name,
        "podman import -q ~/kt-bb.tar localhost/kt-bb >/dev/null && \
         podman run --rm localhost/kt-bb echo hello from rootless podman",
    )
    .await;
    assert_eq!(succeeded("podman run", &out), "hello from rootless podman\n");

    // Stopped and started again by its owner, still without a password; it stays unprivileged.
    for verb in ["stop", "start"] {
        let mut command = user.kapsule(&test.bus);
        command.args([verb, &name]);
        succeeded(&format!("kapsule {verb}"), &output(command).await);
    }
    let (code, shown) = sh(&test.env.incus, &name, "cat /proc/1/uid_map").await;
    assert_eq!(code, 0, "{shown}");
    assert!(
        !shown.lines().any(|l| l.split_whitespace().nth(1) == Some("0")),
        "{shown}"
    );

    // Undo never turns it privileged: a clone is unprivileged with its own shmounts, a reset
    // keeps the config; both are entered as the user again.
    let copy = format!("{name}-copy");
    let _copy = InstanceGuard(copy.clone());
    for (what, args) in [
        ("kapsule clone", vec!["clone", name.as_str(), copy.as_str()]),
        ("kapsule reset", vec!["reset", name.as_str(), "--yes"]),
    ] {
        let mut command = user.kapsule(&test.bus);
        command.args(&args);
        succeeded(what, &output(command).await);
    }
    for container in [&name, &copy] {
        let instance = test.env.incus.get_instance(container).await.unwrap();
        assert_eq!(instance.config["security.privileged"], "false", "{container}");
        assert!(
            instance.config["raw.lxc"].contains(&format!("shmounts/{container}:")),
            "{container}: {}",
            instance.config["raw.lxc"]
        );
        let shown = succeeded(
            &format!("enter {container}"),
            &enter_sh(&test, &user, None, container, "id -u; sudo id -u").await,
        );
        assert_eq!(shown, format!("{}\n0\n", user.uid), "{container}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_user_gets_more_than_their_own_unprivileged_container() {
    let test = daemon_test().await;
    let (plain, admin) = (other_user(), test_user());
    let privileged = unique_name("priv-refused");
    let _guard = InstanceGuard(privileged.clone());
    let before = incus_state(&test.env.incus, &[&privileged]).await;

    // A privileged container is still the administrator's to make.
    let out = create(&test, &plain, &privileged, &[]).await;
    assert!(!out.status.success(), "a plain user made a privileged container");
    assert!(text(&out.stderr).contains("not allowed"), "{}", text(&out.stderr));
    assert_eq!(
        incus_state(&test.env.incus, &[&privileged]).await,
        before,
        "Incus unchanged"
    );

    // The administrator's own unprivileged container: not the plain user's to enter.
    let admins = unique_name("unpriv-admin");
    let _admins = InstanceGuard(admins.clone());
    succeeded(
        "the admin's create",
        &create(&test, &admin, &admins, &["--unprivileged"]).await,
    );
    let out = enter_sh(&test, &plain, None, &admins, "id -u").await;
    assert!(!out.status.success(), "entered someone else's container");
    assert!(text(&out.stderr).contains("not allowed"), "{}", text(&out.stderr));

    // Nor is the plain user's unprivileged container anyone else's to be a user in, even an
    // administrator's: it maps its owner's ids alone.
    let plains = unique_name("unpriv-plain");
    let _plains = InstanceGuard(plains.clone());
    succeeded(
        "the plain user's create",
        &create(&test, &plain, &plains, &["--unprivileged"]).await,
    );
    let out = enter_sh(&test, &admin, None, &plains, "id -u").await;
    assert!(!out.status.success(), "someone else was made a user of it");
    assert!(text(&out.stderr).contains("only its owner"), "{}", text(&out.stderr));
    // And they may not remove it for them.
    let mut command = plain.kapsule(&test.bus);
    command.args(["rm", "--yes", "--force", &admins]);
    let out = output(command).await;
    assert!(!out.status.success(), "removed someone else's container");
    assert!(test.env.incus.get_instance(&admins).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprivileged_container_with_the_trust_dial_down_is_a_sandbox() {
    let test = daemon_test().await;
    let user = other_user();
    let desktop = FakeDesktop::start(&user).await;
    let name = unique_name("sandbox");
    let _guard = InstanceGuard(name.clone());
    let pid = std::process::id();
    let project = format!("kt-sandbox-{pid}");
    user.write_file(&format!("{project}/marker"), "project files");
    let secret = user.write_file(&format!("kt-sandbox-secret-{pid}"), "private");
    let _cleanup = (RemoveOnDrop(user.home.join(&project)), RemoveOnDrop(secret.clone()));
    // Something else of the user's in their runtime directory beside the sockets.
    let runtime = desktop
        .environment()
        .into_iter()
        .find(|(k, _)| *k == "XDG_RUNTIME_DIR")
        .unwrap()
        .1;
    let beside = std::path::Path::new(&runtime).join(format!("kt-keyring-{pid}"));
    std::fs::write(&beside, "a secret of the session").unwrap();
    let _beside = RemoveOnDrop(beside.clone());

    let custom = format!("~/{project}");
    let out = create(
        &test,
        &user,
        &name,
        &[
            "--unprivileged",
            "--no-host-rootfs",
            "--no-mount-home",
            "--custom-mounts",
            &custom,
            "--session-mode",
        ],
    )
    .await;
    succeeded("kapsule create (sandbox)", &out);

    // As root inside: the project is there and writable; nothing else of the host's is.
    let home = user.home.display();
    let script = format!(
        "sudo sh -c '\
           cat {home}/{project}/marker; echo; echo from inside > {home}/{project}/written; \
           test -e /.kapsule/host && echo host-root-visible; \
           cat {secret} 2>/dev/null && echo host-home-readable; \
           ls -A /run/user/{uid}; \
           for d in /dev/* /dev/*/*; do test -b \"$d\" && echo \"block device $d\"; done; \
           echo done'",
        secret = secret.display(),
        uid = user.uid
    );
    let shown = succeeded(
        "root in the sandbox",
        &enter_sh(&test, &user, Some(&desktop), &name, &script).await,
    );
    let mut lines = shown.lines();
    assert_eq!(lines.next(), Some("project files"), "{shown}");
    let listed: Vec<&str> = lines.by_ref().take_while(|l| *l != "done").collect();
    assert!(
        !listed
            .iter()
            .any(|l| l.contains("visible") || l.contains("readable") || l.contains("block device")),
        "{shown}"
    );
    assert!(
        !listed.iter().any(|l| l.contains("kt-keyring")),
        "the runtime directory beyond the sockets: {shown}"
    );
    let written = user.home.join(&project).join("written");
    let meta = std::fs::metadata(&written).unwrap();
    // Root's file in the project is an unmapped id's on the host: not root's.
    assert_ne!(std::os::unix::fs::MetadataExt::uid(&meta), 0);

    // Nested containers work in the sandbox too: docker and podman as root.
    succeeded(
        "making the tarball",
        &enter_sh(&test, &user, None, &name, MAKE_TARBALL).await,
    );
    assert_eq!(nested(&test, &user, &name, "docker").await, "hello from docker\n");
    assert_eq!(nested(&test, &user, &name, "podman").await, "hello from podman\n");
}

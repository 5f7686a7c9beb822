//! The desktop inside a container: a fake desktop on the host (Wayland, PipeWire, PulseAudio and
//! X11 sockets that answer with their names, an Xauthority file, a private session bus with a
//! name owned on the host), a real container, and `kapsule enter` as the test user with that
//! desktop's environment. What a user would see: programs inside reach every one of them, also
//! from a mount namespace without `/.kapsule/host` (snap, flatpak), a symlink the container's
//! user planted redirects nothing, the helper runs once until something changes, and a socket
//! the host re-created is repaired by the next enter.

use std::process::{Output, Stdio};

use kapsule_integration_tests::desktop::{DISPLAY, FakeDesktop, WAYLAND, XAUTH};
use kapsule_integration_tests::{
    DaemonTest, InstanceGuard, daemon_test_with, sh, test_settings, test_user, unique_name, write_executable,
};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `kapsule enter <name> -- <args>` as `user` in `desktop`'s session.
async fn enter(test: &DaemonTest, desktop: &FakeDesktop, name: &str, args: &[&str]) -> Output {
    let mut command = desktop.user.kapsule(&test.bus);
    command
        .args(["enter", name, "--"])
        .args(args)
        .envs(desktop.environment())
        .current_dir(&desktop.user.home)
        .stdin(Stdio::null());
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

/// What a user's programs in the container get from each part of the desktop.
const CLIENTS: &str = r#"for s in "$XDG_RUNTIME_DIR/$WAYLAND_DISPLAY" "$XDG_RUNTIME_DIR/pipewire-0" \
    "$XDG_RUNTIME_DIR/pulse/native" "/tmp/.X11-unix/X${DISPLAY#:}"; do
    socat -u "UNIX-CONNECT:$s" - || echo "cannot connect to $s"
done
cat "$XAUTHORITY"
busctl --user list --no-pager --no-legend | awk '{print $1}' | grep -x org.kde.KapsuleTest.Host"#;

const EXPECTED: &str = "wayland\npipewire\npulse\nx11\nxauth-cookie\norg.kde.KapsuleTest.Host\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_desktops_sockets_work_inside_and_stay_current() {
    // The helper, wrapped to count its runs.
    let wrapper_dir = tempfile::tempdir().unwrap();
    let runs = wrapper_dir.path().join("runs");
    let wrapper = wrapper_dir.path().join("kapsule-mounts");
    let mut settings = test_settings();
    write_executable(
        &wrapper,
        &format!(
            "#!/bin/sh\necho run >> '{}'\nexec '{}' \"$@\"\n",
            runs.display(),
            settings.mounts.as_ref().unwrap().display()
        ),
    );
    settings.mounts = Some(wrapper);
    let helper_runs = || std::fs::read_to_string(&runs).map_or(0, |s| s.lines().count());

    let test = daemon_test_with(settings).await;
    let user = test_user();
    let desktop = FakeDesktop::start(&user).await;
    let incus = &test.env.incus;
    let name = unique_name("desktop");
    let _guard = InstanceGuard(name.clone());
    test.create(&name, Default::default()).await;
    let uid = user.uid;

    // Before the first enter, the container's user plants symlinks where sockets go: one to a
    // file of root's, one (a directory) to /etc.
    let (code, out) = sh(
        incus,
        &name,
        &format!(
            "echo victim > /etc/kt-victim && mkdir -p /run/user/{uid} && chown {uid}:{gid} /run/user/{uid} && \
             setpriv --reuid={uid} --regid={gid} --clear-groups sh -c \
             'ln -s /etc/kt-victim /run/user/{uid}/pipewire-0 && ln -s /etc /run/user/{uid}/pulse'",
            gid = user.gid
        ),
    )
    .await;
    assert_eq!(code, 0, "{out}");

    let out = enter(&test, &desktop, &name, &["true"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(helper_runs(), 1);

    // Each socket is a mount point (a real file, not a symlink into /.kapsule/host).
    let targets = [
        format!("/run/user/{uid}/{WAYLAND}"),
        format!("/run/user/{uid}/pipewire-0"),
        format!("/run/user/{uid}/pulse/native"),
        format!("/run/user/{uid}/bus"),
        format!("/tmp/.X11-unix/X{DISPLAY}"),
        format!("/run/user/{uid}/{XAUTH}"),
    ];
    let (code, out) = sh(
        incus,
        &name,
        &format!(
            "for t in {}; do if mountpoint -q \"$t\" && ! test -L \"$t\"; then echo \"mounted $t\"; else echo \"NOT $t\"; fi; done",
            targets.join(" ")
        ),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let expected: String = targets.iter().map(|t| format!("mounted {t}\n")).collect();
    assert_eq!(out, expected);

    // The planted symlinks redirected nothing: the file is untouched and no mount point, pulse
    // is a directory of its own, nothing landed in /etc.
    let (code, out) = sh(
        incus,
        &name,
        &format!(
            "cat /etc/kt-victim; mountpoint -q /etc/kt-victim && echo victim-mounted; \
             test -d /run/user/{uid}/pulse && ! test -L /run/user/{uid}/pulse && echo pulse-is-a-directory; \
             test -e /etc/native && echo etc-native; stat -c %u:%a /run/user/{uid}/pulse"
        ),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, format!("victim\npulse-is-a-directory\n{uid}:700\n"));

    // A user's programs inside reach every part of the desktop, the session bus included.
    let out = enter(&test, &desktop, &name, &["sh", "-c", CLIENTS]).await;
    assert_eq!(text(&out.stdout), EXPECTED, "{}", text(&out.stderr));

    // So does a program in a mount namespace of its own without /.kapsule/host (snap, flatpak).
    let (code, out) = sh(
        incus,
        &name,
        &format!(
            "unshare -m --propagation private sh -c 'umount -l /.kapsule/host && \
             test ! -e /.kapsule/host/usr && socat -u UNIX-CONNECT:/run/user/{uid}/{WAYLAND} - && \
             socat -u UNIX-CONNECT:/run/user/{uid}/pipewire-0 -'"
        ),
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "wayland\npipewire\n"));

    // Nothing changed since: the enters after the first did not run the helper.
    assert_eq!(helper_runs(), 1, "the helper runs only when something changed");

    // PipeWire restarts on the host: a new socket, a new inode. The next enter repairs it.
    let mut desktop = desktop;
    let pipewire = desktop.run.join("pipewire-0");
    std::fs::remove_file(&pipewire).unwrap();
    desktop.serve(&pipewire, "pipewire again");
    let script = format!("socat -u UNIX-CONNECT:/run/user/{uid}/pipewire-0 -");
    let out = enter(&test, &desktop, &name, &["sh", "-c", &script]).await;
    assert_eq!(text(&out.stdout), "pipewire again\n", "{}", text(&out.stderr));
    assert_eq!(helper_runs(), 2);
    // The stale mount went away rather than piling up.
    let (_, out) = sh(
        incus,
        &name,
        &format!("grep -c ' /run/user/{uid}/pipewire-0 ' /proc/self/mountinfo"),
    )
    .await;
    assert_eq!(out.trim(), "1");

    // A login session inside (logind) mounts a fresh runtime directory over the sockets: the
    // next enter notices and mounts them again.
    let (code, out) = sh(
        incus,
        &name,
        &format!("mount -t tmpfs -o mode=0700,uid={uid} tmpfs /run/user/{uid}"),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let script = format!("socat -u UNIX-CONNECT:/run/user/{uid}/{WAYLAND} -");
    let out = enter(&test, &desktop, &name, &["sh", "-c", &script]).await;
    assert_eq!(text(&out.stdout), "wayland\n", "{}", text(&out.stderr));
    assert_eq!(helper_runs(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trust_dial_changes_what_the_container_sees() {
    let test = daemon_test_with(test_settings()).await;
    let user = test_user();
    let desktop = FakeDesktop::start(&user).await;
    let incus = &test.env.incus;
    let uid = user.uid;
    let home = user.home.display().to_string();
    let project = format!("kt-proj-{}", std::process::id());
    user.write_file(&format!("{project}/marker"), "project files");
    let secret = user.write_file(&format!("kt-private-{}", std::process::id()), "private");
    let _cleanup = kapsule_integration_tests::RemoveOnDrop(user.home.join(&project));
    let _secret = kapsule_integration_tests::RemoveOnDrop(secret.clone());

    // Everything turned down, through the CLI as the user would.
    let name = unique_name("dial");
    let _guard = InstanceGuard(name.clone());
    let image = format!("local:{}", test.env.image);
    let custom = format!("~/{project}");
    let out = {
        let mut command = user.kapsule(&test.bus);
        command.args(["create", &name, "--image", &image]).args([
            "--no-host-rootfs",
            "--no-mount-home",
            "--custom-mounts",
            &custom,
            "--no-gpu",
            "--session-mode",
        ]);
        tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap()
    };
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));

    let instance = incus.get_instance(&name).await.unwrap();
    assert!(
        !instance
            .devices
            .values()
            .any(|d| d.get("type").map(String::as_str) == Some("gpu")),
        "--no-gpu: no GPU device: {:?}",
        instance.devices
    );
    assert!(!instance.devices.contains_key("hostfs"));

    // The first enter sets the user up; then, as the user sees it from inside:
    let script = format!(
        "test -e /.kapsule/host/usr && echo host-usr; \
         test -e {secret} && echo host-home-visible; \
         cat {home}/{project}/marker; echo; \
         socat -u UNIX-CONNECT:$XDG_RUNTIME_DIR/$WAYLAND_DISPLAY -; \
         mountpoint -q $XDG_RUNTIME_DIR/bus && echo host-bus-mounted; \
         echo done",
        secret = secret.display()
    );
    let out = enter(&test, &desktop, &name, &["sh", "-c", &script]).await;
    assert_eq!(
        text(&out.stdout),
        "project files\nwayland\ndone\n",
        "--no-host-rootfs: no /.kapsule/host/usr; --no-mount-home: the host home is not there, \
         --custom-mounts: the project is; the sockets still work; --session-mode: no host bus. {}",
        text(&out.stderr)
    );
    // A home of its own, though Incus made it (as root) to mount the project below it: given
    // to the user, with the image's /etc/skel in it; the project's files keep their owner.
    let (code, out) = sh(
        incus,
        &name,
        &format!("stat -c %u {home} {home}/.bashrc {home}/{project}/marker"),
    )
    .await;
    let owners = format!("{uid}\n{uid}\n{uid}\n");
    assert_eq!((code, out.as_str()), (0, owners.as_str()), "a home of its own");

    // The same from a container with everything on (the defaults): each switch made a difference.
    let open = unique_name("open");
    let _open_guard = InstanceGuard(open.clone());
    test.create(&open, Default::default()).await;
    let out = enter(&test, &desktop, &open, &["sh", "-c", &script]).await;
    assert_eq!(
        text(&out.stdout),
        "host-usr\nhost-home-visible\nproject files\nwayland\nhost-bus-mounted\ndone\n",
        "{}",
        text(&out.stderr)
    );
}

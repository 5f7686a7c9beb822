//! `kapsule-host-exec` as a user meets it: in a real container, entered with `kapsule enter` as
//! the test user from a desktop session whose session bus runs Debian's real
//! flatpak-session-helper. What the host command gets: the host's files, its arguments exactly,
//! stdin, the environment, the working directory (or the home), an exit status that comes back,
//! Ctrl-C, and a terminal of its own under `script` with the size of ours. It runs in a root
//! with nothing but BusyBox (no C library), and fails with one clear line where it cannot work.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use kapsule_integration_tests::desktop::FakeDesktop;
use kapsule_integration_tests::{
    DaemonTest, InstanceGuard, bus_name_has_owner, busybox_rootfs, daemon_test, static_program, test_user, unique_name,
};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// flatpak-session-helper running as the user on the desktop's session bus, as Flatpak's user
/// unit runs it; stopped on drop.
struct SessionHelper(std::process::Child);

impl SessionHelper {
    fn start(desktop: &FakeDesktop) -> SessionHelper {
        let program = "/usr/libexec/flatpak-session-helper";
        assert!(
            std::path::Path::new(program).exists(),
            "{program} is missing: tests/env/up.sh installs Debian's flatpak"
        );
        let address = format!("unix:path={}/bus", desktop.run.display());
        let child = desktop
            .user
            .command(program)
            .env("DBUS_SESSION_BUS_ADDRESS", &address)
            .env("XDG_RUNTIME_DIR", &desktop.run)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let helper = SessionHelper(child);
        for _ in 0..200 {
            if bus_name_has_owner(&address, "org.freedesktop.Flatpak") {
                return helper;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("flatpak-session-helper did not take org.freedesktop.Flatpak within 5 s");
    }
}

impl Drop for SessionHelper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A container of the test user's, made with `options`, and their desktop session with the
/// helper on its bus; the container goes first when it drops.
struct Scene {
    _guard: InstanceGuard,
    _helper: SessionHelper,
    desktop: FakeDesktop,
    test: DaemonTest,
    name: String,
}

impl Scene {
    async fn start(what: &str, options: std::collections::HashMap<String, zbus::OwnedVariant>) -> Scene {
        let test = daemon_test().await;
        let desktop = FakeDesktop::start(&test_user()).await;
        let helper = SessionHelper::start(&desktop);
        let name = unique_name(what);
        let guard = InstanceGuard(name.clone());
        test.create(&name, options).await;
        Scene {
            _guard: guard,
            _helper: helper,
            desktop,
            test,
            name,
        }
    }
}

/// `kapsule enter NAME -- ARGS` as the user in the desktop session, from their home.
fn enter(test: &DaemonTest, desktop: &FakeDesktop, name: &str, args: &[&str]) -> Command {
    let mut command = desktop.user.kapsule(&test.bus);
    command
        .args(["enter", name, "--"])
        .args(args)
        .envs(desktop.environment())
        .current_dir(&desktop.user.home);
    command
}

async fn output(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.stdin(Stdio::null()).output().unwrap())
        .await
        .unwrap()
}

/// A file only the host has (the container's /tmp is its own), readable by the user.
struct HostMarker(std::path::PathBuf, String);

impl HostMarker {
    fn new() -> HostMarker {
        let text = unique_name("on-the-host");
        let path = std::path::PathBuf::from(format!("/tmp/{text}"));
        std::fs::write(&path, &text).unwrap();
        HostMarker(path, text)
    }
}

impl Drop for HostMarker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_commands_run_on_the_host_as_the_user_with_everything_they_were_given() {
    let Scene {
        test, desktop, name, ..
    } = &Scene::start("hostexec", Default::default()).await;
    let user = &desktop.user;
    let marker = HostMarker::new();
    let marker_path = marker.0.to_str().unwrap();

    // It is on PATH, read-only even for root inside, and what it prints comes from the host: a
    // file only the host has, the host's /etc/hostname (the container is named after itself), and
    // the user's own identity there.
    let script = format!(
        "command -v kapsule-host-exec; sudo -n touch /usr/local/bin/kapsule-host-exec 2>/dev/null || echo read-only; \
         test -e {marker_path} || echo not-in-the-container; \
         kapsule-host-exec cat {marker_path}; echo; cat /proc/sys/kernel/hostname; kapsule-host-exec cat /etc/hostname; \
         kapsule-host-exec id -un"
    );
    let out = output(enter(test, desktop, name, &["sh", "-c", &script])).await;
    let host_name = std::fs::read_to_string("/etc/hostname").unwrap();
    assert_ne!(host_name.trim(), name);
    assert_eq!(
        text(&out.stdout),
        format!(
            "/usr/local/bin/kapsule-host-exec\nread-only\nnot-in-the-container\n{}\n{name}\n{host_name}{}\n",
            marker.1, user.name
        ),
        "{}",
        text(&out.stderr)
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Arguments exactly as given, stdin, the environment and the exit status.
    let out = output(enter(
        test,
        desktop,
        name,
        &["kapsule-host-exec", "printf", "%s|", "a b", "", "*", "$HOME"],
    ))
    .await;
    assert_eq!(text(&out.stdout), "a b||*|$HOME|", "{}", text(&out.stderr));
    let mut piped = enter(
        test,
        desktop,
        name,
        &[
            "sh",
            "-c",
            "printf 'one\\ntwo\\n' | KT_GIVEN=given kapsule-host-exec sh -c 'wc -l; echo \"$KT_GIVEN\"; exit 7'",
        ],
    );
    piped.stdin(Stdio::null());
    let out = tokio::task::spawn_blocking(move || piped.output().unwrap())
        .await
        .unwrap();
    assert_eq!(text(&out.stdout), "2\ngiven\n", "{}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(7), "the host command's exit status comes back");

    // The working directory: the home (mounted at the same path) is the host's too; a
    // directory only the container has becomes the home.
    let script =
        "kapsule-host-exec pwd; d=$(mktemp -d /tmp/kt-container-only.XXXXXX) && cd \"$d\" && kapsule-host-exec pwd";
    let out = output(enter(test, desktop, name, &["sh", "-c", script])).await;
    let home = user.home.display();
    assert_eq!(text(&out.stdout), format!("{home}\n{home}\n"), "{}", text(&out.stderr));

    // A command the host does not have: the shell's 127 and one line.
    let out = output(enter(test, desktop, name, &["kapsule-host-exec", "kt-no-such-command"])).await;
    assert_eq!(out.status.code(), Some(127));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("kapsule-host-exec: kt-no-such-command: ") && err.lines().count() == 1,
        "{err}"
    );

    // Linked under another name, it runs that name on the host.
    let script = format!("ln -sf /usr/local/bin/kapsule-host-exec /tmp/cat && /tmp/cat {marker_path}");
    let out = output(enter(test, desktop, name, &["sh", "-c", &script])).await;
    assert_eq!(text(&out.stdout), marker.1, "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_and_terminals_reach_the_host_command() {
    let Scene {
        test, desktop, name, ..
    } = &Scene::start("hostexec-tty", Default::default()).await;

    // Without a terminal: SIGINT to kapsule (what Ctrl-C in a shell pipeline does) reaches the
    // host command, which dies of it, and so do we.
    let sleeper = format!("sleep {}", 5000 + std::process::id() % 1000);
    let mut command = enter(
        test,
        desktop,
        name,
        &[
            "kapsule-host-exec",
            "sh",
            "-c",
            &format!("echo started; exec {sleeper}"),
        ],
    );
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "started\n");
    assert!(host_has(&sleeper), "the command runs on the host");
    // The CLI runs under setpriv, which execs it: the child's pid is kapsule's.
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(2), "{status:?}");
    for _ in 0..50 {
        if !host_has(&sleeper) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!host_has(&sleeper), "the host command was interrupted");

    // With a terminal (script gives kapsule one, 37 rows by 91 columns): the host command has a
    // terminal of its own on stdin and stdout, of that size, and its exit status comes back.
    let inner = "kapsule-host-exec sh -c 'test -t 0 && test -t 1 && echo both-terminals; stty size; exit 3'";
    let seen = under_script(test, desktop, name, inner).await;
    assert!(seen.contains("both-terminals\n37 91\n"), "{seen:?}");
    assert!(seen.contains("status 3"), "{seen:?}");

    // A resize of the terminal kapsule-host-exec runs in reaches the host command's terminal:
    // the container's side changes size a second in, the host command prints the new one.
    // (A background job's stdin is /dev/null in a shell without job control: hence /dev/tty.)
    let inner = "(sleep 1; stty rows 20 cols 50 < /dev/tty) & \
                 kapsule-host-exec sh -c 'trap \\\"stty size; exit 0\\\" WINCH; echo waiting; while :; do sleep 0.1; done'";
    let seen = under_script(test, desktop, name, inner).await;
    assert!(seen.contains("waiting\n20 50\n"), "{seen:?}");
    assert!(seen.contains("status 0"), "{seen:?}");

    // Ctrl-C typed at the terminal reaches the host command as the key it is (its terminal's
    // line discipline makes it SIGINT there), not the shell in the container that waits for it.
    let tmux = kapsule_integration_tests::Tmux::new();
    let environment: Vec<String> = desktop.environment().iter().map(|(k, v)| format!("{k}={v}")).collect();
    let inner = format!(
        "env KAPSULE_BUS_ADDRESS={} {} setpriv --reuid={} --regid={} --init-groups env HOME={} {} enter {name} -- \
         sh -c 'kapsule-host-exec sh -c \"trap \\\"echo interrupted; exit 5\\\" INT; echo ready; while :; do sleep 0.2; done\"; \
         echo back $?; sleep 60'",
        test.bus.address,
        environment.join(" "),
        desktop.user.uid,
        desktop.user.gid,
        desktop.user.home.display(),
        kapsule_integration_tests::kapsule_binary().display()
    );
    tmux.run(&["new-session", "-d", "-x", "100", "-y", "30", "-s", "kt", &inner]);
    tmux.wait_for("ready").await;
    tmux.run(&["send-keys", "-t", "kt", "C-c"]);
    tmux.wait_for("interrupted").await;
    tmux.wait_for("back 5").await;
}

/// `kapsule enter NAME -- sh -c INNER` as the user in a terminal of 37 rows by 91 columns that
/// `script` makes, then `status N`: all it printed, without carriage returns (and with stderr).
async fn under_script(test: &DaemonTest, desktop: &FakeDesktop, name: &str, inner: &str) -> String {
    let line = format!(
        "stty rows 37 cols 91; {} enter {name} -- sh -c \"{inner}\"; echo \"status $?\"",
        kapsule_integration_tests::kapsule_binary().display()
    );
    let mut script = desktop.user.command("timeout");
    script
        .args(["60", "script", "-qec", &line, "/dev/null"])
        .env("KAPSULE_BUS_ADDRESS", &test.bus.address)
        .envs(desktop.environment())
        .current_dir(&desktop.user.home);
    let out = output(script).await;
    format!("{}{}", text(&out.stdout), text(&out.stderr)).replace('\r', "")
}

/// Whether a process with this exact command line runs on the host.
fn host_has(command_line: &str) -> bool {
    Command::new("pgrep")
        .args(["-fx", command_line])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_runs_without_any_c_library_and_says_why_when_it_cannot_work() {
    let user = test_user();
    let desktop = FakeDesktop::start(&user).await;
    let marker = HostMarker::new();
    let program = static_program("kapsule-host-exec");

    // A root with BusyBox and nothing else (no libc, no loader), the user's runtime directory
    // bound in as Kapsule binds it into containers.
    let dir = tempfile::tempdir().unwrap();
    let root = busybox_rootfs(dir.path());
    std::fs::copy(&program, root.join("bin/kapsule-host-exec")).unwrap();
    std::fs::create_dir_all(root.join(desktop.run.strip_prefix("/").unwrap())).unwrap();
    assert!(!root.join("lib").exists() && !root.join("usr/lib").exists());
    let run_in_root = |args: &str| {
        let script = format!(
            "mount --bind {run} {root}{run} && exec chroot --userspec={uid}:{gid} {root} {args}",
            run = desktop.run.display(),
            root = root.display(),
            uid = user.uid,
            gid = user.gid,
        );
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .env_clear()
            .env("HOME", "/")
            .envs(desktop.environment())
            .stdin(Stdio::null());
        command.output().unwrap()
    };

    let helper = SessionHelper::start(&desktop);
    let out = run_in_root(&format!("/bin/kapsule-host-exec cat {}", marker.0.display()));
    assert_eq!(text(&out.stdout), marker.1, "{}", text(&out.stderr));

    // No flatpak-session-helper on the bus: one line that says so, status 125.
    drop(helper);
    let out = run_in_root("/bin/kapsule-host-exec true");
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(
        text(&out.stderr),
        "kapsule-host-exec: the host's session bus has no flatpak-session-helper (org.freedesktop.Flatpak); it comes with Flatpak\n"
    );

    // No session bus at all (what a session-mode container without its own has).
    let mut command = Command::new(&program);
    command
        .arg("true")
        .env_clear()
        .env("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent/kt-bus");
    let out = command.output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("kapsule-host-exec: cannot reach the host's session bus: unix:path=/nonexistent/kt-bus: ")
            && err.lines().count() == 1,
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_mode_container_says_the_host_is_out_of_reach() {
    let session_mode = kapsule_integration_tests::options(vec![("session_mode", zbus::Variant::Bool(true))]);
    let Scene {
        test, desktop, name, ..
    } = &Scene::start("hostexec-session", session_mode).await;
    let out = output(enter(test, desktop, name, &["kapsule-host-exec", "true"])).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert_eq!(
        err,
        "kapsule-host-exec: this container has a session bus of its own (it was made with --session-mode), so the host's session is out of reach from here\n"
    );
}

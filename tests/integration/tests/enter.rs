//! `kapsule enter` as a plain user (in no Incus group) against the daemon and a real container:
//! identity, working directory, arguments, exit codes and signals, stdin streaming, a terminal
//! that exists inside the container with Konsole's markers and window resizes, sudo, setup done
//! once; and `PrepareEnter` for old clients.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output, Stdio};

use kapsule_integration_tests::{
    DaemonTest, InstanceGuard, TestUser, Tmux, daemon_test, kapsule_binary, sh, test_user, unique_name,
};

/// `kapsule enter <name> <args...>` as the test user, from `dir`, with `stdin`.
fn enter(test: &DaemonTest, user: &TestUser, dir: &str, args: &[&str], stdin: Stdio) -> Output {
    user.kapsule(&test.bus)
        .arg("enter")
        .args(args)
        .current_dir(dir)
        .stdin(stdin)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_user_enters_as_themselves() {
    let test = std::sync::Arc::new(daemon_test().await);
    let user = test_user();
    let groups = text(&Command::new("id").args(["-Gn", &user.name]).output().unwrap().stdout);
    assert!(
        !groups.contains("incus"),
        "the test user must not be in an Incus group: {groups}"
    );
    let name = unique_name("enter");
    let _guard = InstanceGuard(name.clone());
    test.create(&name, Default::default()).await;
    let home = user.home.to_str().unwrap().to_owned();
    // Like a BusyBox or Alpine image: no util-linux su, no shadow-utils. Enter needs neither.
    let (code, out) = sh(
        &test.env.incus,
        &name,
        "rm -f /bin/su /usr/bin/su /usr/sbin/useradd /usr/sbin/groupadd /usr/sbin/usermod",
    )
    .await;
    assert_eq!(code, 0, "{out}");

    let run = {
        let (test, user, name) = (test.clone(), user.clone(), name.clone());
        move |dir: &str, args: &[&str]| {
            let mut all = vec![name.as_str(), "--"];
            all.extend_from_slice(args);
            enter(&test, &user, dir, &all, Stdio::null())
        }
    };

    // Their uid, and the setup happened on the way (once).
    let (r, h) = (run.clone(), home.clone());
    let out = blocking(move || r(&h, &["id", "-u"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), user.uid.to_string());
    assert!(test.manager.is_user_setup(&name, user.uid).await.unwrap());
    let passwd_before = sh(&test.env.incus, &name, "stat -c %Y%N /etc/passwd; md5sum /etc/passwd")
        .await
        .1;

    // The working directory is where they stand (their home exists inside: it is mounted).
    let (r, h) = (run.clone(), home.clone());
    let out = blocking(move || r(&h, &["pwd"])).await;
    assert_eq!(text(&out.stdout).trim(), home);
    // A directory the container does not have: the session starts in the home instead.
    let host_only = tempfile::tempdir().unwrap();
    std::fs::set_permissions(host_only.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (r, d) = (run.clone(), host_only.path().to_str().unwrap().to_owned());
    let out = blocking(move || r(&d, &["pwd"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), format!("/home/{}", user.name));

    // Arguments exactly as given: no shell re-splits or expands them.
    let (r, h) = (run.clone(), home.clone());
    let out = blocking(move || r(&h, &["printf", "%s|", "a b", "$HOME", "*", ""])).await;
    assert_eq!(text(&out.stdout), "a b|$HOME|*||");

    // Exit codes and signals are the CLI's own.
    let (r, h) = (run.clone(), home.clone());
    let out = blocking(move || r(&h, &["sh", "-c", "exit 7"])).await;
    assert_eq!(out.status.code(), Some(7));
    let (r, h) = (run.clone(), home.clone());
    let out = blocking(move || r(&h, &["sh", "-c", "kill -TERM $$"])).await;
    assert_eq!(out.status.signal(), Some(15), "killed by the same signal");

    // Passwordless sudo.
    let (r, h) = (run.clone(), home.clone());
    let out = blocking(move || r(&h, &["sudo", "-n", "id", "-u"])).await;
    assert_eq!(
        (out.status.code(), text(&out.stdout).trim().to_owned()),
        (Some(0), "0".into())
    );

    // 1 MiB through stdin and stdout, byte-exact, with no relay in between.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let data: Vec<u8> = (0..1024 * 1024)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&input, &data).unwrap();
    let (t, u, n, h) = (test.clone(), user.clone(), name.clone(), home.clone());
    let out = blocking(move || {
        let stdin = std::fs::File::open(input).unwrap();
        enter(&t, &u, &h, &[&n, "--", "cat"], Stdio::from(stdin))
    })
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        out.stdout == data,
        "stdin arrived intact ({} bytes back)",
        out.stdout.len()
    );

    // The setup was not done again.
    let passwd_after = sh(&test.env.incus, &name, "stat -c %Y%N /etc/passwd; md5sum /etc/passwd")
        .await
        .1;
    assert_eq!(passwd_before, passwd_after);

    // After a restart the init has another pid: the remembered one is checked, not trusted.
    let seen = test.follow(test.manager.stop_container(&name, true)).await;
    assert_eq!(seen.last().unwrap(), "Completed(true, \"\")");
    // The enter that starts it waits for the boot's sockets: the user's `systemctl` reaches the
    // system bus at once (before, it said "Failed to connect to bus").
    let (r, h) = (run.clone(), home.clone());
    let out = blocking(move || {
        r(
            &h,
            &[
                "sh",
                "-c",
                "id -u && systemctl show -p ActiveState --value sockets.target",
            ],
        )
    })
    .await;
    assert!(out.status.success(), "enter starts it again: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{}\nactive\n", user.uid));

    // An explicit --cwd that does not exist inside is an error, in one line.
    let (t, u, n, h) = (test.clone(), user.clone(), name.clone(), home.clone());
    let out = blocking(move || {
        enter(
            &t,
            &u,
            &h,
            &["--cwd", "/nonexistent-kt", &n, "--", "pwd"],
            Stdio::null(),
        )
    })
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("'/nonexistent-kt' does not exist in the container") && stderr.lines().count() == 1,
        "{stderr}"
    );
    let (t, u, h) = (test.clone(), user.clone(), home.clone());
    let out = blocking(move || enter(&t, &u, &h, &["kt-no-such-box", "--", "true"], Stdio::null())).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("Container 'kt-no-such-box' does not exist"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_terminal_the_session_has_one_inside_the_container() {
    let test = std::sync::Arc::new(daemon_test().await);
    let user = test_user();
    let name = unique_name("pty");
    let _guard = InstanceGuard(name.clone());
    test.create(&name, Default::default()).await;

    // `script` gives the CLI a terminal; the session's `tty` names one that exists inside.
    let inner = format!(
        "{} enter {name} -- sh -c 'tty; test -c \"$(tty)\" && echo is-a-terminal-here'",
        kapsule_binary().display()
    );
    let (t, u) = (test.clone(), user.clone());
    let out = blocking(move || {
        u.command("script")
            .args(["-qec", &inner, "/dev/null"])
            .current_dir(&u.home)
            .env("KAPSULE_BUS_ADDRESS", &t.bus.address)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", text(&out.stderr));
    let push = format!("\x1b]777;container;push;{name};kapsule\x07");
    let pop = "\x1b]777;container;pop;;\x07";
    assert!(stdout.starts_with(&push), "push marker first: {stdout:?}");
    assert!(stdout.ends_with(pop), "pop marker last: {stdout:?}");
    assert!(stdout.contains("/dev/pts/"), "{stdout:?}");
    assert!(stdout.contains("is-a-terminal-here"), "{stdout:?}");

    // A window resize reaches the session: tmux resizes the CLI's terminal.
    let tmux = Tmux::new();
    let inner = format!(
        "env KAPSULE_BUS_ADDRESS={} setpriv --reuid={} --regid={} --init-groups env HOME={} {} enter {name} -- \
         sh -c 'stty size; trap \"stty size\" WINCH; while :; do sleep 0.2; done'",
        test.bus.address,
        user.uid,
        user.gid,
        user.home.display(),
        kapsule_binary().display()
    );
    tmux.run(&["new-session", "-d", "-x", "100", "-y", "30", "-s", "kt", &inner]);
    tmux.wait_for("30 100").await;
    tmux.run(&["resize-window", "-t", "kt", "-x", "120", "-y", "40"]);
    tmux.wait_for("40 120").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_enter_serves_old_clients_without_exposing_the_environment() {
    let test = daemon_test().await;
    let user = test_user();
    let name = unique_name("prep");
    let _guard = InstanceGuard(name.clone());
    test.create(&name, Default::default()).await;
    let call = |container: &str, workdir: &str| {
        let out = user
            .call_manager(
                &test.bus,
                &["--json=short"],
                "PrepareEnter",
                "sass",
                &[container, "1", "bash", workdir],
            )
            .env("SECRET_TOKEN", "hunter2")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(reply["type"], "(bsas)", "one struct, as the original sent it");
        reply["data"][0].clone()
    };
    let home = user.home.to_str().unwrap();
    let reply = call(&name, home);
    assert_eq!(
        reply,
        serde_json::json!([true, "", ["kapsule", "enter", "--cwd", home, name, "--", "bash"]]),
        "a command that enters, with nothing of the environment on it"
    );
    assert!(
        test.manager.is_user_setup(&name, user.uid).await.unwrap(),
        "prepared: set up"
    );
    // A directory the container does not have is left out (the home is used).
    let reply = call(&name, "/nonexistent-kt");
    assert_eq!(reply[2], serde_json::json!(["kapsule", "enter", name, "--", "bash"]));
    // Expected failures come back in-band.
    let reply = call("kt-no-such-box", home);
    assert_eq!(
        reply,
        serde_json::json!([false, "Container 'kt-no-such-box' does not exist", []])
    );
}

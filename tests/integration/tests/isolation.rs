//! What no user's call and no container can reach through the root daemon: a descriptor the
//! daemon holds (another call's, received over D-Bus) never reaches a helper, a session or a
//! root command in a container; a container's symlinks never lead the daemon's reads and writes
//! onto a mount (the host's `/` at `/.kapsule/host`); a session is confined as the container's
//! own processes are (capabilities, seccomp policy); an operation on the bus is seen by its
//! caller alone.

use std::os::fd::AsFd;

use kapsule_integration_tests::{
    DaemonTest, InstanceGuard, RemoveOnDrop, collect_operation_signals, daemon_test, kapsule_signals, options, sh,
    test_user, unique_name,
};

/// `kapsule enter NAME -- COMMAND…` as the test user, through the test's bus.
fn enter(test: &DaemonTest, name: &str, command: &[&str]) -> std::process::Output {
    test_user()
        .kapsule(&test.bus)
        .args(["enter", name, "--"])
        .args(command)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The descriptor numbers an `ls -l /proc/self/fd/` printed.
fn numbers(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|line| line.split_whitespace().nth(8))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_descriptor_the_daemon_holds_reaches_a_session_or_a_root_command() {
    let test = daemon_test().await;
    let name = unique_name("fds");
    let _guard = InstanceGuard(name.clone());

    // A file only root may read, held open by the daemon's process without close-on-exec, as the
    // descriptors of a call in flight were (the daemon runs in this process).
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("kt-secret");
    std::fs::write(&secret, "root only\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let held = rustix::fs::open(&secret, rustix::fs::OFlags::RDONLY, rustix::fs::Mode::empty()).unwrap();
    let flags = rustix::io::fcntl_getfd(held.as_fd()).unwrap();
    assert!(
        !flags.contains(rustix::io::FdFlags::CLOEXEC),
        "the held descriptor is inheritable"
    );

    // A root command of the daemon's in the container (a create's init hook), and a session.
    let hook = "ls -l /proc/self/fd/ > /root/kt-fds";
    test.create(&name, options(vec![("init_hooks", zbus::Variant::from(vec![hook]))]))
        .await;
    let (code, by_root) = sh(&test.env.incus, &name, "cat /root/kt-fds").await;
    assert_eq!(code, 0, "{by_root}");
    let out = enter(&test, &name, &["ls", "-l", "/proc/self/fd/"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let in_session = text(&out.stdout);

    for (who, listing) in [("the root command", &by_root), ("the session", &in_session)] {
        assert!(
            !listing.contains("kt-secret"),
            "{who} has the daemon's descriptor:\n{listing}"
        );
        // stdin, stdout, stderr and the directory `ls` reads: nothing else came with it.
        assert_eq!(numbers(listing), ["0", "1", "2", "3"], "{who}:\n{listing}");
    }
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_containers_symlinks_never_lead_the_daemon_onto_a_host_directory() {
    let test = daemon_test().await;
    let name = unique_name("xdev");
    let _guard = InstanceGuard(name.clone());
    test.create(&name, Default::default()).await;

    // Host directories the container names through /.kapsule/host (the host's `/`): one for
    // /etc/sudoers.d, one for the whole /etc (with the user database in it, so a write would
    // find what it looks for).
    let sudoers = std::path::PathBuf::from(format!("/tmp/{}", unique_name("sudoers")));
    let etc = std::path::PathBuf::from(format!("/tmp/{}", unique_name("etc")));
    let _cleanup = (RemoveOnDrop(sudoers.clone()), RemoveOnDrop(etc.clone()));
    std::fs::create_dir(&sudoers).unwrap();
    // The container's boot is waited for first: its own services write /etc as they start
    // (dockerd its key.json), and only the daemon's writes are this test's business.
    let script = format!(
        "systemctl is-system-running --wait >/dev/null; \
         rm -rf /etc/sudoers.d && ln -s /.kapsule/host{} /etc/sudoers.d && cp -a /etc /.kapsule/host{}",
        sudoers.display(),
        etc.display()
    );
    let (code, out) = sh(&test.env.incus, &name, &script).await;
    assert_eq!(code, 0, "{out}");
    let listing = |dir: &std::path::Path| {
        let mut files: Vec<(String, Vec<u8>)> = walk(dir);
        files.sort();
        files
    };
    let etc_before = listing(&etc);

    let enter_as_user = || enter(&test, &name, &["id", "-un"]);
    // /etc/sudoers.d leads onto the host: the setup fails, saying so, and writes nothing there.
    let out = enter_as_user();
    assert!(!out.status.success(), "the setup went through the host directory");
    let said = text(&out.stderr);
    assert!(
        said.contains("/etc/sudoers.d") && said.contains("leads out of the container's own files"),
        "{said}"
    );
    assert_eq!(
        std::fs::read_dir(&sudoers).unwrap().count(),
        0,
        "a host file was written"
    );

    // /etc itself leads onto the host: the same.
    let (code, out) = sh(
        &test.env.incus,
        &name,
        &format!(
            "rm /etc/sudoers.d && mv /etc /etc.own && ln -s /.kapsule/host{} /etc",
            etc.display()
        ),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let out = enter_as_user();
    assert!(!out.status.success(), "the setup went through the host directory");
    assert!(
        text(&out.stderr).contains("leads out of the container's own files"),
        "{}",
        text(&out.stderr)
    );
    let changed = changed_files(&etc_before, &listing(&etc));
    assert!(changed.is_empty(), "host files were changed: {changed:?}");
}

/// The names of the files that are in only one of two listings or differ between them.
fn changed_files(before: &[(String, Vec<u8>)], after: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut changed: Vec<String> = before
        .iter()
        .filter(|file| !after.contains(file))
        .chain(after.iter().filter(|file| !before.contains(file)))
        .map(|(name, _)| name.clone())
        .collect();
    changed.dedup();
    changed
}

/// Every regular file below `dir` with its contents.
fn walk(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            files.extend(walk(&entry.path()));
        } else if kind.is_file() {
            files.push((entry.path().display().to_string(), std::fs::read(entry.path()).unwrap()));
        }
    }
    files
}

/// The `CapBnd` and `NoNewPrivs` lines of a `/proc/<pid>/status`.
fn confinement(status: &str) -> String {
    status
        .lines()
        .filter(|l| l.starts_with("CapBnd:") || l.starts_with("NoNewPrivs:"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_confined_as_the_containers_own_processes() {
    let test = daemon_test().await;
    let name = unique_name("confined");
    let _guard = InstanceGuard(name.clone());
    test.create(&name, Default::default()).await;

    // What the container's init has: LXC takes capabilities away from it (sys_module, sys_time
    // and more), which the daemon (and a helper it starts) still has.
    let (code, init) = sh(&test.env.incus, &name, "cat /proc/1/status").await;
    assert_eq!(code, 0, "{init}");
    let init = confinement(&init);
    let daemons = confinement(&std::fs::read_to_string("/proc/self/status").unwrap());
    assert_ne!(
        init, daemons,
        "the container's init is as unconfined as the daemon: nothing to check"
    );

    // A session, and sudo in it, have no more than the init.
    let out = enter(
        &test,
        &name,
        &[
            "sh",
            "-c",
            "cat /proc/self/status; echo ---; sudo cat /proc/self/status",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    let (session, with_sudo) = shown.split_once("---\n").expect("both");
    assert_eq!(confinement(session), init, "the session");
    assert_eq!(confinement(with_sudo), init, "sudo in the session");
    // A capability the container lacks is out of reach in it: root's effective set in a
    // session has no CAP_SYS_MODULE.
    let out = enter(&test, &name, &["sudo", "sh", "-c", "grep CapEff /proc/self/status"]);
    let effective = u64::from_str_radix(text(&out.stdout).trim().trim_start_matches("CapEff:").trim(), 16).unwrap();
    const CAP_SYS_MODULE: u32 = 16;
    assert_eq!(
        effective & (1 << CAP_SYS_MODULE),
        0,
        "root in the session may load modules"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_held_to_the_containers_seccomp_policy() {
    let test = daemon_test().await;
    let name = unique_name("seccomp");
    let _guard = InstanceGuard(name.clone());
    test.create(&name, Default::default()).await;
    let incus = &test.env.incus;

    // Two file systems the container's root mounted, and its init under the container's filter.
    let (code, out) = sh(
        incus,
        &name,
        "mkdir -p /mnt/a /mnt/b && mount -t tmpfs a /mnt/a && mount -t tmpfs b /mnt/b && grep Seccomp: /proc/1/status",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.trim(),
        "Seccomp:\t2",
        "the container has no seccomp filter: nothing to check"
    );
    // The container's own root may not force an unmount (the policy's `reject_force_umount`).
    let (code, out) = sh(incus, &name, "umount -f /mnt/a; echo $?; mountpoint /mnt/a").await;
    assert_eq!(code, 0, "{out}");
    let (status, still) = out.split_once('\n').unwrap();
    assert_ne!(status, "0", "the container's root forced an unmount");
    assert_eq!(still.trim(), "/mnt/a is a mountpoint");

    // Neither may root in a session; a plain unmount works there as in the container.
    let script = "grep Seccomp: /proc/self/status; sudo umount -f /mnt/b; echo forced: $?; \
                  mountpoint /mnt/b; sudo umount /mnt/b && echo unmounted";
    let out = enter(&test, &name, &["sh", "-c", script]);
    let shown = text(&out.stdout);
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 4, "{shown}{}", text(&out.stderr));
    assert_eq!(lines[0], "Seccomp:\t2", "the session has no seccomp filter");
    assert_ne!(lines[1], "forced: 0", "root in the session forced an unmount");
    assert_eq!(lines[2..], ["/mnt/b is a mountpoint", "unmounted"]);

    // Without the policy (Incus's copy gone), no session starts unconfined: the enter is refused,
    // saying why.
    let policy = incus.socket().parent().unwrap().join("security/seccomp").join(&name);
    let aside = policy.with_extension("kt-aside");
    std::fs::rename(&policy, &aside).unwrap();
    let out = enter(&test, &name, &["true"]);
    std::fs::rename(&aside, &policy).unwrap();
    assert!(
        !out.status.success(),
        "a session started without the container's seccomp policy"
    );
    let said = text(&out.stderr);
    assert!(
        said.contains(&format!(
            "Cannot hold a session in '{name}' to the container's seccomp policy"
        )),
        "{said}"
    );
    assert!(enter(&test, &name, &["true"]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_on_the_bus_is_its_callers_alone() {
    use futures_util::StreamExt;
    let test = daemon_test().await;
    let name = unique_name("private");
    let _guard = InstanceGuard(name.clone());
    test.create(&name, Default::default()).await;

    // Another client of the bus (another program, another user's) listening for every signal the
    // daemon sends; and the caller, following its operation as every client does.
    let other = test.bus.connect().await;
    let mut overheard = kapsule_signals(&other).await;
    let mut signals = kapsule_signals(&test.client).await;
    let path = test.manager.stop_container(&name, false).await.unwrap();
    let seen = collect_operation_signals(&mut signals, path.as_str()).await;
    assert_eq!(
        seen.last().map(String::as_str),
        Some("Completed(true, \"\")"),
        "{seen:?}"
    );

    // The caller reads what its operation is; the other client is refused.
    let operation = |connection: &zbus::Connection| {
        kapsule_dbus::OperationProxy::builder(connection)
            .path(path.clone())
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
    };
    let mine = operation(&test.client).await.unwrap();
    assert_eq!(mine.status().await.unwrap(), "completed");
    assert!(mine.description().await.unwrap().contains(&name));
    let theirs = operation(&other).await.unwrap();
    for refused in [theirs.description().await, theirs.target().await, theirs.status().await] {
        let refused = refused.unwrap_err().to_string();
        assert!(
            refused.contains("AccessDenied") && refused.contains("its caller's own"),
            "{refused}"
        );
    }
    // The object manager tells anyone that it exists, but nothing of what it is.
    let objects = zbus::fdo::ObjectManagerProxy::builder(&other)
        .destination("org.kde.kapsule")
        .path("/org/kde/kapsule")
        .build()
        .await
        .unwrap()
        .get_managed_objects()
        .await
        .unwrap();
    let announced = objects
        .iter()
        .find(|(p, _)| p.as_str() == path.as_str())
        .map(|(_, interfaces)| {
            interfaces
                .iter()
                .map(|(i, props)| (i.to_string(), props.len()))
                .collect::<Vec<_>>()
        });
    assert_eq!(
        announced,
        Some(vec![("org.kde.kapsule.Operation".to_owned(), 0)]),
        "{objects:?}"
    );

    // None of its signals reached the other client; what concerns everyone (the list of
    // containers changed) did.
    let mut heard = Vec::new();
    while let Ok(Some(Ok(message))) = tokio::time::timeout(std::time::Duration::from_secs(1), overheard.next()).await {
        let header = message.header();
        heard.push((
            header.path().map(|p| p.to_string()).unwrap_or_default(),
            header.member().map(|m| m.to_string()).unwrap_or_default(),
        ));
    }
    assert!(
        heard.iter().any(|(_, member)| member == "ContainersChanged"),
        "the other client heard nothing at all: nothing to check ({heard:?})"
    );
    assert!(
        !heard.iter().any(|(p, _)| *p == path.as_str()),
        "the other client heard the operation: {heard:?}"
    );
}

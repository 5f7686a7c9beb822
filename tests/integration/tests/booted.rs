//! Tier 3: Kapsule installed as KDE Linux installs it, in a booted system. A privileged container
//! from the OS image (`tests/env/image/build-os.sh`: Debian with systemd as PID 1, polkitd,
//! dbus, Incus behind its socket) stands in for the OS. The sysext `cargo xtask sysext` builds,
//! with a small BusyBox image bundled the way a vendor would, is placed in
//! `/var/lib/extensions` and merged by systemd at boot. Then, as a user would see it: first
//! boot initializes once, the daemon starts on a bus call and on a socket connection and goes
//! when idle, a user in the administrators' group creates and enters a container on the nested
//! Incus while another is refused by polkit, and the second boot initializes nothing.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kapsule_integration_tests::{busybox_rootfs, pack_image, unique_name};

/// The OS container, deleted when dropped.
struct Os(String);

impl Drop for Os {
    fn drop(&mut self) {
        let _ = Command::new("incus").args(["delete", "--force", &self.0]).output();
    }
}

/// What a command run in the OS printed, and how it ended.
struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Os {
    /// `sh -c script` as root in the OS, bounded in time.
    fn sh(&self, script: &str) -> Ran {
        let out = Command::new("timeout")
            .args(["300", "incus", "exec", &self.0, "--", "sh", "-c", script])
            .output()
            .unwrap();
        Ran {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `script` as `user` in a login session of their own at the computer (su -l through PAM:
    /// logind makes a session on seat0, local and active, as a desktop login is; polkit's
    /// "active local session" is that).
    fn as_user(&self, user: &str, script: &str) -> Ran {
        self.sh(&format!(
            "XDG_SEAT=seat0 XDG_SESSION_TYPE=tty XDG_SESSION_CLASS=user su -l {user} -c '{script}'"
        ))
    }

    /// Stdout of `script`, which must succeed.
    fn must(&self, script: &str) -> String {
        let ran = self.sh(script);
        assert!(ran.ok, "`{script}` failed in the OS:\n{}{}", ran.stdout, ran.stderr);
        ran.stdout
    }

    /// One property of a unit, as `systemctl show` gives it.
    fn unit(&self, unit: &str, property: &str) -> String {
        self.must(&format!("systemctl show {unit} --value -p {property}"))
            .trim()
            .to_owned()
    }

    /// Waits until the boot is over and says how it went; every unit must have succeeded.
    fn booted(&self) {
        // Right after `incus start`, exec fails until the container's init runs (and until
        // systemd made /run/systemd/system, systemctl says "offline"); then `systemctl` fails
        // ("Failed to connect to bus") until systemd listens on its private socket:
        // `is-system-running --wait` prints a state only once it could ask.
        let started = Instant::now();
        while !self.sh("test -d /run/systemd/system").ok {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "cannot run anything in the OS"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let state = loop {
            let state = self.sh("systemctl is-system-running --wait");
            if !state.stdout.trim().is_empty() {
                break state;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "cannot ask the OS's systemd how the boot went: {}",
                state.stderr
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let failed = self.sh("systemctl --failed --no-legend --plain");
        assert_eq!(
            state.stdout.trim(),
            "running",
            "the OS did not boot cleanly; failed units:\n{}\n{}",
            failed.stdout,
            self.sh("journalctl -b --no-pager -p warning -o short-monotonic | tail -40")
                .stdout
        );
    }

    /// Waits up to `limit` for `unit` to be in `state`; returns how long it took.
    fn wait_for(&self, unit: &str, state: &str, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if self.unit(unit, "ActiveState") == state {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < limit,
                "{unit} is not {state} after {limit:?}:\n{}",
                self.sh(&format!("journalctl -b -u {unit} --no-pager | tail -20"))
                    .stdout
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The sysext as `cargo xtask sysext` builds it, with a BusyBox image bundled as `busybox`.
fn sysext_tree(out: &Path) -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let status = Command::new(env!("CARGO"))
        .args(["xtask", "sysext"])
        .arg(out)
        .current_dir(&root)
        .status()
        .unwrap();
    assert!(status.success(), "cargo xtask sysext failed");
    let tree = out.join("kapsule");
    let scratch = out.join("busybox");
    busybox_rootfs(&scratch);
    let (metadata, rootfs) = pack_image(&scratch, "BusyBox bundled for the booted test");
    let bundled = tree.join("usr/share/kapsule/images/busybox");
    std::fs::create_dir_all(&bundled).unwrap();
    std::fs::copy(metadata, bundled.join("metadata.tar.gz")).unwrap();
    std::fs::copy(rootfs, bundled.join("rootfs.tar.gz")).unwrap();
    tree
}

#[test]
fn tier3_kapsule_as_installed_on_a_booted_system() {
    let os_image = std::env::var("KAPSULE_TEST_OS_IMAGE").unwrap_or_else(|_| "kapsule-test-os".into());
    let out = tempfile::tempdir().unwrap();
    let tree = sysext_tree(out.path());

    let os = Os(unique_name("os"));
    let made = Command::new("incus")
        .args(["init", &os_image, &os.0, "--quiet"])
        .args(["-c", "security.privileged=true", "-c", "security.nesting=true"])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "cannot make the OS container from '{os_image}' (run tests/env/up.sh): {}",
        String::from_utf8_lossy(&made.stderr)
    );
    // A directory extension: what systemd-sysext merges from a .raw image, without the loop
    // devices an image file would need inside a container.
    let pushed = Command::new("incus")
        .args(["file", "push", "--quiet", "-r", "-p"])
        .arg(&tree)
        .arg(format!("{}/var/lib/extensions/", os.0))
        .output()
        .unwrap();
    assert!(pushed.status.success(), "{}", String::from_utf8_lossy(&pushed.stderr));
    let started = Command::new("incus").args(["start", &os.0]).output().unwrap();
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));

    // First boot: merged, initialized once, nothing failed.
    os.booted();
    assert!(
        os.must("systemd-sysext status").contains("kapsule"),
        "the sysext is not merged"
    );
    assert_eq!(
        os.must("kap --version"),
        format!("kapsule {}\n", env!("CARGO_PKG_VERSION")),
        "the CLI is on PATH by its short name"
    );
    assert_eq!(os.unit("kapsule-init.service", "Result"), "success");
    assert_eq!(os.unit("kapsule-init.service", "ExecMainStatus"), "0");
    let init_log = os.must("journalctl -b -u kapsule-init -o cat --no-pager");
    for line in [
        "Incus is ready",
        "Created storage pool 'default' (driver dir) at /var/lib/incus/storage-pools/default",
        "Imported image 'busybox'",
        "Kapsule is initialized (stamp: /var/lib/kapsule/initialized)",
    ] {
        assert!(
            init_log.contains(line),
            "kapsule-init did not say {line:?}:\n{init_log}"
        );
    }
    let stamp = os.must("cat /var/lib/kapsule/initialized");
    assert_eq!(stamp, format!("kapsule-init {}\n", env!("CARGO_PKG_VERSION")));
    assert!(os.must("incus storage list -f csv").contains("default,dir,"));
    assert!(os.must("incus image alias list -f csv").contains("busybox,"));

    // Nothing runs until asked: the socket listens, the daemon is not started.
    assert_eq!(os.unit("kapsule-daemon.socket", "ActiveState"), "active");
    assert_eq!(os.unit("kapsule-daemon.service", "ActiveState"), "inactive");
    // A short idle period for this test (the shipped unit waits 60 s), as an admin's drop-in.
    os.must(
        "mkdir -p /etc/systemd/system/kapsule-daemon.service.d && printf '[Service]\\nExecStart=\\n\
         ExecStart=/usr/lib/kapsule/kapsule-daemon --idle-exit=4\\n' \
         >/etc/systemd/system/kapsule-daemon.service.d/idle.conf && systemctl daemon-reload",
    );

    // D-Bus activation: a bus call on an idle system starts the daemon and is answered.
    let version = os.must(
        "busctl call org.kde.kapsule /org/kde/kapsule org.freedesktop.DBus.Properties Get ss \
         org.kde.kapsule.Manager Version",
    );
    assert_eq!(version.trim(), format!("v s \"{}\"", env!("CARGO_PKG_VERSION")));
    assert_eq!(os.unit("kapsule-daemon.service", "ActiveState"), "active");
    // The unit's bounds hold for the running daemon.
    for (property, value) in [
        ("MemoryHigh", "268435456"),
        ("MemoryMax", "536870912"),
        ("TasksMax", "256"),
    ] {
        assert_eq!(os.unit("kapsule-daemon.service", property), value, "{property}");
    }
    let limits = os.must("cat /proc/$(systemctl show -p MainPID --value kapsule-daemon)/limits");
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.split_whitespace().nth(3) == Some("16384")),
        "{limits}"
    );
    // ...and it goes once idle, cleanly, giving its name up.
    let gone_after = os.wait_for("kapsule-daemon.service", "inactive", Duration::from_secs(60));
    assert_eq!(os.unit("kapsule-daemon.service", "Result"), "success");
    assert!(
        os.must("journalctl -b -u kapsule-daemon -o cat --no-pager")
            .contains("idle for 4s: exiting")
    );
    let owned = os.must(
        "busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus NameHasOwner s \
         org.kde.kapsule",
    );
    assert_eq!(owned.trim(), "b false", "the name was given up");
    eprintln!("the daemon exited {gone_after:?} after answering");

    // Users: alice is in the administrators' group the shipped polkit rule names, bob is not.
    os.must("groupadd -f wheel && useradd -m -s /bin/bash -G wheel alice && useradd -m -s /bin/bash bob");

    // Socket activation: `kapsule list` with no usable bus goes through the socket, which starts
    // the daemon.
    let listed = os.as_user("alice", "DBUS_SYSTEM_BUS_ADDRESS=unix:path=/nonexistent kapsule list");
    assert!(listed.ok, "{}{}", listed.stdout, listed.stderr);
    assert_eq!(os.unit("kapsule-daemon.service", "ActiveState"), "active");

    // alice creates and enters a container on the OS's Incus, from the bundled image.
    let created = os.as_user("alice", "kapsule create box --image local:busybox");
    assert!(created.ok, "{}{}", created.stdout, created.stderr);
    assert!(created.stderr.contains("Container 'box' created"), "{}", created.stderr);
    let entered = os.as_user("alice", "kapsule enter box -- sh -c \"id -un; ulimit -n\"");
    assert!(entered.ok, "{}{}", entered.stdout, entered.stderr);
    // The daemon's raised descriptor limit stays the daemon's: a session has a login's.
    assert_eq!(entered.stdout, "alice\n1024\n");
    // bob may not: polkit is in force (no agent to ask an admin's password of).
    let refused = os.as_user("bob", "kapsule create other --image local:busybox");
    assert!(!refused.ok);
    assert!(
        refused
            .stderr
            .contains("You are not allowed to manage Kapsule containers"),
        "{}",
        refused.stderr
    );
    assert!(!os.must("incus list -f csv -c n").contains("other"));

    // Host configuration: with the daemon gone idle, a DNS change on the host starts it
    // (kapsule-host-sync.path), and it pushes the change into the running container.
    assert_eq!(os.unit("kapsule-host-sync.path", "ActiveState"), "active");
    os.wait_for("kapsule-daemon.service", "inactive", Duration::from_secs(60));
    os.must("printf 'nameserver 192.0.2.53\n# changed by the booted test\n' > /etc/resolv.conf");
    let started = Instant::now();
    loop {
        let inside = os.sh("incus exec box -- cat /etc/resolv.conf");
        if inside.stdout.contains("# changed by the booted test") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the DNS change did not reach the container: {}{}\n{}",
            inside.stdout,
            inside.stderr,
            os.must("journalctl -b -u kapsule-daemon -u kapsule-host-sync.path -o cat --no-pager")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!(
        "a DNS change reached the container in {:?}, the daemon started by the path unit",
        started.elapsed()
    );

    // Second boot: merged again, not initialized again, the container still there.
    let restarted = Command::new("incus")
        .args(["restart", &os.0, "--timeout", "60"])
        .output()
        .unwrap();
    assert!(
        restarted.status.success(),
        "{}",
        String::from_utf8_lossy(&restarted.stderr)
    );
    os.booted();
    assert!(os.must("systemd-sysext status").contains("kapsule"));
    assert_eq!(os.unit("kapsule-init.service", "ConditionResult"), "no");
    assert_eq!(os.unit("kapsule-init.service", "ExecMainStartTimestampMonotonic"), "0");
    assert_eq!(os.must("cat /var/lib/kapsule/initialized"), stamp);
    let listed = os.as_user("alice", "kapsule list");
    assert!(
        listed.ok && listed.stdout.contains("box"),
        "{}{}",
        listed.stdout,
        listed.stderr
    );
}

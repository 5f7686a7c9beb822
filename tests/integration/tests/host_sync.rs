//! The host's timezone, locale and DNS in its containers. The daemon reads them from a directory
//! standing in for the host's `/etc` (the machine's own is not the tests' to change), pushes
//! them at creation, within seconds of a change while the container runs (inotify), through the
//! image's `/.kapsule/sync/<kind>` scripts where it has them (the Debian image's own, from
//! images/debian) and the built-in way where not, and at the next start for a change made while
//! the container was stopped.
//!
//! Runs alone (`.config/nextest.toml`): a daemon that syncs pushes into every running Kapsule
//! container, and other tests' containers are not this test's to change.

use std::path::Path;
use std::time::{Duration, Instant};

use kapsule_integration_tests::{InstanceGuard, daemon_test_with, sh, test_settings, unique_name};

/// Replaces `path` the way tools do (a new file renamed over the old one).
fn replace(path: &Path, contents: &str) {
    let new = path.with_extension("kapsule-new");
    std::fs::write(&new, contents).unwrap();
    std::fs::rename(&new, path).unwrap();
}

/// Points the host's `localtime` at `zone`, as `timedatectl set-timezone` does.
fn set_zone(etc: &Path, zone: &str) {
    let new = etc.join("localtime.kapsule-new");
    std::os::unix::fs::symlink(format!("../usr/share/zoneinfo/{zone}"), &new).unwrap();
    std::fs::rename(&new, etc.join("localtime")).unwrap();
}

/// Waits (at most `limit`) until `script` run in the container prints `expected`; returns how long.
async fn until(incus: &kapsule_incus::Client, name: &str, script: &str, expected: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (_, out) = sh(incus, name, script).await;
        if out == expected {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "after {limit:?}, `{script}` still says {out:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosts_timezone_locale_and_dns_reach_its_containers() {
    let host = tempfile::tempdir().unwrap();
    let etc = host.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    set_zone(&etc, "Asia/Tokyo");
    std::fs::write(etc.join("locale.conf"), "LANG=C.UTF-8\n").unwrap();
    std::fs::write(etc.join("resolv.conf"), "nameserver 192.0.2.1\n").unwrap();
    let mut settings = test_settings();
    settings.host_sync = kapsule_daemon::HostSync::From(host.path().to_owned());
    let test = daemon_test_with(settings).await;
    let incus = &test.env.incus;

    // At creation, through the image's own scripts (images/debian/files/.kapsule/sync).
    let name = unique_name("sync");
    let _guard = InstanceGuard(name.clone());
    let seen = test
        .create_from(&name, &format!("local:{}", test.env.image), Default::default())
        .await;
    for kind in ["timezone", "locale", "dns"] {
        let line = format!("Message(4, \"Host configuration: {kind}: by the image's script\")");
        assert!(seen.contains(&line), "{line} in {seen:?}");
    }
    let (code, out) = sh(
        incus,
        &name,
        "readlink /etc/localtime; cat /etc/timezone; date +%Z; cat /etc/resolv.conf /etc/default/locale",
    )
    .await;
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            "/usr/share/zoneinfo/Asia/Tokyo\nAsia/Tokyo\nJST\nnameserver 192.0.2.1\nLANG=C.UTF-8\n"
        )
    );

    // A change on the host reaches the running container within seconds.
    replace(&etc.join("resolv.conf"), "nameserver 192.0.2.2\nsearch example.test\n");
    let took = until(
        incus,
        &name,
        "cat /etc/resolv.conf",
        "nameserver 192.0.2.2\nsearch example.test\n",
        Duration::from_secs(10),
    )
    .await;
    eprintln!("a DNS change reached the container in {took:?}");
    set_zone(&etc, "Europe/Lisbon");
    until(incus, &name, "date +%Z", "WET\n", Duration::from_secs(10)).await;
    // A locale the image has not generated becomes C.UTF-8 there (programs would warn at every
    // start otherwise); the script says so.
    replace(&etc.join("locale.conf"), "LANG=\"de_DE.UTF-8\"\nLC_TIME=en_GB.UTF-8\n");
    until(
        incus,
        &name,
        "cat /etc/default/locale",
        "LANG=C.UTF-8\nLC_TIME=C.UTF-8\n",
        Duration::from_secs(10),
    )
    .await;

    // Without the image's scripts, Kapsule's built-in way: DNS and timezone written, the
    // locale left to the image.
    let (code, out) = sh(incus, &name, "rm -r /.kapsule/sync").await;
    assert_eq!(code, 0, "{out}");
    replace(&etc.join("locale.conf"), "LANG=C.UTF-8\n");
    replace(&etc.join("resolv.conf"), "nameserver 192.0.2.3\n");
    until(
        incus,
        &name,
        "cat /etc/resolv.conf",
        "nameserver 192.0.2.3\n",
        Duration::from_secs(10),
    )
    .await;
    // The pass that wrote DNS saw the locale change too (both files changed before it).
    let (_, out) = sh(incus, &name, "cat /etc/default/locale").await;
    assert_eq!(
        out, "LANG=C.UTF-8\nLC_TIME=C.UTF-8\n",
        "Kapsule itself leaves the locale alone"
    );

    // A change while the container is stopped arrives when it starts.
    let seen = test.follow(test.manager.stop_container(&name, true)).await;
    assert_eq!(seen.last().unwrap(), "Completed(true, \"\")");
    set_zone(&etc, "America/New_York");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = test.follow(test.manager.start_container(&name)).await;
    assert_eq!(seen.last().unwrap(), "Completed(true, \"\")", "{seen:?}");
    assert!(
        seen.iter()
            .any(|s| s == "Message(4, \"Host configuration: timezone: built in\")"),
        "{seen:?}"
    );
    let (_, out) = sh(incus, &name, "readlink /etc/localtime").await;
    assert_eq!(out, "/usr/share/zoneinfo/America/New_York\n");

    // What was pushed is recorded, so nothing is pushed twice.
    let instance = incus.get_instance(&name).await.unwrap();
    for kind in ["timezone", "locale", "dns"] {
        assert!(
            instance.config.contains_key(&format!("user.kapsule.synced.{kind}")),
            "{kind}: {:?}",
            instance.config
        );
    }
}

//! Host networking: a Kapsule container shares the network namespace the daemon is given (the
//! host's by default; in tests one of their own), through `lxc.namespace.share.net`, which Incus
//! 6.0 accepts; and the machine's own network is the same before and after.

use std::process::Command;

use kapsule_incus::FileMeta;
use kapsule_integration_tests::{
    DaemonTest, InstanceGuard, container_request, daemon_test, env, sh, test_network_namespace, unique_name,
};

/// The machine's interfaces and routes, to compare before and after.
fn host_network() -> String {
    let run = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    // Interface names, states and addresses; counters and timers left out.
    let links: Vec<String> = run(&["-o", "link"])
        .lines()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .collect();
    format!(
        "{}\n{}{}{}",
        links.join("\n"),
        run(&["-o", "addr"]),
        run(&["route"]),
        run(&["-6", "route"])
    )
}

/// `net:[<inode>]` of a namespace file.
fn namespace_id(path: &str) -> String {
    let out = Command::new("stat").args(["-L", "-c", "%i", path]).output().unwrap();
    assert!(out.status.success(), "{path}");
    format!("net:[{}]", String::from_utf8(out.stdout).unwrap().trim())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_shares_the_network_namespace_it_is_given() {
    let before = host_network();
    let test: &DaemonTest = &daemon_test().await;
    let incus = &test.env.incus;
    let name = unique_name("net");
    let _guard = InstanceGuard(name.clone());
    test.create(&name, Default::default()).await;

    let netns = test_network_namespace();
    let instance = incus.get_instance(&name).await.unwrap();
    assert!(
        instance.config["raw.lxc"]
            .lines()
            .any(|l| l == format!("lxc.namespace.share.net={}", netns.display())),
        "{}",
        instance.config["raw.lxc"]
    );
    assert!(
        !instance
            .expanded_devices
            .values()
            .any(|d| d.get("type").map(String::as_str) == Some("nic")),
        "no NIC of its own"
    );
    let (code, inside) = sh(incus, &name, "readlink /proc/self/ns/net").await;
    assert_eq!(code, 0);
    assert_eq!(inside.trim(), namespace_id(netns.to_str().unwrap()));
    // Nothing to wait for with a shared network: the unit that would stall boot is masked.
    let (_, target) = sh(
        incus,
        &name,
        "readlink /etc/systemd/system/systemd-networkd-wait-online.service",
    )
    .await;
    assert_eq!(target.trim(), "/dev/null");

    drop(_guard);
    assert_eq!(host_network(), before, "the machine's network is unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_is_the_hosts_own_network() {
    // What the daemon writes by default, applied to a container whose network-changing services
    // are masked first (the test image runs dockerd), so the host's network stays as it is.
    let env = env().await;
    let before = host_network();
    let name = unique_name("hostnet");
    let _guard = InstanceGuard(name.clone());
    let mut request = container_request(&env, &name, false);
    request
        .config
        .insert("raw.lxc".into(), "lxc.namespace.share.net=/proc/self/ns/net\n".into());
    let op = env.incus.create_instance(&request).await.unwrap();
    env.incus.wait_operation(&op.id, None).await.unwrap();
    let root = FileMeta::new(0, 0, 0o755);
    for unit in [
        "docker.service",
        "docker.socket",
        "containerd.service",
        "systemd-networkd.service",
        "systemd-networkd-wait-online.service",
    ] {
        env.incus
            .create_symlink(&name, &format!("/etc/systemd/system/{unit}"), "/dev/null", root)
            .await
            .unwrap();
    }
    let op = env.incus.start_instance(&name).await.unwrap();
    env.incus.wait_operation(&op.id, None).await.unwrap();

    let (code, inside) = sh(&env.incus, &name, "readlink /proc/self/ns/net").await;
    assert_eq!(code, 0);
    let host = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(inside.trim(), host.to_str().unwrap(), "the host's own namespace");

    drop(_guard);
    assert_eq!(host_network(), before, "the machine's network is unchanged");
}

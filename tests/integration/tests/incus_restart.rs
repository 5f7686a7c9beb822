//! Incus restarted under Kapsule, as `systemctl restart incus` does on an update
//! (`tests/env/restart-incusd.sh`: SIGTERM, then a new incusd; containers keep running): during a
//! create (in Incus's own create, and in the daemon's steps after it) and during a session. The
//! daemon lives on; what it made is whole or gone, and the next create and enter work.
//!
//! These run alone (`.config/nextest.toml`): every other test's Incus calls would fail meanwhile.

use std::time::{Duration, Instant};

use kapsule_integration_tests::{
    InstanceGuard, PrivateBus, collect_operation_signals, daemon_process, env, incus_done_with, kapsule_signals,
    test_user, unique_name,
};

fn restart_incusd() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../env/restart-incusd.sh");
    let out = std::process::Command::new("bash").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "restarting incusd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_across_an_incus_restart_is_whole_or_gone_and_works_again() {
    let env = env().await;
    let bus = PrivateBus::start();
    let (mut daemon, client, manager) = daemon_process(&bus).await;
    let image = format!("local:{}", env.image);

    let name = unique_name("irestart");
    let _guard = InstanceGuard(name.clone());
    let started = Instant::now();
    let mut signals = kapsule_signals(&client).await;
    let path = manager
        .create_container(&name, &image, Default::default())
        .await
        .unwrap();
    let seen = collect_operation_signals(&mut signals, path.as_str()).await;
    let length = started.elapsed();
    assert_eq!(seen.last().unwrap(), "Completed(true, \"\")", "{seen:?}");
    let path = manager.delete_container(&name, true).await.unwrap();
    collect_operation_signals(&mut signals, path.as_str()).await;

    // Early: Incus is still making it. Late: the daemon's own steps after Incus started it.
    let mut outcomes = Vec::new();
    for fraction in [0.15, 0.7] {
        let name = unique_name("irestart");
        let _guard = InstanceGuard(name.clone());
        let path = manager
            .create_container(&name, &image, Default::default())
            .await
            .unwrap();
        tokio::time::sleep(length.mul_f64(fraction)).await;
        restart_incusd();
        let seen = collect_operation_signals(&mut signals, path.as_str()).await;
        let last = seen.last().unwrap().clone();
        incus_done_with(&name).await;
        let info = manager.get_container_info(&name).await;
        if last == "Completed(true, \"\")" {
            let info = info.unwrap();
            assert_eq!(info.status, "Running", "at {fraction}: created across the restart");
            let config = env.incus.get_instance(&name).await.unwrap().config;
            assert!(
                !config.contains_key("user.kapsule.pending"),
                "at {fraction}: {config:?}"
            );
            outcomes.push("created");
        } else {
            assert!(
                last.starts_with("Completed(false, \"Creating '"),
                "at {fraction}: {seen:?}"
            );
            assert!(last.len() < 1500, "at {fraction}: a readable error: {last}");
            let e = info.unwrap_err();
            assert!(e.to_string().contains("does not exist"), "at {fraction}: {e}");
            assert!(
                env.incus.get_instance(&name).await.is_err(),
                "at {fraction}: left in Incus"
            );
            let path = manager
                .create_container(&name, &image, Default::default())
                .await
                .unwrap();
            let seen = collect_operation_signals(&mut signals, path.as_str()).await;
            assert_eq!(
                seen.last().unwrap(),
                "Completed(true, \"\")",
                "at {fraction}: again: {seen:?}"
            );
            outcomes.push("failed, removed, made again");
        }
        let out = test_user()
            .kapsule(&bus)
            .args(["enter", &name, "--", "id", "-un"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), test_user().name);
        let path = manager.delete_container(&name, true).await.unwrap();
        let seen = collect_operation_signals(&mut signals, path.as_str()).await;
        assert_eq!(seen.last().unwrap(), "Completed(true, \"\")", "{seen:?}");
    }
    eprintln!("create across an Incus restart: {outcomes:?}");
    let _ = daemon.kill();
    let _ = daemon.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_outlives_an_incus_restart_and_the_next_enter_works() {
    let env = env().await;
    let bus = PrivateBus::start();
    let (mut daemon, client, manager) = daemon_process(&bus).await;
    let user = test_user();
    let name = unique_name("irestart-session");
    let _guard = InstanceGuard(name.clone());
    let mut signals = kapsule_signals(&client).await;
    let path = manager
        .create_container(&name, &format!("local:{}", env.image), Default::default())
        .await
        .unwrap();
    let seen = collect_operation_signals(&mut signals, path.as_str()).await;
    assert_eq!(seen.last().unwrap(), "Completed(true, \"\")", "{seen:?}");
    let session = user
        .kapsule(&bus)
        .args(["enter", &name, "--", "sh", "-c", "sleep 4; echo still here; exit 7"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    restart_incusd();
    let out = tokio::task::spawn_blocking(move || session.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (out.status.code(), String::from_utf8_lossy(&out.stdout).trim()),
        (Some(7), "still here"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.incus.get_instance(&name).await.unwrap().status, "Running");
    let out = user
        .kapsule(&bus)
        .args(["enter", &name, "--", "id", "-un"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        user.name,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
}

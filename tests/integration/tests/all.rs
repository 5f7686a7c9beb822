//! `kapsule stop --all` and `kapsule rm --all` (and `rm` of several names) against real
//! containers: they act on the containers of the user who runs them, not on anyone else's; they
//! ask first, and without a terminal they refuse unless `--yes`; one that fails does not stop the
//! others, and the exit status says so. `kapsule info --format json` is read on the way.
//!
//! Runs alone (`.config/nextest.toml`): `--all` is every container of root's on this Incus, and
//! the tests' daemon clients are root.

use std::process::{Command, Output};

use kapsule_integration_tests::{DaemonTest, InstanceGuard, daemon_test, options, test_user, unique_name};

async fn kapsule(test: &DaemonTest, args: &[&str]) -> Output {
    let mut command = Command::new(kapsule_integration_tests::kapsule_binary());
    command
        .args(args)
        .env("KAPSULE_BUS_ADDRESS", &test.bus.address)
        .stdin(std::process::Stdio::null());
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn status(test: &DaemonTest, name: &str) -> String {
    match test.env.incus.get_instance(name).await {
        Ok(instance) => instance.status,
        Err(e) if e.is_not_found() => "gone".to_owned(),
        Err(e) => panic!("{name}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_all_and_rm_all_act_on_yours_and_ask_first() {
    let test = &daemon_test().await;
    let user = test_user();
    let names: Vec<String> = (0..3).map(|i| unique_name(&format!("all{i}"))).collect();
    let theirs = unique_name("all-theirs");
    let _guards: Vec<InstanceGuard> = names
        .iter()
        .chain([&theirs])
        .map(|n| InstanceGuard(n.clone()))
        .collect();
    for name in &names {
        test.create(name, options(vec![])).await;
    }
    let image = format!("local:{}", test.env.image);
    let out = user
        .kapsule(&test.bus)
        .args(["create", &theirs, "--image", &image, "--no-menu-entry"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // What info says of one: its row, its owner, its options, as JSON.
    let out = kapsule(test, &["info", &names[0], "--format", "json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["name"], names[0].as_str());
    assert_eq!(info["status"], "Running");
    assert_eq!(info["owner"], 0);
    assert_eq!(info["image_source"], image.as_str());
    assert_eq!(info["snapshots"], serde_json::json!([]));
    assert_eq!(info["exports"], serde_json::json!([]));
    assert_eq!(info["host_rootfs"], true);

    // No terminal, no --yes: nothing is done, and the user is told why.
    let out = kapsule(test, &["stop", "--all"]).await;
    assert!(!out.status.success());
    let said = stderr(&out);
    assert!(
        said.contains("Not done: there is no terminal to ask on; add --yes"),
        "{said}"
    );
    for name in &names {
        assert!(said.contains(name.as_str()), "the question names {name}: {said}");
        assert_eq!(status(test, name).await, "Running");
    }
    assert!(!said.contains(theirs.as_str()), "not someone else's: {said}");

    let out = kapsule(test, &["stop", "--all", "--yes"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = stderr(&out);
    let stopped = summary
        .lines()
        .find(|l| l.starts_with("── Stopped: "))
        .unwrap_or_else(|| panic!("{summary}"));
    for name in &names {
        assert!(stopped.contains(name.as_str()), "{summary}");
        assert_eq!(status(test, name).await, "Stopped");
    }
    assert_eq!(
        status(test, &theirs).await,
        "Running",
        "another user's container is theirs"
    );

    // Several names: one that is not there is reported, the others are removed.
    let out = kapsule(test, &["rm", &names[0], "kt-not-there", "--force"]).await;
    assert!(!out.status.success());
    let said = stderr(&out);
    assert!(said.contains("Container 'kt-not-there' does not exist"), "{said}");
    assert!(said.contains("1 of 2 removals failed"), "{said}");
    assert_eq!(status(test, &names[0]).await, "gone");

    let out = kapsule(test, &["rm", "--all"]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("add --yes"), "{}", stderr(&out));
    assert_eq!(status(test, &names[1]).await, "Stopped", "nothing removed");
    let out = kapsule(test, &["rm", "--all", "--yes"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    for name in &names[1..] {
        assert_eq!(status(test, name).await, "gone");
    }
    assert_eq!(status(test, &theirs).await, "Running");
}

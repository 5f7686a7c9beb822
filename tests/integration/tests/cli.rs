//! The `kapsule` command line as a user runs it, against the daemon on a private bus and the real
//! incusd: what it prints on stdout and stderr, and its exit status.

use std::process::Output;

use kapsule_integration_tests::{DaemonTest, InstanceGuard, PrivateBus, daemon_test, env, kapsule_binary, unique_name};

/// Runs `kapsule args...` against `bus` without blocking the daemon's runtime.
async fn kapsule(bus: Option<&PrivateBus>, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(kapsule_binary());
    command.args(args).env_remove("KAPSULE_BUS_ADDRESS");
    if let Some(bus) = bus {
        command.env("KAPSULE_BUS_ADDRESS", &bus.address);
    }
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_list_info_stop_remove_through_the_cli() {
    let DaemonTest { env, bus, .. } = &daemon_test().await;
    let name = unique_name("cli");
    let _guard = InstanceGuard(name.clone());
    let image = format!("local:{}", env.image);

    let out = kapsule(Some(bus), &["create", &name, "--image", &image, "--no-gpu"]).await;
    assert!(out.status.success(), "create: {}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "human messages go to stderr, not stdout");
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("Image: {image}")), "{stderr}");
    assert!(
        stderr.contains("Creating container..."),
        "plain progress line without a terminal: {stderr}"
    );
    assert!(stderr.contains(&format!("✓ Container '{name}' created")), "{stderr}");
    let instance = env.incus.get_instance(&name).await.unwrap();
    assert_eq!(
        instance.config.get("user.kapsule.gpu").map(String::as_str),
        Some("false"),
        "--no-gpu reached the daemon"
    );

    let out = kapsule(Some(bus), &["ls", "--format", "json"]).await;
    assert!(out.status.success());
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("list --format json prints JSON");
    let row = rows.iter().find(|r| r["name"] == name.as_str()).expect("listed");
    assert_eq!(row["status"], "Running");
    assert_eq!(row["mode"], "Default");

    let out = kapsule(Some(bus), &["list", "--running"]).await;
    let table = text(&out.stdout);
    assert!(
        table
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .eq(["NAME", "STATUS", "IMAGE", "CREATED", "MODE"]),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().next() == Some(name.as_str()) && l.contains("Running")),
        "{table}"
    );

    let out = kapsule(Some(bus), &["info", &name]).await;
    assert!(text(&out.stdout).contains(&name));

    // Refused while running: exit 1, one line on stderr, nothing changed.
    let out = kapsule(Some(bus), &["rm", &name]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("is running"),
        "{stderr}"
    );
    assert_eq!(env.incus.get_instance(&name).await.unwrap().status, "Running");

    let out = kapsule(Some(bus), &["stop", &name]).await;
    assert!(out.status.success(), "stop: {}", text(&out.stderr));
    let out = kapsule(Some(bus), &["list", "--running", "--format", "json"]).await;
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        !rows.iter().any(|r| r["name"] == name.as_str()),
        "stopped containers are not --running"
    );

    let out = kapsule(Some(bus), &["remove", "--force", &name]).await;
    assert!(out.status.success(), "rm: {}", text(&out.stderr));
    assert!(env.incus.get_instance(&name).await.unwrap_err().is_not_found());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_one_line_with_a_hint() {
    let _env = env().await;
    let bus = PrivateBus::start();

    // No daemon on the bus (and no activation there): a hint, exit 1.
    let out = kapsule(Some(&bus), &["list"]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("the Kapsule daemon is not running") && stderr.contains("hint:"),
        "{stderr}"
    );

    let _daemon = bus.daemon().await;
    let out = kapsule(Some(&bus), &["create", "9bad", "--image", "local:x"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("must not start with a digit"),
        "{}",
        text(&out.stderr)
    );
    let out = kapsule(Some(&bus), &["create", "kt-cli-x", "--image", "bogus:x"]).await;
    assert!(
        text(&out.stderr).contains("Known remotes: local, images, ubuntu"),
        "{}",
        text(&out.stderr)
    );
    let out = kapsule(Some(&bus), &["config", "nope"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("known: default_container, default_image"),
        "{}",
        text(&out.stderr)
    );
    let out = kapsule(Some(&bus), &["config", "default_container"]).await;
    assert!(out.status.success() && !text(&out.stdout).trim().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_version_and_completions_need_no_daemon() {
    // Pointed at a bus that does not exist: these never connect.
    for args in [
        &["--help"][..],
        &["create", "--help"],
        &["--version"],
        &["completions", "bash"],
    ] {
        let mut command = std::process::Command::new(kapsule_binary());
        let out = command
            .args(args)
            .env("KAPSULE_BUS_ADDRESS", "unix:path=/nonexistent/bus")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        let stdout = text(&out.stdout);
        match args[0] {
            "--version" => assert_eq!(stdout.trim(), format!("kapsule {}", env!("CARGO_PKG_VERSION"))),
            "completions" => assert!(stdout.contains("_kapsule()"), "a bash completion function"),
            _ if args.len() == 2 => {
                assert!(stdout.contains("--no-mount-home") && stdout.contains("--custom-mounts <DIR>"))
            }
            _ => assert!(stdout.contains("create") && stdout.contains("list")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_list_and_delete_through_the_cli() {
    let DaemonTest { env, bus, .. } = &daemon_test().await;
    let alias = unique_name("cliimg");
    let by_alias = kapsule_integration_tests::import_tiny_image(&env.incus, &alias).await;
    let _g1 = kapsule_integration_tests::ImageGuard(by_alias.clone());
    let by_fingerprint = kapsule_integration_tests::import_tiny_image(&env.incus, "").await;
    let _g2 = kapsule_integration_tests::ImageGuard(by_fingerprint.clone());

    let out = kapsule(Some(bus), &["image", "list", "--format", "json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let images: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        images.iter().any(|i| i["fingerprint"] == by_alias.as_str()),
        "listed as Incus objects"
    );
    let out = kapsule(Some(bus), &["image", "ls"]).await;
    let table = text(&out.stdout);
    let row = table
        .lines()
        .find(|l| l.trim_start().starts_with(&alias))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains(&by_alias[..12]) && row.contains("kt tiny") && row.contains("MiB"),
        "{row}"
    );

    let out = kapsule(Some(bus), &["image", "delete", &alias]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("Image {} deleted", &by_alias[..12])),
        "{}",
        text(&out.stderr)
    );
    assert!(env.incus.get_image(&by_alias).await.unwrap_err().is_not_found());
    let out = kapsule(Some(bus), &["image", "rm", &by_fingerprint]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(env.incus.get_image(&by_fingerprint).await.unwrap_err().is_not_found());

    let out = kapsule(Some(bus), &["image", "delete", &alias]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&format!("No local image with alias or fingerprint '{alias}'")),
        "{}",
        text(&out.stderr)
    );
    assert!(
        env.incus.get_image_alias(&env.image).await.is_ok(),
        "other images untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_is_layered_with_the_callers_own_file_read_as_them_and_enter_uses_it() {
    let DaemonTest { bus, .. } = &daemon_test().await;
    let user = kapsule_integration_tests::test_user();
    let config = |user: &kapsule_integration_tests::TestUser| {
        let out = user
            .command(kapsule_binary())
            .args(["config", "default_container"])
            .env("KAPSULE_BUS_ADDRESS", &bus.address)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout).trim().to_owned()
    };
    // Only this test writes the test user's config file.
    let file = user.write_file(
        ".config/kapsule/kapsule.conf",
        "[kapsule]\ndefault_container = users-box\n",
    );
    assert_eq!(config(&user), "users-box");

    // `enter` without a name goes to their default container, made from their default image
    // the first time, with progress.
    let name = unique_name("default");
    let _guard = InstanceGuard(name.clone());
    let env = env().await;
    user.write_file(
        ".config/kapsule/kapsule.conf",
        &format!(
            "[kapsule]\ndefault_container = {name}\ndefault_image = local:{}\n",
            env.image
        ),
    );
    let out = user.kapsule(bus).args(["enter", "--", "id", "-un"]).output().unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("Creating container: {name}")), "{stderr}");
    // It gets its terminal entry in their menu, as a container they create does (taken away
    // again here: the guard removes the container behind Kapsule's back).
    let entry = user
        .home
        .join(format!(".local/share/applications/kapsule.{name}.desktop"));
    assert!(stderr.contains(&format!("Menu entry: {name} (Kapsule)")), "{stderr}");
    assert!(std::fs::read_to_string(&entry).unwrap().contains("Terminal=true"));
    let deleted = user
        .kapsule(bus)
        .args(["export", &name, "--delete", "--all"])
        .output()
        .unwrap();
    assert!(deleted.status.success() && !entry.exists(), "{}", text(&deleted.stderr));
    assert_eq!(text(&out.stdout).trim(), user.name);
    assert_eq!(env.incus.get_instance(&name).await.unwrap().status, "Running");

    // Their file pointing at one only root may read: the daemon reads it as them, so they learn
    // nothing from it and get the system value.
    let secret = tempfile::tempdir().unwrap();
    std::fs::set_permissions(secret.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let secret_file = secret.path().join("kapsule.conf");
    std::fs::write(&secret_file, "[kapsule]\ndefault_container = root-secret\n").unwrap();
    std::fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink(&secret_file, &file).unwrap();
    assert_eq!(config(&user), "kapsule");
    std::fs::remove_file(&file).unwrap();
    assert_eq!(config(&user), "kapsule", "no file: the built-in default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_dies_mid_operation_ends_the_wait() {
    let env = env().await;
    let bus = PrivateBus::start();
    let (mut daemon, _client, _manager) = kapsule_integration_tests::daemon_process(&bus).await;
    let name = unique_name("orphan");
    let _guard = InstanceGuard(name.clone());
    let image = format!("local:{}", env.image);
    let cli = std::process::Command::new(kapsule_binary())
        .args(["create", &name, "--image", &image])
        .env("KAPSULE_BUS_ADDRESS", &bus.address)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the daemon as soon as the create is under way: once Incus has the instance (the
    // operation is the CLI's own, which no other client sees).
    let mut running = false;
    for _ in 0..2000 {
        if env.incus.get_instance(&name).await.is_ok() {
            running = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(running, "the create operation was seen running");
    // Without noticing, the CLI would wait for a Completed that never comes (and nextest would
    // kill the test after its timeout).
    let out = tokio::task::spawn_blocking(move || cli.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        // Killed before or after its answer to the call reached the CLI: either way it says so.
        stderr.contains("the Kapsule daemon stopped while") && stderr.contains("hint:"),
        "{stderr}"
    );
}

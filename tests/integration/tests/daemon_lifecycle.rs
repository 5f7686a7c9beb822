//! The daemon on a private bus against the real incusd: create, list, stop, start, delete;
//! operation signals in order; bad requests refused with named errors, changing nothing;
//! failed and cancelled creates leave no container; containers made by the original daemon.

use std::collections::HashMap;
use std::time::Duration;

use kapsule_dbus::OperationProxy;
use kapsule_incus::models::InstanceSource;
use kapsule_integration_tests::{
    DaemonTest, InstanceGuard, collect_operation_signals, container_request, daemon_test, kapsule_signals, unique_name,
};
use zbus::Variant;

fn error_name(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, _, _) => name.to_string(),
        other => format!("not a method error: {other}"),
    }
}

use kapsule_integration_tests::options as opts;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_list_stop_start_delete_with_signals_in_order() {
    let DaemonTest {
        env, manager, client, ..
    } = &daemon_test().await;
    assert_eq!(manager.version().await.unwrap(), env!("CARGO_PKG_VERSION"));
    let mut signals = kapsule_signals(client).await;

    let name = unique_name("dcreate");
    let _guard = InstanceGuard(name.clone());
    let path = manager
        .create_container(&name, &format!("local:{}", env.image), HashMap::new())
        .await
        .unwrap();
    assert!(path.as_str().starts_with("/org/kde/kapsule/operations/"), "{path}");
    let op = OperationProxy::uncached(client, path.clone()).await.unwrap();
    assert_eq!(op.kind().await.unwrap(), "create");
    assert_eq!(op.target().await.unwrap(), name);
    assert_eq!(op.description().await.unwrap(), format!("Creating container: {name}"));
    let seen = collect_operation_signals(&mut signals, path.as_str()).await;
    assert_eq!(
        seen,
        [
            format!("Message(0, \"Image: local:{}\")", env.image),
            "Message(2, \"No GPU found on this host; the container gets none\")".to_owned(),
            "ProgressStarted(\"Creating container\", -1)".to_owned(),
            // The Debian image's one init hook (images/debian/files/.kapsule/init).
            "Message(4, \"Running /.kapsule/init/10-machine-id\")".to_owned(),
            "ProgressCompleted(true, \"\")".to_owned(),
            format!("Message(1, \"Container '{name}' created\")"),
            // One, carrying Status and ErrorMessage, as the original daemon sends it.
            "PropertiesChanged(ErrorMessage=\"\", Status=\"completed\")".to_owned(),
            "Completed(true, \"\")".to_owned(),
        ],
        "signals of the create operation"
    );
    assert_eq!(
        op.status().await.unwrap(),
        "completed",
        "the final status stays readable"
    );

    // Listed, with the original tuple shape, in one call.
    let listed = manager.list_containers().await.unwrap();
    let row = listed
        .iter()
        .find(|c| c.name == name)
        .expect("the new container is listed")
        .clone();
    assert_eq!(row.status, "Running");
    assert!(
        row.image.starts_with("Kapsule Debian image"),
        "image column: {}",
        row.image
    );
    assert!(row.created.ends_with("+00:00"), "created column: {}", row.created);
    assert_eq!(row.mode, "Default");
    assert_eq!(manager.get_container_info(&name).await.unwrap(), row);

    // What Incus got: no profile, the metadata, the host filesystem, /.kapsule.
    let instance = env.incus.get_instance(&name).await.unwrap();
    assert!(instance.profiles.is_empty());
    assert_eq!(
        instance.config.get("user.kapsule.host-rootfs").map(String::as_str),
        Some("true")
    );
    assert_eq!(instance.devices["hostfs"]["path"], "/.kapsule/host");
    let out = env
        .incus
        .exec(
            &name,
            &kapsule_incus::ExecRequest::new(["sh", "-c", "test -d /.kapsule && hostname"]),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(
        (out.exit_code, String::from_utf8_lossy(&out.stdout).trim()),
        (0, name.as_str()),
        "Konsole's detection"
    );

    // Removing a running container without force is refused, and changes nothing.
    let e = manager.delete_container(&name, false).await.unwrap_err();
    assert_eq!(error_name(&e), "org.kde.kapsule.Error.Failed");
    assert!(e.to_string().contains("is running"), "{e}");
    assert_eq!(env.incus.get_instance(&name).await.unwrap().status, "Running");

    // One after the other: each operation's Completed is read before the next one starts.
    for what in ["stop", "start", "delete"] {
        let path = match what {
            "stop" => manager.stop_container(&name, false).await.unwrap(),
            "start" => manager.start_container(&name).await.unwrap(),
            _ => manager.delete_container(&name, true).await.unwrap(),
        };
        let seen = collect_operation_signals(&mut signals, path.as_str()).await;
        assert_eq!(
            seen.last().map(String::as_str),
            Some("Completed(true, \"\")"),
            "{what}: {seen:?}"
        );
        if what != "delete" {
            let status = env.incus.get_instance(&name).await.unwrap().status;
            assert_eq!(
                status,
                if what == "stop" { "Stopped" } else { "Running" },
                "after {what}"
            );
        }
    }
    assert!(
        env.incus.get_instance(&name).await.unwrap_err().is_not_found(),
        "removed"
    );
    assert!(!manager.list_containers().await.unwrap().iter().any(|c| c.name == name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_named_errors_and_change_nothing() {
    let DaemonTest { env, manager, .. } = &daemon_test().await;

    // Another Incus instance, not Kapsule's: invisible to the daemon.
    let foreign = unique_name("foreign");
    let _foreign_guard = InstanceGuard(foreign.clone());
    kapsule_integration_tests::create_stopped_instance(env, &foreign).await;
    let foreign_before = env.incus.get_instance(&foreign).await.unwrap();
    // Answered as one that does not exist: nobody learns what else Incus holds.
    let foreign_missing = format!("Container '{foreign}' does not exist");
    let info = manager.get_container_info(&foreign).await.unwrap_err();
    assert!(
        matches!(&info, zbus::Error::MethodError(name, Some(m), _)
            if name.as_str() == "org.kde.kapsule.Error.NotFound" && *m == foreign_missing),
        "{info}"
    );

    let image = format!("local:{}", env.image);
    let name = unique_name("dbad");
    let cases: Vec<(&str, zbus::Result<zbus::OwnedObjectPath>, &str, &str)> = vec![
        (
            "bad name",
            manager.create_container("1-bad", &image, HashMap::new()).await,
            "InvalidArgument",
            "must not start with a digit",
        ),
        (
            "slash name",
            manager.create_container("../x", &image, HashMap::new()).await,
            "InvalidArgument",
            "only letters",
        ),
        (
            "unknown option",
            manager
                .create_container(&name, &image, opts(vec![("bogus", Variant::Bool(true))]))
                .await,
            "InvalidArgument",
            "Unknown options: bogus",
        ),
        (
            "wrong type",
            manager
                .create_container(&name, &image, opts(vec![("gpu", Variant::from("yes"))]))
                .await,
            "InvalidArgument",
            "must be a boolean",
        ),
        (
            "bad mount",
            manager
                .create_container(
                    &name,
                    &image,
                    opts(vec![("custom_mounts", Variant::from(vec!["../etc"]))]),
                )
                .await,
            "InvalidArgument",
            "absolute",
        ),
        (
            "requires",
            manager
                .create_container(
                    &name,
                    &image,
                    opts(vec![
                        ("nvidia_drivers", Variant::Bool(true)),
                        ("gpu", Variant::Bool(false)),
                    ]),
                )
                .await,
            "InvalidArgument",
            "requires 'gpu'",
        ),
        (
            "unknown remote",
            manager.create_container(&name, "bogus:x", HashMap::new()).await,
            "InvalidArgument",
            "Known remotes: local, images, ubuntu",
        ),
        (
            "unknown local image",
            manager
                .create_container(&name, "local:kt-no-such-image", HashMap::new())
                .await,
            "NotFound",
            "No local image",
        ),
        (
            "existing",
            manager.create_container(&foreign, &image, HashMap::new()).await,
            "AlreadyExists",
            "already exists",
        ),
        (
            "start foreign",
            manager.start_container(&foreign).await,
            "NotFound",
            &foreign_missing,
        ),
        (
            "delete missing",
            manager.delete_container("kt-missing", true).await,
            "NotFound",
            "Container 'kt-missing' does not exist",
        ),
    ];
    for (what, result, name, text) in cases {
        let e = result.expect_err(what);
        assert_eq!(error_name(&e), format!("org.kde.kapsule.Error.{name}"), "{what}: {e}");
        assert!(e.to_string().contains(text), "{what}: {e}");
        assert!(
            !e.to_string().contains("panicked") && !e.to_string().contains(".rs:"),
            "no internals: {e}"
        );
    }
    assert!(manager.get_container_info(&foreign).await.is_err());
    assert!(
        !manager
            .list_containers()
            .await
            .unwrap()
            .iter()
            .any(|c| c.name == foreign)
    );
    // Nothing was made, and the foreign instance is untouched (other tests run at the same time,
    // so only the names this test used are compared).
    for tried in [name.as_str(), "1-bad"] {
        assert!(
            env.incus.get_instance(tried).await.unwrap_err().is_not_found(),
            "{tried} was not created"
        );
    }
    let foreign_after = env.incus.get_instance(&foreign).await.unwrap();
    assert_eq!(
        (foreign_after.status, foreign_after.config),
        (foreign_before.status, foreign_before.config),
        "Incus unchanged"
    );
    assert!(
        manager.list_operations().await.unwrap().is_empty(),
        "no operation was started"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_cancelled_creates_leave_no_container() {
    let DaemonTest {
        env, manager, client, ..
    } = &daemon_test().await;
    let mut signals = kapsule_signals(client).await;

    // A remote image on a machine that reaches no image server: Incus fails the create.
    let failed = unique_name("dfail");
    let _g1 = InstanceGuard(failed.clone());
    let path = manager
        .create_container(&failed, "images:kt-no-such-image", HashMap::new())
        .await
        .unwrap();
    let seen = collect_operation_signals(&mut signals, path.as_str()).await;
    let last = seen.last().unwrap();
    assert!(last.starts_with("Completed(false, \"Creating '"), "{seen:?}");
    let op = OperationProxy::uncached(client, path).await.unwrap();
    assert_eq!(op.status().await.unwrap(), "failed");
    assert!(!op.error_message().await.unwrap().is_empty());
    assert!(
        env.incus.get_instance(&failed).await.unwrap_err().is_not_found(),
        "no half-made container"
    );

    // Cancelled while Incus unpacks the image.
    let cancelled = unique_name("dcancel");
    let _g2 = InstanceGuard(cancelled.clone());
    let path = manager
        .create_container(&cancelled, &format!("local:{}", env.image), HashMap::new())
        .await
        .unwrap();
    let op = OperationProxy::uncached(client, path.clone()).await.unwrap();
    assert!(op.cancel().await.unwrap(), "a running operation accepts Cancel");
    let seen = collect_operation_signals(&mut signals, path.as_str()).await;
    assert_eq!(
        seen.last().map(String::as_str),
        Some("Completed(false, \"Operation cancelled\")"),
        "{seen:?}"
    );
    assert_eq!(op.status().await.unwrap(), "cancelled");
    assert!(!op.cancel().await.unwrap(), "a finished operation refuses Cancel");
    assert!(
        env.incus.get_instance(&cancelled).await.unwrap_err().is_not_found(),
        "no half-made container"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_made_by_the_original_daemon_are_managed() {
    let DaemonTest {
        env, manager, client, ..
    } = &daemon_test().await;
    let mut signals = kapsule_signals(client).await;

    // What the original daemon wrote: its metadata keys, session mode, a user already mapped.
    let name = unique_name("dold");
    let _guard = InstanceGuard(name.clone());
    let mut request = container_request(env, &name, true);
    request.source = InstanceSource::local_alias(env.image.clone());
    for (k, v) in [
        ("user.kapsule.session-mode", "true"),
        ("user.kapsule.host-rootfs", "false"),
        ("user.kapsule.mount-home", "true"),
        ("user.kapsule.gpu", "false"),
        ("user.kapsule.host-users.1000.mapped", "true"),
    ] {
        request.config.insert(k.into(), v.into());
    }
    let op = env.incus.create_instance(&request).await.unwrap();
    env.incus
        .wait_operation(&op.id, Some(Duration::from_secs(120)))
        .await
        .unwrap();

    let row = manager.get_container_info(&name).await.unwrap();
    assert_eq!((row.status.as_str(), row.mode.as_str()), ("Running", "Session"));
    assert!(manager.list_containers().await.unwrap().contains(&row));
    assert!(manager.is_user_setup(&name, 1000).await.unwrap());
    assert!(!manager.is_user_setup(&name, 1001).await.unwrap());
    let path = manager.delete_container(&name, true).await.unwrap();
    let seen = collect_operation_signals(&mut signals, path.as_str()).await;
    assert_eq!(
        seen.last().map(String::as_str),
        Some("Completed(true, \"\")"),
        "{seen:?}"
    );
    assert!(env.incus.get_instance(&name).await.unwrap_err().is_not_found());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_config_and_images_are_served() {
    let DaemonTest { env, manager, .. } = &daemon_test().await;
    assert_eq!(
        manager.get_create_schema().await.unwrap(),
        kapsule_dbus::options::schema_json()
    );
    let config = manager.get_config().await.unwrap();
    assert!(
        config.contains_key("default_container") && config.contains_key("default_image"),
        "{config:?}"
    );
    let images: Vec<serde_json::Value> = serde_json::from_str(&manager.list_images().await.unwrap()).unwrap();
    assert!(
        images.iter().any(|i| i["aliases"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["name"] == env.image.as_str()))),
        "the test image is listed with its alias"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_process_exits_when_its_bus_goes_away() {
    let _env = kapsule_integration_tests::env().await;
    let bus = kapsule_integration_tests::PrivateBus::start();
    let (mut daemon, client, manager) = kapsule_integration_tests::daemon_process(&bus).await;
    assert_eq!(
        manager.version().await.unwrap(),
        env!("CARGO_PKG_VERSION"),
        "the daemon answers on its bus"
    );
    drop(manager);
    drop(client);
    drop(bus);
    let mut exited = None;
    for _ in 0..100 {
        if let Some(status) = daemon.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if exited.is_none() {
        let _ = daemon.kill();
        let _ = daemon.wait();
    }
    assert!(
        exited.is_some_and(|s| s.success()),
        "the daemon exits cleanly once its bus is gone: {exited:?}"
    );
}

/// The daemon as systemd runs it (`Type=notify`): this test is systemd's notification socket.
/// READY=1 comes only once the name is owned (a bus-activated call must not race the start), with
/// a STATUS= line; SIGTERM brings STOPPING=1 and a clean exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_tells_systemd_when_it_is_ready_and_when_it_stops() {
    let bus = kapsule_integration_tests::PrivateBus::start();
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut daemon = std::process::Command::new(kapsule_integration_tests::workspace_binary("kapsule-daemon"))
        .args(["--address", &bus.address])
        .env("NOTIFY_SOCKET", &socket_path)
        .spawn()
        .unwrap();
    let mut buffer = [0u8; 4096];
    let n = socket.recv(&mut buffer).expect("no notification within 20 s");
    let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
    let owned = kapsule_integration_tests::bus_name_has_owner(&bus.address, "org.kde.kapsule");
    let lines: Vec<&str> = message.lines().collect();
    assert!(lines.contains(&"READY=1"), "{message}");
    assert!(lines.contains(&"STATUS=Serving org.kde.kapsule"), "{message}");
    assert!(owned, "READY=1 came before the name was owned");

    sigterm(daemon.id());
    let n = socket.recv(&mut buffer).expect("no STOPPING=1 within 20 s");
    assert_eq!(String::from_utf8_lossy(&buffer[..n]).trim(), "STOPPING=1");
    let status = daemon.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// SIGTERM, as systemd stops a unit.
fn sigterm(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

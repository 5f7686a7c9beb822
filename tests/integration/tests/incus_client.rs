//! The Incus client against a real incusd: every call Kapsule relies on, on a real container made
//! from the test image.

use std::time::Duration;

use kapsule_incus::models::{ConfigMap, Devices, status};
use kapsule_incus::{Client, Error, EventKind, ExecRequest, FileMeta, UploadFile};
use kapsule_integration_tests::{ImageGuard, InstanceGuard, container_request, env, unique_name};

const WAIT: Option<Duration> = Some(Duration::from_secs(120));

fn disk(source: &str, path: &str) -> ConfigMap {
    [("type", "disk"), ("source", source), ("path", path)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_info_lists_api_extensions() {
    let env = env().await;
    let server = env.incus.server().await.unwrap();
    assert!(
        server.environment.server_version.starts_with("6."),
        "server version {}",
        server.environment.server_version
    );
    assert_eq!(server.environment.driver.split(" | ").next(), Some("lxc"));
    assert!(
        server.api_extensions.len() > 100,
        "only {} extensions",
        server.api_extensions.len()
    );
    assert!(server.has_extension("instances"));
    assert!(!server.has_extension("no-such-extension"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_lifecycle_files_exec_and_devices() {
    let env = env().await;
    let incus = &env.incus;
    let name = unique_name("life");
    let _guard = InstanceGuard(name.clone());

    // Create (stopped) and find it in the list with its config.
    let op = incus
        .create_instance(&container_request(&env, &name, false))
        .await
        .unwrap();
    assert_eq!(op.description, "Creating instance");
    let done = incus.wait_operation(&op.id, WAIT).await.unwrap();
    assert_eq!(done.status_code, status::SUCCESS);
    let listed = incus.list_instances().await.unwrap();
    let instance = listed.iter().find(|i| i.name == name).expect("new instance is listed");
    assert_eq!(instance.status, "Stopped");
    assert!(
        instance.profiles.is_empty(),
        "created with profiles: [] but got {:?}",
        instance.profiles
    );
    assert_eq!(
        instance.config.get("security.privileged").map(String::as_str),
        Some("true")
    );
    assert_eq!(incus.instance_state(&name).await.unwrap().init_pid(), None);

    // Start and read the init pid: a real process on this host.
    let op = incus.start_instance(&name).await.unwrap();
    incus.wait_operation(&op.id, WAIT).await.unwrap();
    let state = incus.instance_state(&name).await.unwrap();
    assert_eq!(state.status, "Running");
    let pid = state.init_pid().expect("a running container has an init pid");
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "systemd", "init of the test image is systemd");

    // Push a file with owner and mode, read it back.
    let payload: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    incus
        .create_directory(&name, "/srv/kt", FileMeta::new(1000, 1000, 0o750))
        .await
        .unwrap();
    incus
        .push_file(
            &name,
            "/srv/kt/data.bin",
            payload.clone(),
            FileMeta::new(1000, 1001, 0o640),
        )
        .await
        .unwrap();
    let back = incus.read_file(&name, "/srv/kt/data.bin").await.unwrap();
    assert_eq!(back.data.as_ref(), payload.as_slice(), "file read back byte for byte");
    assert_eq!(back.meta, FileMeta::new(1000, 1001, 0o640));
    incus
        .create_symlink(&name, "/srv/kt/link", "data.bin", FileMeta::new(0, 0, 0o777))
        .await
        .unwrap();
    assert!(
        matches!(
            incus.read_file(&name, "/srv/kt").await,
            Err(Error::Api { status: 400, .. })
        ),
        "a directory is not a file"
    );
    let mut listing = incus.list_directory(&name, "/srv/kt").await.unwrap();
    listing.sort();
    assert_eq!(listing, ["data.bin", "link"]);
    assert!(
        incus.list_directory(&name, "/srv/kt/data.bin").await.is_err(),
        "a file is not a directory"
    );
    assert!(
        incus
            .list_directory(&name, "/srv/nothing")
            .await
            .unwrap_err()
            .is_not_found()
    );
    // ensure_directory: creates once, leaves a directory as it is, never replaces a file (a plain
    // push would turn the file into an empty directory).
    let made = incus
        .ensure_directory(&name, "/srv/kt/sub", FileMeta::new(0, 0, 0o700))
        .await
        .unwrap();
    assert!(made);
    let again = incus
        .ensure_directory(&name, "/srv/kt", FileMeta::new(0, 0, 0o700))
        .await
        .unwrap();
    assert!(!again);
    assert!(matches!(
        incus
            .ensure_directory(&name, "/srv/kt/data.bin", FileMeta::new(0, 0, 0o755))
            .await,
        Err(Error::AlreadyExists { .. })
    ));

    // Exec: exit code and both streams, argv passed as is (no shell splitting).
    let out = incus
        .exec(
            &name,
            &ExecRequest::new([
                "sh",
                "-c",
                "stat -c '%u:%g %a' /srv/kt/data.bin /srv/kt /srv/kt/sub; readlink /srv/kt/link; echo oops >&2; exit 7",
            ]),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 7);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1000:1001 640\n1000:1000 750\n0:0 700\ndata.bin\n"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    let mut request = ExecRequest::new(["printf", "%s|", "a b", "$HOME"]);
    request.cwd = Some("/srv/kt".into());
    let out = incus.exec(&name, &request, Duration::from_secs(60)).await.unwrap();
    assert_eq!(
        (out.exit_code, String::from_utf8_lossy(&out.stdout).into_owned()),
        (0, "a b|$HOME|".to_owned())
    );

    // Device PATCHes: two concurrent additions both land (PATCH merges; GET+PUT would lose one).
    let host_a = tempfile::tempdir().unwrap();
    let host_b = tempfile::tempdir().unwrap();
    std::fs::write(host_a.path().join("hello"), "from the host").unwrap();
    let a: Devices = [("kt-a".to_owned(), disk(host_a.path().to_str().unwrap(), "/mnt/a"))].into();
    let b: Devices = [("kt-b".to_owned(), disk(host_b.path().to_str().unwrap(), "/mnt/b"))].into();
    let (ra, rb) = tokio::join!(
        incus.patch_instance_devices(&name, &a),
        incus.patch_instance_devices(&name, &b)
    );
    ra.unwrap();
    rb.unwrap();
    let instance = incus.get_instance(&name).await.unwrap();
    assert!(
        instance.devices.contains_key("kt-a") && instance.devices.contains_key("kt-b"),
        "devices: {:?}",
        instance.devices.keys()
    );
    assert!(
        instance.devices.contains_key("root"),
        "PATCH kept the existing root disk"
    );
    let out = incus
        .exec(
            &name,
            &ExecRequest::new(["cat", "/mnt/a/hello"]),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "from the host",
        "the hot-plugged disk is visible inside"
    );

    // Config PATCH adds keys and keeps the others.
    let config: ConfigMap = [("user.kapsule.test".to_owned(), "yes".to_owned())].into();
    incus.patch_instance_config(&name, &config).await.unwrap();
    let instance = incus.get_instance(&name).await.unwrap();
    assert_eq!(
        instance.config.get("user.kapsule.test").map(String::as_str),
        Some("yes")
    );
    assert_eq!(
        instance.config.get("security.nesting").map(String::as_str),
        Some("true")
    );

    // Removing one device keeps the rest.
    incus.remove_instance_device(&name, "kt-a").await.unwrap();
    let instance = incus.get_instance(&name).await.unwrap();
    assert!(!instance.devices.contains_key("kt-a") && instance.devices.contains_key("kt-b"));
    assert!(
        incus
            .remove_instance_device(&name, "kt-a")
            .await
            .unwrap_err()
            .is_not_found()
    );

    // Deleting a running instance is refused by Incus; stop, then delete.
    let refused = match incus.delete_instance(&name).await {
        Err(e) => e,
        Ok(op) => incus.wait_operation(&op.id, WAIT).await.unwrap_err(),
    };
    assert!(refused.to_string().contains("running"), "unexpected error: {refused}");
    let op = incus
        .stop_instance(&name, false, Duration::from_secs(60))
        .await
        .unwrap();
    incus.wait_operation(&op.id, WAIT).await.unwrap();
    assert_eq!(incus.instance_state(&name).await.unwrap().status, "Stopped");
    let op = incus.delete_instance(&name).await.unwrap();
    incus.wait_operation(&op.id, WAIT).await.unwrap();
    let gone = incus.get_instance(&name).await.unwrap_err();
    assert!(gone.is_not_found(), "after delete: {gone}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_objects_are_not_found() {
    let env = env().await;
    let incus = &env.incus;
    let e = incus.get_instance("kt-does-not-exist").await.unwrap_err();
    assert!(
        matches!(&e, Error::NotFound { message, .. } if message.contains("not found")),
        "{e}"
    );
    assert_eq!(e.status(), Some(404));
    assert!(
        incus
            .instance_state("kt-does-not-exist")
            .await
            .unwrap_err()
            .is_not_found()
    );
    assert!(
        incus
            .get_image_alias("kt-no-such-alias")
            .await
            .unwrap_err()
            .is_not_found()
    );
    assert!(
        incus
            .get_operation("00000000-0000-0000-0000-000000000000")
            .await
            .unwrap_err()
            .is_not_found()
    );
    // A name with a slash is encoded, so it cannot address another resource: Incus sees one
    // (invalid) instance name, not a path.
    let e = incus.get_instance("../images").await.unwrap_err();
    assert!(
        matches!(&e, Error::Api { status: 400, message, .. } if message == "Invalid instance name"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operation_wait_times_out_then_completes_and_cancel_reports_refusal() {
    let env = env().await;
    let incus = &env.incus;
    let name = unique_name("wait");
    let _guard = InstanceGuard(name.clone());
    let op = incus
        .create_instance(&container_request(&env, &name, true))
        .await
        .unwrap();
    incus.wait_operation(&op.id, WAIT).await.unwrap();

    // A command that outlives the wait: Timeout, and the operation keeps running.
    let incus2 = incus.clone();
    let name2 = name.clone();
    let slow = tokio::spawn(async move {
        incus2
            .exec(&name2, &ExecRequest::new(["sleep", "3"]), Duration::from_secs(1))
            .await
    });
    let e = slow.await.unwrap().unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "expected a timeout, got {e}");

    // Find that exec operation and wait for it properly this time.
    let running = list_running_ops(incus).await;
    let exec_op = running
        .iter()
        .find(|(_, d)| d == "Executing command")
        .map(|(id, _)| id.clone())
        .expect("the exec is still running");
    // exec operations cannot be cancelled: Incus says so, and the client keeps its words.
    let e = incus.cancel_operation(&exec_op).await.unwrap_err();
    assert!(
        matches!(&e, Error::Api { status: 400, message, .. } if message.contains("can't be cancelled")),
        "{e}"
    );
    let done = incus
        .wait_operation(&exec_op, Some(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(
        done.metadata
            .as_ref()
            .and_then(|m| m.get("return"))
            .and_then(|r| r.as_i64()),
        Some(0)
    );
}

async fn list_running_ops(incus: &Client) -> Vec<(String, String)> {
    let out = std::process::Command::new("incus")
        .args(["query", "/1.0/operations?recursion=1"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut ops = Vec::new();
    for op in v.get("running").and_then(|r| r.as_array()).into_iter().flatten() {
        let id = op["id"].as_str().unwrap_or_default().to_owned();
        // Cross-check the typed getter against the CLI's view.
        let typed = incus.get_operation(&id).await.unwrap();
        ops.push((id, typed.description));
    }
    ops
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_report_the_operations_we_start() {
    let env = env().await;
    let incus = &env.incus;
    let name = unique_name("events");
    let _guard = InstanceGuard(name.clone());
    let mut events = incus.events(&[EventKind::Operation]).await.unwrap();
    let op = incus
        .create_instance(&container_request(&env, &name, false))
        .await
        .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(60), async {
        let mut statuses = Vec::new();
        while let Some(event) = events.next().await {
            let event = event.unwrap();
            if let Some(o) = event.operation().filter(|o| o.id == op.id) {
                statuses.push(o.status.clone());
                if o.is_final() {
                    break;
                }
            }
        }
        statuses
    })
    .await
    .expect("the operation's final event arrives");
    assert_eq!(
        seen.last().map(String::as_str),
        Some("Success"),
        "statuses seen: {seen:?}"
    );
    incus.wait_operation(&op.id, WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_by_alias_import_and_delete() {
    let env = env().await;
    let incus = &env.incus;

    // The test image, by alias.
    let alias = incus.get_image_alias(&env.image).await.unwrap();
    assert_eq!(alias.target.len(), 64, "an alias targets a full fingerprint");
    let images = incus.list_images().await.unwrap();
    let image = images.iter().find(|i| i.fingerprint == alias.target).expect("listed");
    assert!(image.aliases.iter().any(|a| a.name == env.image));
    assert!(image.properties.contains_key("kapsule.recipe"));
    assert_eq!(incus.get_image(&alias.target).await.unwrap().fingerprint, alias.target);

    // Import a tiny split image, streamed from files.
    let dir = tempfile::tempdir().unwrap();
    let (meta, rootfs) = kapsule_integration_tests::tiny_image_files(dir.path());
    let (sent_tx, sent_rx) = tokio::sync::watch::channel(0u64);
    let meta_file = UploadFile::open(&meta).await.unwrap();
    let root_file = UploadFile::open(&rootfs).await.unwrap();
    let file_bytes = meta_file.len() + root_file.len();
    let upload = incus.import_image(meta_file, root_file, Some(sent_tx)).await.unwrap();
    let done = incus.wait_operation(&upload.operation.id, WAIT).await.unwrap();
    let fingerprint = done
        .metadata_str("fingerprint")
        .expect("import reports the fingerprint")
        .to_owned();
    assert_eq!(
        upload.fingerprint, fingerprint,
        "the client's hash is Incus's fingerprint"
    );
    assert_eq!(*sent_rx.borrow(), file_bytes, "every byte of both files was counted");
    let _image_guard = ImageGuard(fingerprint.clone());
    let alias_name = unique_name("alias");
    incus.create_image_alias(&alias_name, &fingerprint, "kt").await.unwrap();
    let e = incus
        .create_image_alias(&alias_name, &fingerprint, "kt")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::AlreadyExists { .. }), "{e}");
    let imported = incus.get_image(&fingerprint).await.unwrap();
    assert_eq!(imported.description(), "kt tiny");
    assert!(imported.aliases.iter().any(|a| a.name == alias_name));

    // Import of a missing file fails locally, before anything is sent.
    let e = UploadFile::open(&dir.path().join("nope")).await.unwrap_err();
    assert!(matches!(e, Error::LocalFile { .. }), "{e}");
    let e = UploadFile::open(dir.path()).await.unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");

    // The same image again: Incus refuses it and the image is unchanged.
    let upload = incus
        .import_image(
            UploadFile::open(&meta).await.unwrap(),
            UploadFile::open(&rootfs).await.unwrap(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(upload.fingerprint, fingerprint);
    let e = incus.wait_operation(&upload.operation.id, WAIT).await.unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    assert!(
        incus
            .get_image(&fingerprint)
            .await
            .unwrap()
            .aliases
            .iter()
            .any(|a| a.name == alias_name)
    );

    // Delete the alias, then the image.
    incus.delete_image_alias(&alias_name).await.unwrap();
    assert!(incus.get_image_alias(&alias_name).await.unwrap_err().is_not_found());
    let op = incus.delete_image(&fingerprint).await.unwrap();
    incus.wait_operation(&op.id, WAIT).await.unwrap();
    assert!(incus.get_image(&fingerprint).await.unwrap_err().is_not_found());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_pools_list_and_create() {
    let env = env().await;
    let incus = &env.incus;
    let pools = incus.list_storage_pools().await.unwrap();
    let default = pools
        .iter()
        .find(|p| p.name == "default")
        .expect("the environment's pool");
    assert_eq!(default.driver, "dir");

    let name = unique_name("pool");
    let dir = tempfile::tempdir().unwrap();
    let pool = kapsule_incus::models::StoragePoolsPost {
        name: name.clone(),
        driver: "dir".into(),
        config: [("source".to_owned(), dir.path().to_string_lossy().into_owned())].into(),
        description: "kt".into(),
    };
    incus.create_storage_pool(&pool).await.unwrap();
    let cleanup = scopeguard(&name);
    assert_eq!(incus.get_storage_pool(&name).await.unwrap().driver, "dir");
    let e = incus.create_storage_pool(&pool).await.unwrap_err();
    assert!(matches!(e, Error::AlreadyExists { .. }), "{e}");
    drop(cleanup);
}

fn scopeguard(pool: &str) -> impl Drop + use<> {
    struct G(String);
    impl Drop for G {
        fn drop(&mut self) {
            let _ = std::process::Command::new("incus")
                .args(["storage", "delete", &self.0])
                .output();
        }
    }
    G(pool.to_owned())
}

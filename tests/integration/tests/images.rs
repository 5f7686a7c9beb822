//! Images through the daemon against the real incusd: import (as the caller), replacing an
//! alias, re-importing an image the store has, refresh, and the errors bad requests get.

use std::path::Path;
use std::process::Command;

use kapsule_integration_tests::{
    DaemonTest, ImageGuard, RemoveOnDrop, collect_operation_signals, daemon_test, kapsule_binary, kapsule_signals,
    test_user, tiny_image_files, unique_name,
};

fn error_of(e: zbus::Error) -> (String, String) {
    match e {
        zbus::Error::MethodError(name, message, _) => (name.to_string(), message.unwrap_or_default()),
        other => panic!("not a method error: {other}"),
    }
}

/// The fingerprint Incus gives a split image: sha256 over the metadata, then the rootfs.
fn fingerprint_of(metadata: &Path, rootfs: &Path) -> String {
    let out = Command::new("sh")
        .args(["-c", "cat \"$1\" \"$2\" | sha256sum", "sh"])
        .arg(metadata)
        .arg(rootfs)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

/// A directory with a tiny image in it, readable by everyone.
fn image_dir() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let (meta, rootfs) = tiny_image_files(dir.path());
    let fingerprint = fingerprint_of(&meta, &rootfs);
    (dir, fingerprint)
}

async fn import(test: &DaemonTest, dir: &Path, alias: &str) -> Vec<String> {
    let mut signals = kapsule_signals(&test.client).await;
    let path = test.manager.import_image(dir.to_str().unwrap(), alias).await.unwrap();
    collect_operation_signals(&mut signals, path.as_str()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_replace_and_reimport() {
    let test = &daemon_test().await;
    let incus = &test.env.incus;
    let alias = unique_name("imp");
    let _guard = ImageGuard(alias.clone());

    let (first, first_fp) = image_dir();
    let seen = import(test, first.path(), &alias).await;
    assert_eq!(seen.last().unwrap(), "Completed(true, \"\")", "{seen:?}");
    assert!(
        seen.contains(&"ProgressStarted(\"Uploading image\", 100)".to_owned()),
        "{seen:?}"
    );
    assert!(seen.iter().any(|s| s.starts_with("ProgressCompleted(true")), "{seen:?}");
    assert!(
        seen.iter()
            .any(|s| s.contains(&format!("Image '{alias}' imported ({})", &first_fp[..12]))),
        "{seen:?}"
    );
    assert_eq!(incus.get_image_alias(&alias).await.unwrap().target, first_fp);

    // Another image under the same alias: the alias moves, the old image (now nameless) goes.
    let (second, second_fp) = image_dir();
    let seen = import(test, second.path(), &alias).await;
    assert_eq!(seen.last().unwrap(), "Completed(true, \"\")", "{seen:?}");
    assert!(seen.iter().any(|s| s.contains("Replacing the image")), "{seen:?}");
    assert_eq!(incus.get_image_alias(&alias).await.unwrap().target, second_fp);
    assert!(incus.get_image(&first_fp).await.unwrap_err().is_not_found());

    // The same image under a second alias: Incus has it already, so it is reused, not doubled.
    let alias2 = unique_name("imp");
    let seen = import(test, second.path(), &alias2).await;
    assert_eq!(seen.last().unwrap(), "Completed(true, \"\")", "{seen:?}");
    assert!(
        seen.iter().any(|s| s.contains("The store has this image already")),
        "{seen:?}"
    );
    assert_eq!(incus.get_image_alias(&alias2).await.unwrap().target, second_fp);
    let image = incus.get_image(&second_fp).await.unwrap();
    let mut names: Vec<&str> = image.aliases.iter().map(|a| a.name.as_str()).collect();
    names.sort();
    let mut expected = [alias.as_str(), alias2.as_str()];
    expected.sort();
    assert_eq!(names, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_imports_get_named_errors_and_change_nothing() {
    let test = &daemon_test().await;
    let incus = &test.env.incus;
    let (dir, fingerprint) = image_dir();
    let only_metadata = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join("metadata.tar.gz"),
        only_metadata.path().join("metadata.tar.gz"),
    )
    .unwrap();
    let file = dir.path().join("metadata.tar.gz");
    let alias = unique_name("bad");
    let d = dir.path().to_str().unwrap();
    let cases: &[(&str, &str, &str, &str)] = &[
        ("relative/dir", &alias, "InvalidArgument", "is not absolute"),
        (
            "/nonexistent-kt-dir",
            &alias,
            "NotFound",
            "Image directory does not exist",
        ),
        (
            only_metadata.path().to_str().unwrap(),
            &alias,
            "NotFound",
            "Missing rootfs file",
        ),
        (file.to_str().unwrap(), &alias, "InvalidArgument", "is a file"),
        (d, "", "InvalidArgument", "Invalid image '"),
        (d, "a b", "InvalidArgument", "Invalid image '"),
        (d, "a/b", "InvalidArgument", "Invalid image '"),
        (d, &fingerprint, "InvalidArgument", "looks like a fingerprint"),
    ];
    for (path, alias, name, message) in cases {
        let e = test.manager.import_image(path, alias).await.unwrap_err();
        let (got_name, got_message) = error_of(e);
        assert_eq!(got_name, format!("org.kde.kapsule.Error.{name}"), "{path} {alias}");
        assert!(got_message.contains(message), "{path} {alias}: {got_message}");
    }
    assert!(incus.get_image_alias(&alias).await.unwrap_err().is_not_found());
    assert!(incus.get_image(&fingerprint).await.unwrap_err().is_not_found());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_imports_only_what_they_can_read() {
    let test = &daemon_test().await;
    let incus = &test.env.incus;
    let user = test_user();

    // Root's private directory: readable by the root daemon, not by the user.
    let secret = tempfile::tempdir().unwrap();
    std::fs::set_permissions(secret.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let (meta, rootfs) = tiny_image_files(secret.path());
    let secret_fp = fingerprint_of(&meta, &rootfs);
    let alias = unique_name("user");
    let _guard = ImageGuard(alias.clone());
    let out = user
        .command(kapsule_binary())
        .args(["image", "import", secret.path().to_str().unwrap(), &alias])
        .env("KAPSULE_BUS_ADDRESS", &test.bus.address)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert!(incus.get_image(&secret_fp).await.unwrap_err().is_not_found());
    assert!(incus.get_image_alias(&alias).await.unwrap_err().is_not_found());

    // Their own directory, named relative to where they stand: imported.
    let own = format!("kt-image-{}", unique_name("dir"));
    let own_dir = user.home.join(&own);
    let _cleanup = RemoveOnDrop(own_dir.clone());
    std::fs::create_dir_all(&own_dir).unwrap();
    let (meta, rootfs) = tiny_image_files(&own_dir);
    let own_fp = fingerprint_of(&meta, &rootfs);
    let status = Command::new("chown")
        .args(["-R", &format!("{}:{}", user.uid, user.gid)])
        .arg(&own_dir)
        .status()
        .unwrap();
    assert!(status.success());
    let out = user
        .command(kapsule_binary())
        .args(["image", "import", &own, &alias])
        .current_dir(&user.home)
        .env("KAPSULE_BUS_ADDRESS", &test.bus.address)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("Image '{alias}' imported")), "{stderr}");
    assert_eq!(incus.get_image_alias(&alias).await.unwrap().target, own_fp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_reports_what_there_is_to_refresh() {
    let test = &daemon_test().await;
    // The test store holds only local images here (remote_images.rs, which pulls some, never
    // runs at the same time: .config/nextest.toml), so there is nothing to refresh: a
    // warning, and success.
    let mut signals = kapsule_signals(&test.client).await;
    let path = test.manager.refresh_images("").await.unwrap();
    let mut seen = collect_operation_signals(&mut signals, path.as_str()).await;
    seen.retain(|s| s != "PropertiesChanged");
    assert_eq!(
        seen,
        [
            "Message(2, \"No auto-updating images pulled from a remote\")",
            "Message(1, \"Nothing to refresh\")",
            "Completed(true, \"\")"
        ]
    );
    // Naming an image that was not pulled fails the operation.
    let path = test.manager.refresh_images("images:debian/12").await.unwrap();
    let seen = collect_operation_signals(&mut signals, path.as_str()).await;
    assert_eq!(
        seen.last().unwrap(),
        "Completed(false, \"No pulled images match 'images:debian/12'\")"
    );
    // A filter that cannot name anything is refused before any work.
    for bad in ["nowhere:x", "images:", "a b", "local:x", "kapsule:x"] {
        let (name, message) = error_of(test.manager.refresh_images(bad).await.unwrap_err());
        assert_eq!(name, "org.kde.kapsule.Error.InvalidArgument", "{bad}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_an_import_mid_upload_leaves_no_image() {
    use futures_util::StreamExt;
    let test = &daemon_test().await;
    let (dir, _) = image_dir();
    // A big rootfs (sparse: no disk used here) so the upload takes a while.
    let rootfs = dir.path().join("rootfs.tar.gz");
    std::fs::File::create(&rootfs)
        .unwrap()
        .set_len(256 * 1024 * 1024)
        .unwrap();
    let fingerprint = fingerprint_of(&dir.path().join("metadata.tar.gz"), &rootfs);
    let alias = unique_name("cancel");
    let _guard = ImageGuard(alias.clone());

    let mut signals = kapsule_signals(&test.client).await;
    let path = test
        .manager
        .import_image(dir.path().to_str().unwrap(), &alias)
        .await
        .unwrap();
    // Cancel at the first sign of upload progress.
    let op = kapsule_dbus::OperationProxy::uncached(&test.client, path.clone())
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Some(Ok(msg)) = signals.next().await {
        let header = msg.header();
        if header.path().map(|p| p.as_str()) == Some(path.as_str())
            && header.member().map(|m| m.as_str()) == Some("ProgressUpdate")
        {
            assert!(op.cancel().await.unwrap(), "a running operation can be cancelled");
            break;
        }
        seen.push(header.member().map(|m| m.to_string()));
    }
    let rest = collect_operation_signals(&mut signals, path.as_str()).await;
    assert_eq!(
        rest.last().unwrap(),
        "Completed(false, \"Operation cancelled\")",
        "{seen:?} {rest:?}"
    );
    assert_eq!(op.status().await.unwrap(), "cancelled");
    assert!(!op.cancel().await.unwrap(), "a finished operation cannot be cancelled");
    assert!(test.env.incus.get_image_alias(&alias).await.unwrap_err().is_not_found());
    assert!(test.env.incus.get_image(&fingerprint).await.unwrap_err().is_not_found());
}

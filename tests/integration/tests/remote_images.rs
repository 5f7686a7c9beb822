//! Images from a remote: a simplestreams server on loopback (HTTPS, its self-signed certificate
//! pinned through the remote's configuration) serves a BusyBox image. Creating from
//! `<remote>:<alias>` pulls it through Incus with download progress on the operation, applies
//! the image's default options, and a second create reuses the pulled image; after the server
//! publishes a new build, `kapsule image refresh` updates it and new containers get it while the
//! old ones keep running. A remote nobody configured is refused with the list of known ones.

use std::path::Path;
use std::process::{Command, Output};

use kapsule_integration_tests::simplestreams::{SimpleStreamsServer, pack_xz};
use kapsule_integration_tests::{
    DaemonTest, InstanceGuard, busybox_rootfs, collect_operation_signals, daemon_test_with, kapsule_binary,
    kapsule_signals, sh, test_settings, unique_name,
};

/// Deletes every image Incus pulled from `server` when dropped.
struct PulledImages(String);

impl PulledImages {
    fn fingerprints(&self) -> Vec<String> {
        let out = Command::new("incus")
            .args(["query", "/1.0/images?recursion=1"])
            .output()
            .unwrap();
        let images: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        images
            .iter()
            .filter(|i| i["update_source"]["server"].as_str() == Some(self.0.as_str()))
            .map(|i| i["fingerprint"].as_str().unwrap().to_owned())
            .collect()
    }
}

impl Drop for PulledImages {
    fn drop(&mut self) {
        for fingerprint in self.fingerprints() {
            let _ = Command::new("incus").args(["image", "delete", &fingerprint]).status();
        }
    }
}

/// A daemon whose system configuration (a file in `dir`) has the remote `name` at `url`, pinning
/// `certificate`.
async fn daemon_with_remote(dir: &Path, name: &str, url: &str, certificate: &Path) -> DaemonTest {
    let file = dir.join("kapsule.conf");
    let text = format!(
        "# the tests' remote\n[remote.{name}]\nurl = {url}\ncertificate = {}\n",
        certificate.display()
    );
    std::fs::write(&file, text).unwrap();
    let mut settings = test_settings();
    settings.config_files = Some(vec![file]);
    daemon_test_with(settings).await
}

/// A BusyBox image that says which build it is in `/etc/kt-build`.
fn build(dir: &std::path::Path, which: &str) {
    let root = busybox_rootfs(dir);
    std::fs::write(root.join("etc/kt-build"), format!("{which}\n")).unwrap();
    pack_xz(dir, &format!("kt remote {which}"));
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_pulled_from_a_configured_remote_with_progress_and_refreshed() {
    let mut server = SimpleStreamsServer::start();
    let pulled = PulledImages(server.url.clone());
    let remote = unique_name("kr").replace('-', "_");
    let alias = "kt/busybox";
    let image = format!("{remote}:{alias}");

    let v1_dir = tempfile::tempdir().unwrap();
    build(v1_dir.path(), "v1");
    let v1 = server.publish(alias, "20261101_0000", v1_dir.path(), Some(r#"{"mount_home": false}"#));

    let config = tempfile::tempdir().unwrap();
    let test = &daemon_with_remote(config.path(), &remote, &server.url, &server.certificate).await;
    let incus = &test.env.incus;
    let cli = |args: &[&str]| -> Output {
        Command::new(kapsule_binary())
            .args(args)
            .env("KAPSULE_BUS_ADDRESS", &test.bus.address)
            .output()
            .unwrap()
    };

    // The first create pulls the image, with Incus's download progress on the operation.
    let first = unique_name("kr");
    let _first = InstanceGuard(first.clone());
    let mut signals = kapsule_signals(&test.client).await;
    let path = test
        .manager
        .create_container(&first, &image, Default::default())
        .await
        .unwrap();
    let seen = collect_operation_signals(&mut signals, path.as_str()).await;
    assert_eq!(seen.last().unwrap(), "Completed(true, \"\")", "{seen:?}");
    assert!(
        seen.contains(&format!("ProgressStarted(\"Downloading {image}\", 100)")),
        "{seen:?}"
    );
    let texts: Vec<&String> = seen
        .iter()
        .filter(|s| s.starts_with("ProgressTextUpdate(\"rootfs: "))
        .collect();
    let percents: Vec<i32> = seen
        .iter()
        .filter_map(|s| s.strip_prefix("ProgressUpdate(")?.strip_suffix(')')?.parse().ok())
        .collect();
    assert!(texts.len() >= 2, "Incus's progress texts: {seen:?}");
    assert!(
        percents.len() >= 2 && percents.contains(&100),
        "percentages: {percents:?}"
    );
    assert!(
        seen.iter()
            .any(|s| s.starts_with("ProgressCompleted(true") && s.contains(&v1.fingerprint[..12])),
        "{seen:?}"
    );
    assert_eq!(sh(incus, &first, "cat /etc/kt-build").await, (0, "v1\n".to_owned()));
    // The image's defaults (carried as a simplestreams requirement) apply.
    let instance = incus.get_instance(&first).await.unwrap();
    assert_eq!(instance.config["user.kapsule.mount-home"], "false");
    // The pulled image is kept current by Incus.
    assert_eq!(pulled.fingerprints(), vec![v1.fingerprint.clone()]);
    let stored = incus.get_image(&v1.fingerprint).await.unwrap();
    assert!(stored.auto_update);
    assert_eq!(stored.update_source.as_ref().unwrap().alias, alias);

    // A second create uses the pulled image: no download.
    let second = unique_name("kr");
    let _second = InstanceGuard(second.clone());
    let out = cli(&["create", &second, "--image", &image]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("Downloading"), "{}", text(&out.stderr));
    assert_eq!(sh(incus, &second, "cat /etc/kt-build").await, (0, "v1\n".to_owned()));
    let listed = text(&cli(&["image", "list"]).stdout);
    let host = server.url.strip_prefix("https://").unwrap();
    assert!(
        listed
            .lines()
            .any(|l| l.contains(&v1.fingerprint[..12]) && l.contains(&format!("{alias} @ {host}"))),
        "{listed}"
    );

    // The server publishes a new build; a refresh (at once, not after Incus's hourly index
    // cache) brings it, and says so per image.
    let v2_dir = tempfile::tempdir().unwrap();
    build(v2_dir.path(), "v2");
    let v2 = server.publish(alias, "20261102_0000", v2_dir.path(), None);
    let out = cli(&["image", "refresh", &image]);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "{image}: updated: {} -> {}",
            &v1.fingerprint[..12],
            &v2.fingerprint[..12]
        )),
        "{said}"
    );
    assert!(said.contains("Refreshed 1/1 image(s)"), "{said}");
    assert_eq!(pulled.fingerprints(), vec![v2.fingerprint.clone()]);
    // Nothing new a second time.
    let out = cli(&["image", "refresh", &image]);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success() && said.contains("already up to date"), "{said}");

    // New containers get the new build; the old ones keep working on theirs.
    let third = unique_name("kr");
    let _third = InstanceGuard(third.clone());
    let out = cli(&["create", &third, "--image", &image]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sh(incus, &third, "cat /etc/kt-build").await, (0, "v2\n".to_owned()));
    assert_eq!(sh(incus, &first, "cat /etc/kt-build").await, (0, "v1\n".to_owned()));

    // Through the CLI without a terminal, a download shows as lines: what is fetched, Incus's
    // progress, what arrived.
    let other_dir = tempfile::tempdir().unwrap();
    build(other_dir.path(), "other");
    let other = server.publish("kt/other", "20261103_0000", other_dir.path(), None);
    let fourth = unique_name("kr");
    let _fourth = InstanceGuard(fourth.clone());
    let out = cli(&["create", &fourth, "--image", &format!("{remote}:kt/other")]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    let started = format!("Downloading {remote}:kt/other...");
    let done = format!("Downloading {remote}:kt/other: done: ");
    let at = |prefix: &str| lines.iter().position(|l| l.starts_with(prefix));
    let (Some(started), Some(progress), Some(done)) = (at(&started), at("  rootfs: "), at(&done)) else {
        panic!("no download lines in:\n{stderr}");
    };
    assert!(started < progress && progress < done, "{stderr}");
    assert!(lines[done].contains(&other.fingerprint[..12]), "{stderr}");
    assert_eq!(sh(incus, &fourth, "cat /etc/kt-build").await, (0, "other\n".to_owned()));

    // A remote nobody configured: refused with the known ones, nothing made.
    let bogus = unique_name("kr");
    let out = cli(&["create", &bogus, "--image", "bogus:x"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&format!(
            "Unknown image remote 'bogus'. Known remotes: local, images, ubuntu, {remote}"
        )),
        "{}",
        text(&out.stderr)
    );
    assert!(incus.get_instance(&bogus).await.unwrap_err().is_not_found());
    let mut fingerprints = pulled.fingerprints();
    fingerprints.sort();
    let mut expected = vec![v2.fingerprint.clone(), other.fingerprint.clone()];
    expected.sort();
    assert_eq!(fingerprints, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_certificate_is_not_the_pinned_one_is_refused() {
    let server = SimpleStreamsServer::start();
    let other = SimpleStreamsServer::start();
    let _pulled = PulledImages(server.url.clone());
    let config = tempfile::tempdir().unwrap();
    // The server's URL, another server's certificate.
    let test = &daemon_with_remote(config.path(), "pinned", &server.url, &other.certificate).await;
    let name = unique_name("kr");
    let _guard = InstanceGuard(name.clone());
    let mut signals = kapsule_signals(&test.client).await;
    let path = test
        .manager
        .create_container(&name, "pinned:anything", Default::default())
        .await
        .unwrap();
    let seen = collect_operation_signals(&mut signals, path.as_str()).await;
    let last = seen.last().unwrap();
    assert!(
        last.starts_with("Completed(false, \"Creating '") && last.contains("Cannot pull pinned:anything"),
        "{seen:?}"
    );
    assert!(last.contains("certificate"), "says why: {last}");
    assert!(test.env.incus.get_instance(&name).await.unwrap_err().is_not_found());
}

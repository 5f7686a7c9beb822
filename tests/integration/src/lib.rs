//! Harness for the real-Incus tier: the environment `tests/env/up.sh` made, unique instance
//! names, and cleanup that runs even when a test fails.
//!
//! A missing prerequisite (not root, no incusd, no test image) panics with what to do about it:
//! these tests never skip silently.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use kapsule_incus::Client;
use kapsule_incus::models::{ConfigMap, Devices, InstanceSource, InstancesPost};

/// The test environment: a client for the running incusd and the test image's alias.
#[derive(Debug)]
pub struct TestEnv {
    pub incus: Client,
    pub image: String,
}

/// Connects to the test environment, or panics saying what is missing.
pub async fn env() -> TestEnv {
    assert!(
        running_as_root(),
        "the real-Incus tests need root; run them through tests/run-all.sh (see docs/TESTING.md)"
    );
    let incus = Client::from_env();
    if let Err(e) = incus.server().await {
        panic!("incusd is not reachable ({e}); start the test environment with tests/env/up.sh");
    }
    let image = std::env::var("KAPSULE_TEST_IMAGE").unwrap_or_else(|_| "kapsule-test".into());
    if let Err(e) = incus.get_image_alias(&image).await {
        panic!("the test image '{image}' is not imported ({e}); run tests/env/up.sh");
    }
    TestEnv { incus, image }
}

fn running_as_root() -> bool {
    // Reading our own uid needs no unsafe: /proc/self/status has it.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A name no other test (or earlier run) uses: `kt-<what>-<pid>-<n>`.
pub fn unique_name(what: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "kt-{what}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Deletes the instance when dropped, whether the test passed or panicked.
#[derive(Debug)]
pub struct InstanceGuard(pub String);

impl Drop for InstanceGuard {
    fn drop(&mut self) {
        // Drop cannot await; the CLI does the same job synchronously. Errors are ignored: the
        // instance may already be gone, which is what the test wanted.
        let _ = Command::new("incus").args(["delete", "--force", &self.0]).output();
    }
}

/// Deletes the image alias and the image when dropped.
#[derive(Debug)]
pub struct ImageGuard(pub String);

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let _ = Command::new("incus").args(["image", "delete", &self.0]).output();
    }
}

/// What Kapsule creates: a privileged, nesting-enabled container with no profile and its own
/// root disk, from the test image.
pub fn container_request(env: &TestEnv, name: &str, start: bool) -> InstancesPost {
    let config: ConfigMap = [
        ("security.privileged".to_owned(), "true".to_owned()),
        ("security.nesting".to_owned(), "true".to_owned()),
    ]
    .into();
    let mut devices = Devices::new();
    devices.insert(
        "root".into(),
        [("type", "disk"), ("path", "/"), ("pool", "default")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    );
    InstancesPost {
        name: name.to_owned(),
        source: InstanceSource::local_alias(env.image.clone()),
        config,
        devices,
        profiles: Vec::new(),
        kind: "container".into(),
        start,
        description: String::new(),
    }
}

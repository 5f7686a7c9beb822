//! Crash consistency: the daemon, run as its own process as in production, is killed with SIGKILL
//! at points spread over a create, a first enter's user setup, an image import and a delete
//! (fractions of the operation's measured length, so the kills land in the daemon's own steps and
//! inside Incus's operations alike, and points anchored to the operation's messages for stages
//! too short for the spread to find reliably). After each kill the state Incus holds is read (with
//! the killed daemon's Incus operation left to end), a new daemon starts, and what a user sees
//! must be whole: the work done, or not there at all, and the next create, enter or import of the
//! same name works. Each test prints the states it found (`--success-output final` shows them;
//! `docs/TESTING.md` has a run's figures).
//!
//! A reset and a clone (`undo.rs` has them whole) are killed the same way: a reset is done again
//! whole when the container is next looked at, a clone is whole or gone, its source untouched.
//!
//! Also: sessions outlive a daemon killed under them, and a create that fills its storage pool
//! fails with a clear error and leaves nothing.

use std::collections::BTreeMap;
use std::process::Child;
use std::time::{Duration, Instant};

use kapsule_dbus::ManagerProxy;
use kapsule_integration_tests::{
    InstanceGuard, PrivateBus, TestEnv, container_request, daemon_process_with, env, follow, incus_done_with,
    incus_is_busy_with, kapsule_signals, options, pack_image, sh, test_user, unique_name,
};

/// The daemon as a process, and a client of it.
struct Daemon {
    child: Child,
    client: zbus::Connection,
    manager: ManagerProxy<'static>,
}

impl Daemon {
    async fn start(bus: &PrivateBus, args: &[&str]) -> Daemon {
        let (child, client, manager) = daemon_process_with(bus, args).await;
        Daemon { child, client, manager }
    }

    /// SIGKILL, as the OOM killer or a crash would end it.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Runs an operation-starting call to its end; returns its signals.
    async fn follow(
        &self,
        call: impl std::future::Future<Output = zbus::Result<zbus::OwnedObjectPath>>,
    ) -> Vec<String> {
        follow(&self.client, call).await
    }

    /// Creates container `name` from the test image, whole.
    async fn create(&self, env: &TestEnv, name: &str) {
        let image = format!("local:{}", env.image);
        let seen = self
            .follow(self.manager.create_container(name, &image, Default::default()))
            .await;
        assert_eq!(seen.last().unwrap(), "Completed(true, \"\")", "create {name}: {seen:?}");
    }

    /// Removes container `name`, running or not.
    async fn delete(&self, name: &str) {
        let seen = self.follow(self.manager.delete_container(name, true)).await;
        assert_eq!(seen.last().unwrap(), "Completed(true, \"\")", "delete {name}: {seen:?}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the `k`-th of `n` kills lands: spread evenly over 1.3 times the operation's length, so
/// the last ones come after it ended.
fn kill_point(length: Duration, k: usize, n: usize) -> Duration {
    length.mul_f64(1.3 * (k as f64 + 0.5) / n as f64)
}

/// Where a kill lands.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// This long after the call.
    At(Duration),
    /// This long after the operation said a message with this text in it (for short stages the
    /// spread would mostly miss).
    After(&'static str, Duration),
}

impl Kill {
    /// Makes `call` (which starts an operation of `daemon`) and returns once this kill point is
    /// reached, with a label for messages; the caller kills the daemon then.
    async fn reach(
        self,
        daemon: &Daemon,
        call: impl std::future::Future<Output = zbus::Result<zbus::OwnedObjectPath>>,
    ) -> String {
        match self {
            Kill::At(at) => {
                let started = Instant::now();
                let _ = tokio::time::timeout(at, call).await;
                tokio::time::sleep(at.saturating_sub(started.elapsed())).await;
                format!("{at:?}")
            }
            Kill::After(needle, delay) => {
                let mut signals = kapsule_signals(&daemon.client).await;
                let op = call.await.unwrap();
                wait_for_message(&mut signals, op.as_str(), needle).await;
                tokio::time::sleep(delay).await;
                format!("{delay:?} after {needle:?}")
            }
        }
    }
}

/// Waits until operation `path` says a message with `needle` in it.
async fn wait_for_message(stream: &mut zbus::MessageStream, path: &str, needle: &str) {
    use futures_util::StreamExt;
    let found = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(Ok(msg)) = stream.next().await {
            let header = msg.header();
            if header.path().map(|p| p.as_str()) != Some(path) || header.member().map(|m| m.as_str()) != Some("Message")
            {
                continue;
            }
            let (_kind, text, _indent): (i32, String, i32) = msg.body().deserialize().unwrap();
            if text.contains(needle) {
                return;
            }
        }
    })
    .await;
    assert!(found.is_ok(), "no message {needle:?} from {path}");
}

/// The journal entry of an instance, if it has one.
async fn pending(env: &TestEnv, name: &str) -> Option<Option<String>> {
    match env.incus.get_instance(name).await {
        Ok(instance) => Some(instance.config.get("user.kapsule.pending").cloned()),
        Err(e) if e.is_not_found() => None,
        Err(e) => panic!("{e}"),
    }
}

fn error_name(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, _, _) => name.to_string(),
        other => format!("not a method error: {other}"),
    }
}

/// Prints and checks the states found: every kill left one of `allowed`, and `required` were
/// each found at least once (the kills covered the operation).
fn report(what: &str, found: &BTreeMap<&'static str, usize>, required: &[&str]) {
    let total: usize = found.values().sum();
    eprintln!("{what}: {total} kill points: {found:?}");
    for state in required {
        assert!(
            found.get(state).is_some_and(|n| *n > 0),
            "{what}: no kill landed in state '{state}': {found:?}"
        );
    }
}

/// The create test's kill points, in four tests that run at once (a create takes seconds, and
/// each kill is followed by a recovery and a create again): 12 spread over the create, and in each
/// part three anchored, so each part lands in each stage whatever the machine's load does to the
/// spread: in Incus's create (once the instance is there and Incus works on it), in the daemon's steps after it
/// (a create whose init hook sleeps, so the steps last seconds), and as the last message goes out.
const CREATE_SPREAD: usize = 12;
const CREATE_PARTS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_killed_anywhere_is_done_or_gone_and_the_name_works_again_1() {
    create_kills(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_killed_anywhere_is_done_or_gone_and_the_name_works_again_2() {
    create_kills(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_killed_anywhere_is_done_or_gone_and_the_name_works_again_3() {
    create_kills(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_killed_anywhere_is_done_or_gone_and_the_name_works_again_4() {
    create_kills(3).await;
}

/// Where one create kill lands.
enum CreateKill {
    /// A kill point of the spread, or an anchor in the create's messages.
    Plain(Kill),
    /// This long after Incus started working on the instance.
    InIncus(Duration),
    /// This long after the init hook of a create with `init_hooks = ["sleep 3"]` started.
    InHook(Duration),
}

/// How far a killed create came, read at once after the kill (every daemon on this Incus
/// recovers what a dead one left, other tests' daemons too, and one may remove the container
/// later: the state is read before any of them can).
async fn create_state(env: &TestEnv, name: &str) -> &'static str {
    // Incus names the instance in its operation before the instance is there: one it works on
    // comes, with the daemon's journal entry in its config.
    let in_incus = incus_is_busy_with(&format!("/1.0/instances/{name}"));
    match pending(env, name).await {
        Some(None) => "done",
        _ if in_incus => "abandoned in Incus's create",
        Some(Some(_)) => "abandoned in the daemon's steps",
        None => "not begun",
    }
}

/// Kill points `part`, `part + CREATE_PARTS`, ... of the spread over a create, and three anchored.
async fn create_kills(part: usize) {
    let env = env().await;
    let bus = PrivateBus::start();
    let image = format!("local:{}", env.image);
    let mut daemon = Daemon::start(&bus, &[]).await;

    // How long a create takes, whole.
    let name = unique_name("crash-create");
    let _guard = InstanceGuard(name.clone());
    let started = Instant::now();
    daemon.create(&env, &name).await;
    let length = started.elapsed();
    daemon.delete(&name).await;

    let part_ms = u64::try_from(part).unwrap();
    let mut kills: Vec<CreateKill> = (part..CREATE_SPREAD)
        .step_by(CREATE_PARTS)
        .map(|k| CreateKill::Plain(Kill::At(kill_point(length, k, CREATE_SPREAD))))
        .collect();
    // Anchored: while Incus unpacks and starts it (seconds on `dir`), timed from when Incus works
    // on the instance, not from a message (a loaded Incus took more than 300 ms after "Image: ..."
    // to take the request, and a client gone before that is a request Incus drops); in the
    // daemon's steps, made long by a sleeping init hook (the steps of a create without one take
    // well under 100 ms, too short for a kill timed from a signal on a loaded machine); and as the
    // last message goes out.
    kills.push(CreateKill::InIncus(Duration::from_millis(100 * part_ms)));
    kills.push(CreateKill::InHook(Duration::from_millis(100 * part_ms)));
    kills.push(CreateKill::Plain(Kill::After("created", Duration::ZERO)));
    let mut found = BTreeMap::new();
    for kill in kills {
        let name = unique_name("crash-create");
        let _guard = InstanceGuard(name.clone());
        let at = match kill {
            CreateKill::Plain(kill) => {
                let call = daemon.manager.create_container(&name, &image, Default::default());
                kill.reach(&daemon, call).await
            }
            CreateKill::InIncus(delay) => {
                daemon
                    .manager
                    .create_container(&name, &image, Default::default())
                    .await
                    .unwrap();
                // Once the instance is there (Incus names it in its operation before that) and
                // Incus still works on it (unpacking, starting).
                let resource = format!("/1.0/instances/{name}");
                let working = tokio::time::timeout(Duration::from_secs(120), async {
                    while env.incus.get_instance(&name).await.is_err() || !incus_is_busy_with(&resource) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
                .await;
                assert!(working.is_ok(), "Incus never worked on {name}");
                tokio::time::sleep(delay).await;
                format!("{delay:?} after the instance was in Incus")
            }
            CreateKill::InHook(delay) => {
                let options = options(vec![("init_hooks", zbus::Variant::from(vec!["sleep 3"]))]);
                let call = daemon.manager.create_container(&name, &image, options);
                Kill::After("Init hook 1 of 1: sleep 3", delay)
                    .reach(&daemon, call)
                    .await
            }
        };
        daemon.kill();
        let state = create_state(&env, &name).await;
        *found.entry(state).or_insert(0) += 1;
        // The killed daemon's Incus operation ends before a new daemon looks.
        incus_done_with(&name).await;

        daemon = Daemon::start(&bus, &[]).await;
        match daemon.manager.get_container_info(&name).await {
            Ok(info) => {
                assert_eq!(state, "done", "kill at {at}: listed, but the create was not done");
                assert_eq!(info.status, "Running");
                // Whole: a user can enter it, set up from scratch.
                let out = test_user()
                    .kapsule(&bus)
                    .args(["enter", &name, "--", "id", "-un"])
                    .output()
                    .unwrap();
                assert_eq!(
                    String::from_utf8_lossy(&out.stdout).trim(),
                    test_user().name,
                    "kill at {at}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Err(e) => {
                assert_eq!(error_name(&e), "org.kde.kapsule.Error.NotFound", "kill at {at}: {e}");
                assert_ne!(state, "done", "kill at {at}: a finished container vanished: {e}");
                // What recovery did, unless another test's daemon recovered it first (every
                // daemon on this Incus recovers what a dead one left).
                let said = e.to_string();
                assert!(
                    said.contains("creation was interrupted") || said.ends_with(&format!("'{name}' does not exist")),
                    "kill at {at} ({state}): {e}"
                );
                assert!(pending(&env, &name).await.is_none(), "kill at {at}: left in Incus");
                // The name is free again: a create of it works.
                daemon.create(&env, &name).await;
            }
        }
        daemon.delete(&name).await;
    }
    report(
        &format!("create (part {} of {CREATE_PARTS})", part + 1),
        &found,
        &["done", "abandoned in Incus's create", "abandoned in the daemon's steps"],
    );
}

/// `grep -c` of a user's lines in the container's user database files.
async fn account_lines(env: &TestEnv, name: &str, user: &str) -> String {
    let script = format!(
        "for f in /etc/passwd /etc/group /etc/shadow /etc/gshadow; do printf '%s ' $(grep -c '^{user}:' $f); done; test -s /etc/sudoers.d/{user} && echo sudo"
    );
    kapsule_integration_tests::sh(&env.incus, name, &script)
        .await
        .1
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_setup_killed_anywhere_is_redone_whole_on_the_next_enter() {
    const KILLS: usize = 16;
    let env = env().await;
    let bus = PrivateBus::start();
    let mut daemon = Daemon::start(&bus, &[]).await;
    let user = test_user();
    let name = unique_name("crash-setup");
    let _guard = InstanceGuard(name.clone());
    daemon.create(&env, &name).await;
    let mapped = format!("user.kapsule.host-users.{}.mapped", user.uid);
    // Forgets the setup, as a container that never saw the user.
    let unset = |env: &TestEnv| {
        let (incus, name, user, mapped) = (env.incus.clone(), name.clone(), user.name.clone(), mapped.clone());
        async move {
            // Fails when there is no such key (before the first setup), which is as good.
            let _ = std::process::Command::new("incus")
                .args(["config", "unset", &name, &mapped])
                .output()
                .unwrap();
            assert!(!incus.get_instance(&name).await.unwrap().config.contains_key(&mapped));
            let _ = std::process::Command::new("incus")
                .args(["config", "device", "remove", &name, &format!("kapsule-home-{user}")])
                .output()
                .unwrap();
            let script = format!(
                "sed -i '/^{user}:/d' /etc/passwd /etc/group /etc/shadow /etc/gshadow; rm -f /etc/sudoers.d/{user}"
            );
            assert_eq!(kapsule_integration_tests::sh(&incus, &name, &script).await.0, 0);
        }
    };
    let enter = |bus: &PrivateBus| {
        user.kapsule(bus)
            .args(["enter", &name, "--", "id", "-un"])
            .output()
            .unwrap()
    };

    // The setup an enter does first, as its own operation (`SetupUser`), so the kills land in it
    // and not in the rest of an enter.
    let home = user.home.to_str().unwrap().to_owned();
    let setup = |daemon: &Daemon| {
        let manager = daemon.manager.clone();
        let (name, user_name, home) = (name.clone(), user.name.clone(), home.clone());
        let (uid, gid) = (user.uid, user.gid);
        async move { manager.setup_user(&name, uid, gid, &user_name, &home).await }
    };
    // The first setup waits for the container's boot to settle; the one measured does not.
    for _ in 0..2 {
        unset(&env).await;
        let seen = daemon.follow(setup(&daemon)).await;
        assert_eq!(seen.last().unwrap(), "Completed(true, \"\")", "{seen:?}");
    }
    unset(&env).await;
    let started = Instant::now();
    let seen = daemon.follow(setup(&daemon)).await;
    let length = started.elapsed();
    assert_eq!(seen.last().unwrap(), "Completed(true, \"\")", "{seen:?}");
    let out = enter(&bus);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), user.name);
    let whole = account_lines(&env, &name, &user.name).await;
    assert_eq!(whole, "1 1 1 1 sudo", "a setup's account lines");

    let mut found = BTreeMap::new();
    // Spread, and anchored to the setup's first message (its steps take tens of milliseconds),
    // and as its last message goes out (a loaded machine stretches the setup past the spread).
    let mut kills: Vec<Kill> = (0..KILLS).map(|k| Kill::At(kill_point(length, k, KILLS))).collect();
    kills.extend([5, 15, 30, 45].map(|ms| Kill::After("Setting up user", Duration::from_millis(ms))));
    kills.push(Kill::After("configured", Duration::ZERO));
    let home_device = format!("kapsule-home-{}", user.name);
    for kill in kills {
        unset(&env).await;
        let at = kill.reach(&daemon, setup(&daemon)).await;
        daemon.kill();
        let instance = env.incus.get_instance(&name).await.unwrap();
        let state = match (
            instance.config.get(&mapped).map(String::as_str),
            instance.devices.contains_key(&home_device),
            account_lines(&env, &name, &user.name).await.as_str(),
        ) {
            (Some("true"), _, _) => "done",
            (_, false, "0 0 0 0") => "not begun",
            _ => "partly done",
        };
        *found.entry(state).or_insert(0) += 1;
        daemon = Daemon::start(&bus, &[]).await;
        let out = enter(&bus);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            user.name,
            "kill at {at} ({state}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            account_lines(&env, &name, &user.name).await,
            whole,
            "kill at {at} ({state})"
        );
        let instance = env.incus.get_instance(&name).await.unwrap();
        assert_eq!(instance.config.get(&mapped).map(String::as_str), Some("true"));
    }
    report("user setup", &found, &["done", "partly done"]);
}

/// A split image with `megabytes` of random data in it, so its upload and unpacking take a while.
fn big_image(dir: &std::path::Path, megabytes: usize) -> (std::path::PathBuf, std::path::PathBuf) {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(&root).unwrap();
    let status = std::process::Command::new("head")
        .args(["-c", &format!("{megabytes}M"), "/dev/urandom"])
        .stdout(std::fs::File::create(root.join("payload")).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    pack_image(dir, "kt crash import")
}

/// The turn at recovery that the daemons on this machine take (an exclusive `flock` of
/// `/run/lock/kapsule-recovery.lock`, as `host/journal.rs` takes it), for a test to read what a
/// kill left before any daemon, another test's too, can recover it.
async fn recovery_turn() -> std::fs::File {
    tokio::task::spawn_blocking(|| {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/lock/kapsule-recovery.lock")
            .unwrap();
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).unwrap();
        file
    })
    .await
    .unwrap()
}

/// Waits until Incus has no image upload running (its operations name no resource to wait for).
async fn uploads_ended(env: &TestEnv) {
    for _ in 0..1200 {
        let running = env.incus.running_operations().await.unwrap();
        if !running.iter().any(|op| op.description == "Downloading image") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("an image upload still runs after 120 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_killed_anywhere_leaves_the_alias_whole_or_nothing() {
    const KILLS: usize = 12;
    let env = env().await;
    let bus = PrivateBus::start();
    let mut daemon = Daemon::start(&bus, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    big_image(dir.path(), 48);
    let path = dir.path().to_str().unwrap().to_owned();
    let alias = unique_name("crash-import");
    let image_of = |env: &TestEnv, alias: &str| {
        let (incus, alias) = (env.incus.clone(), alias.to_owned());
        async move {
            match incus.get_image_alias(&alias).await {
                Ok(a) => Some(a.target),
                Err(e) if e.is_not_found() => None,
                Err(e) => panic!("{e}"),
            }
        }
    };
    let remove = |fingerprint: &str| {
        let _ = std::process::Command::new("incus")
            .args(["image", "delete", fingerprint])
            .output();
    };

    let started = Instant::now();
    let seen = daemon.follow(daemon.manager.import_image(&path, &alias)).await;
    let length = started.elapsed();
    assert_eq!(seen.last().unwrap(), "Completed(true, \"\")", "{seen:?}");
    let fingerprint = image_of(&env, &alias).await.expect("imported");
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::process::Command::new("incus")
                .args(["image", "delete", &self.0])
                .output();
        }
    }
    let _cleanup = Cleanup(fingerprint.clone());
    remove(&fingerprint);

    // Spread over the whole import, and more while Incus unpacks (after the upload, which takes
    // most of the time, and short); one as the upload starts and one as the last message goes
    // out, so each outcome is reached however the machine's load stretches the later imports
    // against the first one the spread is measured on.
    let mut kills: Vec<Kill> = (0..KILLS).map(|k| Kill::At(kill_point(length, k, KILLS))).collect();
    kills.extend([0, 50, 150, 300, 600].map(|ms| Kill::After("Unpacking the image", Duration::from_millis(ms))));
    kills.push(Kill::After("Uploading metadata.tar.gz", Duration::ZERO));
    kills.push(Kill::After("imported (", Duration::ZERO));
    let mut found = BTreeMap::new();
    for kill in kills {
        let at = kill.reach(&daemon, daemon.manager.import_image(&path, &alias)).await;
        daemon.kill();
        // Incus goes on unpacking after the kill; what it made is read once it is done, in the
        // daemons' recovery turn, so no other test's daemon removes it first.
        let turn = recovery_turn().await;
        uploads_ended(&env).await;
        let entry = |image: &kapsule_incus::models::Image| image.properties.contains_key("kapsule.pending");
        let state = match (image_of(&env, &alias).await, env.incus.get_image(&fingerprint).await) {
            (Some(_), Ok(image)) if !entry(&image) => "done",
            (Some(_), Ok(_)) => "aliased, entry not cleared",
            (None, Ok(image)) if entry(&image) => "uploaded, no alias",
            (None, Err(e)) if e.is_not_found() => "not begun",
            other => panic!("kill at {at}: unexpected state {other:?}"),
        };
        *found.entry(state).or_insert(0) += 1;
        drop(turn);

        daemon = Daemon::start(&bus, &[]).await;
        // Looking at the images recovers what was left; then the store is whole.
        daemon.manager.list_images().await.unwrap();
        let mut whole = false;
        for _ in 0..300 {
            let alias_now = image_of(&env, &alias).await;
            let image_now = env.incus.get_image(&fingerprint).await;
            whole = match (&alias_now, &image_now) {
                (Some(_), Ok(image)) => !entry(image),
                (None, Err(e)) => e.is_not_found(),
                _ => false,
            };
            if whole {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(whole, "kill at {at} ({state}): the store is not whole after recovery");
        // The next import of the alias works, and names the image.
        let seen = daemon.follow(daemon.manager.import_image(&path, &alias)).await;
        assert_eq!(seen.last().unwrap(), "Completed(true, \"\")", "kill at {at}: {seen:?}");
        let image = env.incus.get_image(&fingerprint).await.unwrap();
        assert!(!entry(&image), "kill at {at}: the entry stays after a whole import");
        remove(&fingerprint);
    }
    report("import", &found, &["done", "not begun", "uploaded, no alias"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_killed_anywhere_is_finished_or_not_begun() {
    const KILLS: usize = 8;
    let env = env().await;
    let bus = PrivateBus::start();
    let mut daemon = Daemon::start(&bus, &[]).await;
    let name = unique_name("crash-delete");
    let _guard = InstanceGuard(name.clone());
    make_container(&env, &name).await;
    let started = Instant::now();
    daemon.delete(&name).await;
    let length = started.elapsed();

    let mut found = BTreeMap::new();
    // Spread over the delete's measured length, and one as its last message goes out (a loaded
    // machine stretches the delete past the spread).
    let mut kills: Vec<Kill> = (0..KILLS).map(|k| Kill::At(kill_point(length, k, KILLS))).collect();
    kills.push(Kill::After("removed", Duration::ZERO));
    for kill in kills {
        let name = unique_name("crash-delete");
        let _guard = InstanceGuard(name.clone());
        make_container(&env, &name).await;
        let at = kill.reach(&daemon, daemon.manager.delete_container(&name, true)).await;
        daemon.kill();
        // Read at once: another test's daemon may finish an abandoned delete soon after.
        let state = match pending(&env, &name).await {
            None => "done",
            Some(None) => "not begun",
            Some(Some(_)) => "abandoned",
        };
        *found.entry(state).or_insert(0) += 1;
        incus_done_with(&name).await;
        daemon = Daemon::start(&bus, &[]).await;
        match daemon.manager.get_container_info(&name).await {
            Ok(_) => {
                assert_eq!(state, "not begun", "kill at {at}");
                daemon.delete(&name).await;
            }
            Err(e) => {
                assert_eq!(error_name(&e), "org.kde.kapsule.Error.NotFound", "kill at {at}: {e}");
                let said = e.to_string();
                assert!(
                    said.contains("removal was interrupted") || said.ends_with(&format!("'{name}' does not exist")),
                    "{e}"
                );
            }
        }
        assert!(
            pending(&env, &name).await.is_none(),
            "kill at {at} ({state}): still in Incus"
        );
    }
    report("delete", &found, &["done", "abandoned"]);
}

/// A running Kapsule container made directly in Incus (faster than a create; the metadata of one
/// the daemon made), with a file of its own in `/opt/kt-own`.
async fn make_container(env: &TestEnv, name: &str) {
    let mut request = container_request(env, name, true);
    request.config.insert("user.kapsule.owner".into(), "0".into());
    request.config.insert("user.kapsule.host-rootfs".into(), "false".into());
    let op = env.incus.create_instance(&request).await.unwrap();
    env.incus
        .wait_operation(&op.id, Some(Duration::from_secs(120)))
        .await
        .unwrap();
    let (code, out) = sh(&env.incus, name, "echo mine > /opt/kt-own").await;
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_killed_anywhere_is_done_again_whole() {
    const KILLS: usize = 8;
    let env = env().await;
    let bus = PrivateBus::start();
    let mut daemon = Daemon::start(&bus, &[]).await;
    let name = unique_name("crash-reset");
    let _guard = InstanceGuard(name.clone());
    make_container(&env, &name).await;
    let started = Instant::now();
    let seen = daemon.follow(daemon.manager.reset_container(&name, "")).await;
    assert_eq!(seen.last().unwrap(), "Completed(true, \"\")", "{seen:?}");
    let length = started.elapsed();

    let mut found = BTreeMap::new();
    // Spread over the reset's measured length, and anchored (a loaded machine stretches the
    // reset past the spread): while Incus rebuilds, and as the last message goes out.
    let mut kills: Vec<Kill> = (0..KILLS).map(|k| Kill::At(kill_point(length, k, KILLS))).collect();
    kills.push(Kill::After("Making its files anew", Duration::from_millis(100)));
    kills.push(Kill::After("was reset from", Duration::ZERO));
    for kill in kills {
        let name = unique_name("crash-reset");
        let _guard = InstanceGuard(name.clone());
        make_container(&env, &name).await;
        let label = kill.reach(&daemon, daemon.manager.reset_container(&name, "")).await;
        daemon.kill();
        // Read at once (another test's daemon may redo an abandoned reset soon after). With an
        // entry the container may be stopped; without one the reset did not begin or finished,
        // and it runs.
        let state = match pending(&env, &name).await.expect("a reset never removes the container") {
            Some(_) => "abandoned",
            None if sh(&env.incus, &name, "test -e /opt/kt-own").await.0 == 0 => "not begun",
            None => "done",
        };
        *found.entry(state).or_insert(0) += 1;
        incus_done_with(&name).await;
        daemon = Daemon::start(&bus, &[]).await;
        // Looked at, an abandoned reset is done again before the answer.
        let info = daemon.manager.get_container_info(&name).await;
        let info = info.unwrap_or_else(|e| panic!("kill at {label} ({state}): {e}"));
        assert_eq!(info.status, "Running", "kill at {label} ({state})");
        let instance = env.incus.get_instance(&name).await.unwrap();
        assert!(
            !instance.config.contains_key("user.kapsule.pending")
                && !instance.config.contains_key("user.kapsule.reset-image"),
            "kill at {label} ({state}): {:?}",
            instance.config
        );
        let (code, out) = sh(
            &env.incus,
            &name,
            "test -d /.kapsule && ! test -e /opt/kt-own || echo no",
        )
        .await;
        if state != "not begun" {
            assert_eq!(
                (code, out.as_str()),
                (0, ""),
                "kill at {label} ({state}): reset, and fixed up"
            );
        }
    }
    report("reset", &found, &["done", "abandoned"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_killed_anywhere_is_whole_or_gone() {
    const KILLS: usize = 8;
    let env = env().await;
    let bus = PrivateBus::start();
    let mut daemon = Daemon::start(&bus, &[]).await;
    let source = unique_name("crash-clone");
    let _source = InstanceGuard(source.clone());
    make_container(&env, &source).await;
    let copy = unique_name("crash-clone");
    let _copy = InstanceGuard(copy.clone());
    let started = Instant::now();
    let seen = daemon.follow(daemon.manager.clone_container(&source, &copy, "")).await;
    assert_eq!(seen.last().unwrap(), "Completed(true, \"\")", "{seen:?}");
    let length = started.elapsed();

    let mut found = BTreeMap::new();
    // Spread over the clone's measured length, and one as its last message goes out (a loaded
    // machine stretches the clone past the spread).
    let mut kills: Vec<Kill> = (0..KILLS).map(|k| Kill::At(kill_point(length, k, KILLS))).collect();
    kills.push(Kill::After("created from", Duration::ZERO));
    for kill in kills {
        let copy = unique_name("crash-clone");
        let _guard = InstanceGuard(copy.clone());
        let label = kill
            .reach(&daemon, daemon.manager.clone_container(&source, &copy, ""))
            .await;
        daemon.kill();
        // Read at once: another test's daemon may remove an abandoned copy soon after.
        let state = match pending(&env, &copy).await {
            None => "not begun",
            Some(None) => "done",
            Some(Some(_)) => "abandoned",
        };
        *found.entry(state).or_insert(0) += 1;
        incus_done_with(&copy).await;
        daemon = Daemon::start(&bus, &[]).await;
        match daemon.manager.get_container_info(&copy).await {
            Ok(info) => {
                assert_eq!(state, "done", "kill at {label}");
                assert_eq!(info.status, "Running");
                let (code, out) = sh(&env.incus, &copy, "hostname; cat /opt/kt-own").await;
                assert_eq!((code, out), (0, format!("{copy}\nmine\n")), "kill at {label}");
            }
            Err(e) => {
                assert_ne!(state, "done", "kill at {label}: {e}");
                assert_eq!(error_name(&e), "org.kde.kapsule.Error.NotFound", "kill at {label}: {e}");
                assert!(
                    pending(&env, &copy).await.is_none(),
                    "kill at {label} ({state}): still in Incus"
                );
            }
        }
        // The source is only read: whatever happened to the copy, it runs on as it was.
        let (code, out) = sh(&env.incus, &source, "cat /opt/kt-own").await;
        assert_eq!((code, out.as_str()), (0, "mine\n"), "kill at {label}");
        assert_eq!(env.incus.get_instance(&source).await.unwrap().status, "Running");
    }
    report("clone", &found, &["done", "abandoned"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_outlive_a_killed_daemon_and_the_next_enter_works() {
    let env = env().await;
    let bus = PrivateBus::start();
    let daemon = Daemon::start(&bus, &[]).await;
    let user = test_user();
    let name = unique_name("crash-session");
    let _guard = InstanceGuard(name.clone());
    daemon.create(&env, &name).await;
    let session = user
        .kapsule(&bus)
        .args(["enter", &name, "--", "sh", "-c", "sleep 3; echo still here; exit 7"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    daemon.kill();
    let out = tokio::task::spawn_blocking(move || session.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (out.status.code(), String::from_utf8_lossy(&out.stdout).trim()),
        (Some(7), "still here"),
        "the session went on without the daemon: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _daemon = Daemon::start(&bus, &[]).await;
    let out = user
        .kapsule(&bus)
        .args(["enter", &name, "--", "id", "-un"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), user.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_fills_its_disk_fails_clearly_and_leaves_nothing() {
    let env = env().await;
    // A 48 MiB file system, far less than the image's root.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.img");
    let mount = dir.path().join("mnt");
    std::fs::create_dir(&mount).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["truncate", "-s", "48M", file.to_str().unwrap()]);
    run(&["mkfs.ext4", "-q", file.to_str().unwrap()]);
    run(&["mount", "-o", "loop", file.to_str().unwrap(), mount.to_str().unwrap()]);
    struct Unmount(std::path::PathBuf, String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("incus")
                .args(["storage", "delete", &self.1])
                .output();
            let _ = std::process::Command::new("umount").arg(&self.0).output();
        }
    }
    let pool = unique_name("small");
    let _unmount = Unmount(mount.clone(), pool.clone());
    let source = mount.join("pool");
    std::fs::create_dir(&source).unwrap();
    run(&[
        "incus",
        "storage",
        "create",
        &pool,
        "dir",
        &format!("source={}", source.display()),
    ]);

    let bus = PrivateBus::start();
    let daemon = Daemon::start(&bus, &["--storage-pool", &pool]).await;
    let name = unique_name("crash-full");
    let _guard = InstanceGuard(name.clone());
    let seen = daemon
        .follow(
            daemon
                .manager
                .create_container(&name, &format!("local:{}", env.image), Default::default()),
        )
        .await;
    let last = seen.last().unwrap();
    assert!(last.starts_with("Completed(false, "), "{seen:?}");
    assert!(last.contains("no space left on device"), "the error says why: {last}");
    assert!(last.contains(&format!("Creating '{name}' failed")), "{last}");
    incus_done_with(&name).await;
    assert!(pending(&env, &name).await.is_none(), "nothing left in Incus");
    let leftovers: Vec<_> = walk(&source.join("containers"));
    assert!(leftovers.is_empty(), "nothing left in the pool: {leftovers:?}");
    let e = daemon.manager.get_container_info(&name).await.unwrap_err();
    assert_eq!(error_name(&e), "org.kde.kapsule.Error.NotFound");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default()
}

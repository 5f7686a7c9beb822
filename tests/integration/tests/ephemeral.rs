//! `kapsule run` (distrobox's `ephemeral`) against real containers and the daemon as a process of
//! its own: the session's output and exit status are the command's, and the container is gone
//! when it ends; the daemon removes it also when the client is killed (its session is hung up,
//! what it left running does not keep the container), and across a daemon restart in the middle
//! of the session.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kapsule_integration_tests::{InstanceGuard, PrivateBus, daemon_process, env, unique_name};

fn run(bus: &PrivateBus, image: &str, name: &str, script: &str) -> Command {
    let mut command = Command::new(kapsule_integration_tests::kapsule_binary());
    command
        .args([
            "run", "--image", image, "--name", name, "--no-gpu", "--", "sh", "-c", script,
        ])
        .env("KAPSULE_BUS_ADDRESS", &bus.address)
        .stdin(Stdio::null());
    command
}

/// Starts `kapsule run` of a session that says `started` and then waits long; returns once it
/// said so (the container made, the session in it).
fn started(bus: &PrivateBus, image: &str, name: &str) -> Child {
    let mut child = run(bus, image, name, "echo started; sleep 600")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "started\n", "the session started");
    child
}

async fn gone_within(incus: &kapsule_incus::Client, name: &str, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if incus.get_instance(name).await.is_err_and(|e| e.is_not_found()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_has_the_commands_output_and_status_and_leaves_nothing() {
    let env = env().await;
    let bus = PrivateBus::start();
    let (mut daemon, _client, _manager) = daemon_process(&bus).await;
    let image = format!("local:{}", env.image);
    let name = unique_name("run");
    let _guard = InstanceGuard(name.clone());
    let mut command = run(&bus, &image, &name, "echo hi; exit 3");
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        env.incus.get_instance(&name).await.unwrap_err().is_not_found(),
        "gone by the time kapsule run returned"
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_client_and_a_daemon_restart_leave_no_container() {
    let env = env().await;
    let bus = PrivateBus::start();
    let (mut daemon, _client, _manager) = daemon_process(&bus).await;
    let image = format!("local:{}", env.image);

    // The client killed: the session is hung up, and the `sleep` it left behind does not keep
    // the container.
    let name = unique_name("run-kill");
    let _guard = InstanceGuard(name.clone());
    let mut client = started(&bus, &image, &name);
    client.kill().unwrap();
    client.wait().unwrap();
    assert!(
        gone_within(&env.incus, &name, Duration::from_secs(15)).await,
        "the container outlived its killed client"
    );

    // The daemon killed and started again during the session: the new one finds the session
    // and keeps the container while it lasts, then removes it.
    let name = unique_name("run-restart");
    let _guard = InstanceGuard(name.clone());
    let mut client = started(&bus, &image, &name);
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let (mut daemon, _client, _manager) = daemon_process(&bus).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.incus.get_instance(&name).await.unwrap().status,
        "Running",
        "kept while the session lasts"
    );
    client.kill().unwrap();
    client.wait().unwrap();
    assert!(
        gone_within(&env.incus, &name, Duration::from_secs(15)).await,
        "the new daemon did not remove it"
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
}

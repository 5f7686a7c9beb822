//! Tier 0: the Manager served over a peer-to-peer socket pair, as on the daemon's own socket,
//! against a fake Incus (answers shaped like the recorded ones of `kapsule-incus`) and a stand-in
//! authority: method, authorization, pipeline and reply, without root, a bus or Incus.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;
use kapsule_dbus::{ContainerInfo, Error, MANAGER_PATH, ManagerProxy, OperationProxy};
use kapsule_incus::fake::{FakeIncus, error_body};
use serde_json::{Value, json};
use zbus::OwnedVariant;

use crate::container::Containers;
use crate::dbus::Surface;
use crate::host::activity::Activity;
use crate::host::settings::{HostSync, Settings};
use crate::identity::calls::Calls;
use crate::identity::link::{Authority, Link};
use crate::identity::peer::Peer;
use crate::operation::Operations;
use crate::operation::clients::Clients;
use crate::pipeline::Daemon;

/// The surface on one end of a socket pair; a client and its proxy on the other.
struct Served {
    incus: FakeIncus,
    client: zbus::Connection,
    manager: ManagerProxy<'static>,
    /// The server's table of calls under way.
    calls: Calls,
    _server: zbus::Connection,
}

/// Serves the Manager as to a socket client whom the authority allows `allowed` (polkit ids).
async fn serve(incus: FakeIncus, allowed: &[&'static str]) -> Served {
    serve_with(incus, Authority::Allowing(allowed.to_vec())).await
}

/// Serves the Manager as to a socket client, `authority` deciding what it may.
async fn serve_with(incus: FakeIncus, authority: Authority) -> Served {
    let settings = Settings {
        config_files: Some(Vec::new()),
        host_sync: HostSync::Off,
        ..Default::default()
    };
    let activity = Activity::new();
    let containers = Arc::new(Containers::new(incus.client(), settings, activity.clone()));
    let daemon = Arc::new(Daemon {
        containers,
        clients: Clients::default(),
        setup_locks: Default::default(),
        recovered: Default::default(),
        ephemeral: Default::default(),
    });
    let surface = Surface {
        daemon: daemon.clone(),
        operations: Operations::new(activity.clone()),
        authority,
        calls: Calls::default(),
    };
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let link = Link::peer(
        surface.authority.clone(),
        &activity,
        &surface.calls,
        1,
        Peer::of(&ours).unwrap(),
    );
    // The daemon's own transport, as on its socket.
    let ours = crate::dbus::transport::CloexecSocket::new(ours)
        .unwrap()
        .with_client_limits();
    let server = zbus::connection::Builder::socket(ours)
        .server(zbus::Guid::generate())
        .p2p()
        .serve_at(MANAGER_PATH, zbus::fdo::ObjectManager)
        .serve_at(MANAGER_PATH, surface.manager(link))
        .build();
    let client = zbus::connection::Builder::unix_stream(theirs).p2p().build();
    let (server, client) = tokio::join!(server, client);
    let (server, client) = (server.unwrap(), client.unwrap());
    daemon.clients.add_peer(1, server.clone());
    let manager = ManagerProxy::new(&client).await.unwrap();
    Served {
        incus,
        client,
        manager,
        calls: surface.calls.clone(),
        _server: server,
    }
}

fn sync(metadata: Value) -> String {
    json!({"type": "sync", "status": "Success", "status_code": 200, "operation": "", "error_code": 0, "error": "", "metadata": metadata})
        .to_string()
}

/// A running Kapsule container in session mode, with uid 1000 set up in it.
fn dev() -> Value {
    json!({
        "name": "dev", "status": "Running", "status_code": 103, "type": "container",
        "created_at": "2026-11-22T00:22:55.197237729Z", "profiles": [], "devices": {},
        "config": {
            "image.description": "Debian 12",
            "user.kapsule.session-mode": "true",
            "user.kapsule.host-users.1000.mapped": "true"
        }
    })
}

/// A stopped Kapsule container made from an image that is no longer in the store.
fn orphan() -> Value {
    json!({
        "name": "orphan", "status": "Stopped", "status_code": 102, "type": "container",
        "created_at": "2026-11-22T00:22:55Z", "profiles": [], "devices": {},
        "config": {
            "image.description": "Debian 12",
            "user.kapsule.owner": "1000",
            "volatile.base_image": "4c2e0f8ab9d1e7c3b5a6f7e8d9c0b1a2f3e4d5c6b7a8f9e0d1c2b3a4f5e6d7c8"
        }
    })
}

/// An Incus instance that Kapsule did not make.
fn foreign() -> Value {
    json!({"name": "foreign", "status": "Running", "status_code": 103, "type": "container", "config": {}, "profiles": [], "devices": {}})
}

fn operation(id: &str, status: &str, code: u16) -> Value {
    json!({"id": id, "class": "task", "description": "Stopping instance", "status": status, "status_code": code,
           "resources": {}, "metadata": null, "may_cancel": false, "err": ""})
}

/// Incus with `dev` and `foreign`: what the reads and a stop of `dev` ask.
fn incus() -> FakeIncus {
    FakeIncus::start(|method, path| match (method, path) {
        ("GET", "/1.0/instances?recursion=1") => (200, sync(json!([dev(), foreign()]))),
        ("GET", "/1.0/instances/dev") => (200, sync(dev())),
        ("GET", "/1.0/instances/foreign") => (200, sync(foreign())),
        ("GET", "/1.0/instances/orphan") => (200, sync(orphan())),
        ("GET", "/1.0/instances/orphan/snapshots?recursion=1") => (200, sync(json!([]))),
        ("GET", "/1.0/images?recursion=1") => (200, sync(json!([]))),
        ("GET", "/1.0/instances/dev/snapshots?recursion=1") => (
            200,
            sync(json!([
                {"name": "auto-20261201-100000", "created_at": "2026-12-01T10:00:00.5Z", "stateful": false, "config": {}},
                {"name": "before", "created_at": "2026-11-30T09:00:00Z", "stateful": false, "config": {}}
            ])),
        ),
        ("PUT", "/1.0/instances/dev/state") => (
            202,
            json!({"type": "async", "status": "Operation created", "status_code": 100,
                   "operation": "/1.0/operations/stop-1", "error_code": 0, "error": "",
                   "metadata": operation("stop-1", "Running", 103)})
            .to_string(),
        ),
        ("GET", p) if p.starts_with("/1.0/operations/stop-1/wait") => (200, sync(operation("stop-1", "Success", 200))),
        _ => (404, error_body(404, "not found")),
    })
}

fn is<T: std::fmt::Debug>(result: Result<T, zbus::Error>, want: fn(&Error) -> bool) -> String {
    match result.map_err(Error::from) {
        Err(e) if want(&e) => format!("{e}"),
        other => panic!("unexpected: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_answer_with_the_declared_types_and_named_errors() {
    let served = serve(incus(), &[]).await;
    let m = &served.manager;
    let dev = ContainerInfo {
        name: "dev".into(),
        status: "Running".into(),
        image: "Debian 12".into(),
        created: "2026-11-22T00:22:55.197237+00:00".into(),
        mode: "Session".into(),
    };
    assert_eq!(
        m.list_containers().await.unwrap(),
        std::slice::from_ref(&dev),
        "only Kapsule's"
    );
    assert_eq!(m.get_container_info("dev").await.unwrap(), dev);
    let e = is(m.get_container_info("foreign").await, |e| {
        matches!(e, Error::NotFound(_))
    });
    // Answered as one that does not exist: nobody learns what else Incus holds.
    assert!(e.ends_with("Container 'foreign' does not exist"), "{e}");
    is(m.get_container_info("Not A Name").await, |e| {
        matches!(e, Error::InvalidArgument(_))
    });
    let snapshots = m.list_snapshots("dev").await.unwrap();
    let listed: Vec<(&str, &str, bool)> = snapshots
        .iter()
        .map(|s| (s.name.as_str(), s.created.as_str(), s.automatic))
        .collect();
    assert_eq!(
        listed,
        [
            ("before", "2026-11-30T09:00:00+00:00", false),
            ("auto-20261201-100000", "2026-12-01T10:00:00.500000+00:00", true)
        ],
        "oldest first, Kapsule's own marked"
    );
    is(m.list_snapshots("foreign").await, |e| matches!(e, Error::NotFound(_)));
    assert!(m.is_user_setup("dev", 1000).await.unwrap());
    assert!(!m.is_user_setup("dev", 1001).await.unwrap());
    assert_eq!(m.list_images().await.unwrap(), "[]");
    let schema: Value = serde_json::from_str(&m.get_create_schema().await.unwrap()).unwrap();
    assert!(schema["sections"].as_array().is_some_and(|s| !s.is_empty()), "{schema}");
    assert_eq!(m.version().await.unwrap(), env!("CARGO_PKG_VERSION"));
    let config = m.get_config().await.unwrap();
    assert!(config.contains_key("default_container"), "{config:?}");
    // A name no container can have is refused before Incus is asked about it.
    assert!(
        !served.incus.requests().iter().any(|r| r.contains("Not")),
        "{:?}",
        served.incus.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_larger_than_the_socket_takes_drops_the_client_before_any_work() {
    let served = serve(incus(), &[]).await;
    let m = &served.manager;
    // Under the limit, a large call is read and answered (here: no container has such a name).
    let large = "x".repeat(3 << 20);
    is(m.get_container_info(&large).await, |e| {
        matches!(e, Error::InvalidArgument(_))
    });
    // Over it, the client is dropped at the message's header: no answer, nothing asked of Incus,
    // and the connection is gone.
    let huge = "x".repeat(5 << 20);
    let dropped = Error::from(m.get_container_info(&huge).await.unwrap_err());
    assert!(!matches!(dropped, Error::InvalidArgument(_)), "{dropped}");
    assert!(
        m.version().await.is_err(),
        "the connection outlived a message over the limit"
    );
    assert_eq!(served.incus.requests(), Vec::<String>::new(), "something reached Incus");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_calls_under_way_are_bounded_and_the_rest_refused_at_once() {
    // polkit answers only when the test says: each stop waits as for a password dialog.
    let answers = Arc::new(tokio::sync::Semaphore::new(0));
    let served = serve_with(incus(), Authority::Waiting(answers.clone())).await;
    let m = &served.manager;
    let waiting: Vec<_> = (0..crate::identity::calls::MAX_CALLS)
        .map(|_| {
            let m = m.clone();
            tokio::spawn(async move { m.stop_container("dev", false).await })
        })
        .collect();
    // Once they all wait, one more is refused without waiting; reads, which wait for nobody,
    // still answer.
    let uid = rustix::process::getuid().as_raw();
    let patience = std::time::Duration::from_secs(10);
    let started = std::time::Instant::now();
    while served.calls.of(uid) < crate::identity::calls::MAX_CALLS {
        assert!(started.elapsed() < patience, "the calls never were all under way");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let more = tokio::time::timeout(patience, m.stop_container("dev", false)).await;
    let refused = Error::from(more.expect("a call over the bound waits").unwrap_err());
    assert!(
        matches!(&refused, Error::Failed(m) if m.contains("Too many of your calls are under way")),
        "{refused}"
    );
    assert_eq!(m.version().await.unwrap(), env!("CARGO_PKG_VERSION"));
    // Answered, each runs; afterwards the caller's calls are taken again.
    answers.add_permits(1000);
    for call in waiting {
        call.await.unwrap().unwrap();
    }
    m.stop_container("dev", false).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_refused_before_any_work_when_the_authority_says_no() {
    let served = serve(incus(), &["org.kde.kapsule.enter-container"]).await;
    let m = &served.manager;
    let refused = |e: &Error| matches!(e, Error::NotAuthorized(_));
    is(m.create_container("new", "local:x", HashMap::new()).await, refused);
    // Asking for an unprivileged container is another action, refused too here.
    let unprivileged = HashMap::from([("unprivileged".to_owned(), OwnedVariant::from(true))]);
    let e = is(m.create_container("new", "local:x", unprivileged).await, refused);
    assert!(e.contains("not allowed to use unprivileged Kapsule containers"), "{e}");
    let e = is(m.import_image("/nonexistent", "x").await, refused);
    assert!(e.contains("not allowed to manage Kapsule images"), "{e}");
    is(m.refresh_images("").await, refused);
    is(m.delete_image("x").await, refused);
    assert_eq!(served.incus.requests(), Vec::<String>::new(), "nothing reached Incus");
    // Setting someone else up is managing: the container is looked up, then the caller refused.
    let uid = rustix::process::getuid().as_raw().wrapping_add(1);
    is(m.setup_user("dev", uid, uid, "someone", "/home/someone").await, refused);
    assert_eq!(served.incus.requests(), ["GET /1.0/instances/dev"]);
    // So is every change of an existing container: its owner is read for polkit's rules (and
    // whether it is unprivileged).
    let e = is(m.start_container("dev").await, refused);
    assert!(e.contains("not allowed to manage Kapsule containers"), "{e}");
    is(m.stop_container("dev", false).await, refused);
    is(m.delete_container("dev", true).await, refused);
    is(m.create_snapshot("dev", "s").await, refused);
    is(m.delete_snapshot("dev", "s").await, refused);
    is(m.restore_snapshot("dev", "s").await, refused);
    is(m.reset_container("dev", "").await, refused);
    is(m.clone_container("dev", "copy", "").await, refused);
    let requests = served.incus.requests();
    assert!(requests.iter().all(|r| r == "GET /1.0/instances/dev"), "{requests:?}");
    assert!(
        m.list_operations().await.unwrap().is_empty(),
        "no operation was started"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_snapshot_and_clone_names_are_refused_before_incus_is_asked_about_them() {
    let served = serve(incus(), &["org.kde.kapsule.manage-container"]).await;
    let m = &served.manager;
    let invalid = |e: &Error| matches!(e, Error::InvalidArgument(_));
    for bad in ["a/b", "..", "-x", ""] {
        if !bad.is_empty() {
            is(m.create_snapshot("dev", bad).await, invalid);
        }
        is(m.delete_snapshot("dev", bad).await, invalid);
        is(m.restore_snapshot("dev", bad).await, invalid);
    }
    let e = is(m.create_snapshot("dev", "auto-mine").await, invalid);
    assert!(e.contains("snapshots Kapsule takes itself"), "{e}");
    is(m.clone_container("dev", "9copy", "").await, invalid);
    is(m.reset_container("Not A Name", "").await, invalid);
    let requests = served.incus.requests();
    assert!(requests.iter().all(|r| r == "GET /1.0/instances/dev"), "{requests:?}");
    assert!(
        m.list_operations().await.unwrap().is_empty(),
        "no operation was started"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_whose_image_is_gone_says_so_and_how_to_name_another() {
    let served = serve(incus(), &["org.kde.kapsule.manage-container"]).await;
    let e = is(served.manager.reset_container("orphan", "").await, |e| {
        matches!(e, Error::NotFound(_))
    });
    assert!(
        e.contains("The image 'orphan' was made from, 4c2e0f8ab9d1 (Debian 12), is no longer in the image store")
            && e.contains("reset it from another with --image"),
        "{e}"
    );
    let e = is(served.manager.reset_container("orphan", "no-such-alias").await, |e| {
        matches!(e, Error::NotFound(_))
    });
    assert!(
        e.contains("No local image with alias or fingerprint 'no-such-alias'"),
        "{e}"
    );
    let changed: Vec<String> = served
        .incus
        .requests()
        .into_iter()
        .filter(|r| !r.starts_with("GET "))
        .collect();
    assert!(changed.is_empty(), "only reads: {changed:?}");
    assert!(served.manager.list_operations().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_change_runs_as_an_operation_and_tells_the_client() {
    let served = serve(incus(), &["org.kde.kapsule.manage-container"]).await;
    let mut signals = zbus::MessageStream::from(&served.client);
    let path = served.manager.stop_container("dev", false).await.unwrap();
    let mut seen = Vec::new();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(Ok(msg)) = signals.next().await {
            if msg.message_type() != zbus::message::Type::Signal {
                continue;
            }
            let header = msg.header();
            let member = header.member().map(|m| m.to_string()).unwrap_or_default();
            match member.as_str() {
                "Message" => {
                    let (kind, text, _): (i32, String, i32) = msg.body().deserialize().unwrap();
                    seen.push(format!("Message({kind}, {text})"));
                }
                "ContainersChanged" => seen.push(member),
                "Completed" => {
                    let (ok, text): (bool, String) = msg.body().deserialize().unwrap();
                    seen.push(format!("Completed({ok}, {text:?})"));
                    return;
                }
                _ => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "no Completed; seen {seen:?}");
    assert_eq!(
        seen,
        [
            "ContainersChanged",
            "Message(1, Container 'dev' stopped)",
            "Completed(true, \"\")"
        ]
    );
    let requests = served.incus.requests();
    assert!(
        requests.contains(&"PUT /1.0/instances/dev/state".to_owned()),
        "{requests:?}"
    );
    let op = OperationProxy::uncached(&served.client, path).await.unwrap();
    assert_eq!(op.status().await.unwrap(), "completed");
    assert_eq!(op.kind().await.unwrap(), "stop");
}

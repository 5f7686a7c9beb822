//! Tier 0: the client against a fake Incus on a Unix socket, serving answers recorded from a real
//! Incus 6.0 server. Covers error mapping, timeouts and an absent server without needing root.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use kapsule_incus::fake::{FakeIncus as Fake, error_body, fixture};
use kapsule_incus::{Client, Error};
use tokio::net::UnixListener;

#[tokio::test]
async fn instances_decode_from_a_real_answer() {
    let fake = Fake::start(|_, path| match path {
        "/1.0/instances?recursion=1" => (200, fixture("instances.json")),
        _ => (404, error_body(404, "not found")),
    });
    let instances = fake.client().list_instances().await.unwrap();
    assert_eq!(instances.len(), 1);
    let c = &instances[0];
    assert_eq!(
        (c.name.as_str(), c.status.as_str(), c.kind.as_str()),
        ("probe1", "Running", "container")
    );
    assert_eq!(c.config.get("security.privileged").map(String::as_str), Some("true"));
    assert_eq!(c.devices["root"]["pool"], "default");
    assert!(c.profiles.is_empty());
}

#[tokio::test]
async fn state_gives_the_init_pid_only_when_running() {
    let fake = Fake::start(|_, path| match path {
        "/1.0/instances/up/state" => (200, fixture("state-running.json")),
        _ => (200, fixture("state-stopped.json")),
    });
    let client = fake.client();
    assert_eq!(client.instance_state("up").await.unwrap().init_pid(), Some(15762));
    assert_eq!(client.instance_state("down").await.unwrap().init_pid(), None);
}

#[tokio::test]
async fn error_answers_keep_status_and_incus_message() {
    let fake = Fake::start(|_, path| match path {
        "/1.0/instances/nope" => (
            404,
            error_body(
                404,
                "Failed to fetch instance \"nope\" in project \"default\": Instance not found",
            ),
        ),
        "/1.0/storage-pools" => (
            409,
            error_body(409, "The storage pool already exists: The record already exists"),
        ),
        "/1.0/instances/broken" => (500, error_body(500, "Something broke")),
        "/1.0/instances/garbage" => (200, "<html>not json</html>".to_owned()),
        _ => (418, "plain text teapot".to_owned()),
    });
    let client = fake.client();

    let e = client.get_instance("nope").await.unwrap_err();
    assert!(e.is_not_found());
    assert_eq!(
        e.to_string(),
        "GET /1.0/instances/nope: not found: Failed to fetch instance \"nope\" in project \"default\": Instance not found"
    );

    let pool = kapsule_incus::models::StoragePoolsPost {
        name: "default".into(),
        driver: "dir".into(),
        ..Default::default()
    };
    let e = client.create_storage_pool(&pool).await.unwrap_err();
    assert!(
        matches!(&e, Error::AlreadyExists { message, .. } if message.starts_with("The storage pool already exists")),
        "{e}"
    );

    let e = client.get_instance("broken").await.unwrap_err();
    assert!(
        matches!(&e, Error::Api { status: 500, message, .. } if message == "Something broke"),
        "{e}"
    );

    let e = client.get_instance("garbage").await.unwrap_err();
    assert!(matches!(e, Error::Protocol { .. }), "{e}");

    let e = client.get_instance("teapot").await.unwrap_err();
    assert!(
        matches!(&e, Error::Api { status: 418, message, .. } if message == "plain text teapot"),
        "{e}"
    );
}

#[tokio::test]
async fn failed_operation_gives_incus_reason() {
    // Incus answers a wait on a failed operation with an error; the operation says why.
    let fake = Fake::start(|_, path| {
        if path.contains("/wait") {
            (
                500,
                error_body(500, "Failed creating instance record: UNIQUE constraint failed"),
            )
        } else {
            (200, fixture("operation-failed.json"))
        }
    });
    let e = fake
        .client()
        .wait_operation("77e0b0a4-0001", Some(Duration::from_secs(5)))
        .await
        .unwrap_err();
    match e {
        Error::OperationFailed {
            description, message, ..
        } => {
            assert_eq!(description, "Creating instance");
            assert!(message.contains("UNIQUE constraint failed"), "{message}");
        }
        other => panic!("expected OperationFailed, got {other}"),
    }
}

#[tokio::test]
async fn wait_timeout_is_a_timeout_not_a_failure() {
    // What Incus 6.0 answers when the wait's own timeout expires, while the operation runs on.
    let fake = Fake::start(|_, path| {
        if path.contains("/wait") {
            (500, error_body(500, "context deadline exceeded"))
        } else {
            (200, fixture("operation-running.json"))
        }
    });
    let e = fake
        .client()
        .wait_operation("4ad94b2f", Some(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
}

#[tokio::test]
async fn missing_socket_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new(dir.path().join("no-such.socket"));
    let e = client.server().await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    assert!(
        e.to_string().contains("No such file or directory"),
        "the root cause is kept: {e}"
    );
    let e = client.events(&[kapsule_incus::EventKind::Operation]).await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");
}

#[tokio::test]
async fn refusing_socket_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.socket");
    // A socket file with nobody listening: what is left when incusd dies.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let e = Client::new(&path).list_instances().await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    assert!(e.to_string().contains("Connection refused"), "{e}");
}

#[tokio::test]
async fn hung_server_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hung.socket");
    let listener = UnixListener::bind(&path).unwrap();
    // Accepts and never answers.
    let _server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let started = Instant::now();
    let e = Client::new(&path)
        .with_timeout(Duration::from_millis(300))
        .server()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Incus (6.0.4) waits for each new Unix-socket connection's first bytes inside its accept loop,
/// so a connection opened and left silent blocks every later client, including LXC's own
/// callhook during container start (the real-Incus tier caught this: container starts failed
/// after 30 s). A pooling client leaves such connections behind (hyper-util parks the loser of a
/// connect/checkout race), so the client keeps no connection open once a request is answered.
/// The fake server below accepts the way Incus does and counts open connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_no_connection_open_that_could_block_incus_accept_loop() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("incus-like.socket");
    let listener = UnixListener::bind(&path).unwrap();
    let open = Arc::new(AtomicUsize::new(0));
    let counter = open.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            // Like Incus: no further accept until this connection has said something.
            let _ = stream.readable().await;
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(fixture("server.json")))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                counter.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    let client = Client::new(&path).with_timeout(Duration::from_secs(3));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                client.server().await?;
            }
            Ok::<_, Error>(())
        }));
    }
    for task in tasks {
        task.await.unwrap().expect("every request is answered");
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while open.load(Ordering::SeqCst) != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        open.load(Ordering::SeqCst),
        0,
        "connections left open after every request was answered"
    );
    drop(client);
}

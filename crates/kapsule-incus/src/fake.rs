//! A fake Incus for tests (feature `fake`): a Unix socket whose HTTP server answers each request
//! with what a handler returns for its method and path, often an answer recorded from a real
//! Incus 6.0 ([`fixture`]), and remembers the requests it got.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;

use crate::Client;

type Handler = Arc<dyn Fn(&str, &str) -> (u16, String) + Send + Sync>;

/// The fake server; it stops when dropped with its runtime.
#[derive(Debug)]
pub struct FakeIncus {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeIncus {
    /// Starts answering each request with `handler(method, path_and_query)` (status, JSON body).
    /// Must be called in a tokio runtime.
    pub fn start(handler: impl Fn(&str, &str) -> (u16, String) + Send + Sync + 'static) -> FakeIncus {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let socket = dir.path().join("unix.socket");
        let listener = UnixListener::bind(&socket).expect("a socket in a temporary directory");
        let handler: Handler = Arc::new(handler);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (handler, seen) = (handler.clone(), seen.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let method = req.method().as_str().to_owned();
                        let path = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
                        seen.lock().expect("requests").push(format!("{method} {path}"));
                        let (status, body) = handler(&method, &path);
                        async move {
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .expect("a valid response"),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeIncus {
            _dir: dir,
            socket,
            requests,
        }
    }

    /// A client of this server.
    pub fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    /// Every request so far, as `METHOD /path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("requests").clone()
    }
}

/// An answer recorded from Incus 6.0 (`crates/kapsule-incus/tests/fixtures/<name>`).
pub fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Incus's error answer with `code` and `message`.
pub fn error_body(code: u16, message: &str) -> String {
    serde_json::json!({"type": "error", "status": "", "status_code": 0, "operation": "", "error_code": code, "error": message, "metadata": null})
        .to_string()
}

//! The HTTP transport: requests over the Unix socket, the response envelope, error mapping.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use hyperlocal::UnixConnector;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::models::Operation;

/// Where Incus listens when nothing else is said.
pub const DEFAULT_SOCKET: &str = "/var/lib/incus/unix.socket";

/// How long one request may take unless the caller says otherwise. Long work is never done in one
/// request: Incus answers with an operation, which is waited on with its own timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) type Body = BoxBody<Bytes, std::io::Error>;

/// A connection to one Incus server over its Unix socket.
///
/// Cheap to clone. Every request uses a connection of its own (see [`Client::new`] for why).
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
    http: HttpClient<UnixConnector, Body>,
    timeout: Duration,
}

/// The envelope every Incus JSON answer comes in.
#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    error_code: u16,
    #[serde(default)]
    error: String,
    #[serde(default)]
    metadata: serde_json::Value,
}

/// A raw answer: status, headers and the whole body.
#[derive(Debug)]
pub(crate) struct RawResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Client {
    /// A client for the Incus server listening on `socket`. Nothing is connected until the first
    /// call, so this never fails; an absent server shows up as [`Error::Unavailable`] then.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        let http = HttpClient::builder(TokioExecutor::new())
            // No connection pool, on purpose. Incus (6.0.4 at least) peeks at the first bytes of
            // each new Unix-socket connection inside its accept loop, so one connection that is
            // opened and then left silent blocks every later client, including LXC's own
            // `incusd callhook` during container start, which then fails after 30 s. A pool
            // produces exactly such connections: hyper-util races a fresh connect against
            // checking out an idle one and parks the loser unused. Without a pool every
            // connection carries its request at once. A Unix-socket connect costs microseconds.
            .pool_max_idle_per_host(0)
            .build(UnixConnector);
        Client {
            socket: socket.into(),
            http,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// A client for `$INCUS_SOCKET`, or the default socket when that is unset.
    pub fn from_env() -> Self {
        Client::new(std::env::var_os("INCUS_SOCKET").unwrap_or_else(|| DEFAULT_SOCKET.into()))
    }

    /// The same client with another per-request timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub(crate) fn unavailable(&self, reason: impl std::fmt::Display) -> Error {
        Error::Unavailable {
            socket: self.socket.clone(),
            reason: reason.to_string(),
        }
    }

    /// Sends one request and reads the whole answer, within `timeout` (the client's default when
    /// `None`).
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Body,
        timeout: Option<Duration>,
    ) -> Result<RawResponse> {
        let uri: hyper::Uri = hyperlocal::Uri::new(&self.socket, path).into();
        let mut request = Request::builder().method(method.clone()).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request.body(body).map_err(|e| Error::Protocol {
            what: format!("{method} {path}"),
            reason: format!("cannot build the request: {e}"),
        })?;
        let timeout = timeout.unwrap_or(self.timeout);
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| self.unavailable(error_chain(&e)))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| self.unavailable(error_chain(&e)))?
                .to_bytes();
            Ok(RawResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                what: format!("{method} {path}"),
                after: timeout,
            }),
        }
    }

    /// Sends a request with an optional JSON body and decodes the envelope, turning an error
    /// answer into the matching [`Error`]. Returns the envelope's kind and metadata.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        json: Option<&serde_json::Value>,
        timeout: Option<Duration>,
    ) -> Result<(String, serde_json::Value)> {
        let (headers, body) = match json {
            Some(value) => (
                vec![("content-type", "application/json".to_owned())],
                full(serde_json::to_vec(value).unwrap_or_default()),
            ),
            None => (Vec::new(), empty()),
        };
        let raw = self.send(method.clone(), path, &headers, body, timeout).await?;
        decode_envelope(method_name(&method), path, &raw)
    }

    /// The body of a GET of `path`, exactly as Incus sent it (nothing decoded): the floor the
    /// benchmarks compare Kapsule's calls with. An error status is an [`Error`] as usual.
    pub async fn get_raw(&self, path: &str) -> Result<bytes::Bytes> {
        let raw = self.send(Method::GET, path, &[], empty(), None).await?;
        if !raw.status.is_success() {
            decode_envelope("GET", path, &raw)?;
        }
        Ok(raw.body)
    }

    /// A synchronous call whose metadata is decoded into `T`.
    pub(crate) async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let (_, metadata) = self.call(Method::GET, path, None, None).await?;
        decode(path, metadata)
    }

    /// A call that starts background work: Incus answers with an operation.
    pub(crate) async fn start_operation(
        &self,
        method: Method,
        path: &str,
        json: Option<&serde_json::Value>,
    ) -> Result<Operation> {
        let (kind, metadata) = self.call(method.clone(), path, json, None).await?;
        expect_operation(&method, path, &kind, metadata)
    }

    /// A call that may answer synchronously or with an operation, depending on the server
    /// version; an operation is waited for, so the call returns when the change is done.
    pub(crate) async fn call_and_settle(&self, method: Method, path: &str, json: &serde_json::Value) -> Result<()> {
        let (kind, metadata) = self.call(method.clone(), path, Some(json), None).await?;
        if kind == "async" {
            let op = expect_operation(&method, path, &kind, metadata)?;
            self.wait_operation(&op.id, Some(self.timeout)).await?;
        }
        Ok(())
    }
}

pub(crate) fn expect_operation(
    method: &Method,
    path: &str,
    kind: &str,
    metadata: serde_json::Value,
) -> Result<Operation> {
    if kind != "async" {
        return Err(Error::Protocol {
            what: format!("{method} {path}"),
            reason: format!("expected a background operation, got a '{kind}' answer"),
        });
    }
    decode(path, metadata)
}

/// Decodes the envelope of a JSON answer. Error answers become typed errors.
pub(crate) fn decode_envelope(
    method: &'static str,
    path: &str,
    raw: &RawResponse,
) -> Result<(String, serde_json::Value)> {
    let envelope: Envelope = match serde_json::from_slice(&raw.body) {
        Ok(envelope) => envelope,
        Err(e) if raw.status.is_success() => {
            return Err(Error::Protocol {
                what: format!("{method} {path}"),
                reason: format!("not an Incus JSON answer: {e}"),
            });
        }
        // A non-JSON error (a proxy, a crashed handler): keep the status and the text.
        Err(_) => {
            let text = String::from_utf8_lossy(&raw.body).trim().to_owned();
            return Err(Error::from_answer(method, path, raw.status.as_u16(), text));
        }
    };
    if envelope.kind == "error" || !raw.status.is_success() {
        let status = if envelope.error_code != 0 {
            envelope.error_code
        } else {
            raw.status.as_u16()
        };
        return Err(Error::from_answer(method, path, status, envelope.error));
    }
    Ok((envelope.kind, envelope.metadata))
}

/// [`decode_envelope`] for the fuzz targets (`fuzz/`), which cargo fuzz builds with
/// `--cfg fuzzing`: an answer with `status` and `body`, as the client would decode it.
#[cfg(fuzzing)]
#[doc(hidden)]
pub fn decode_answer_for_fuzzing(status: u16, body: &[u8]) -> Result<(String, serde_json::Value)> {
    let raw = RawResponse {
        status: StatusCode::from_u16(status).map_err(|e| Error::Protocol {
            what: "fuzz".into(),
            reason: e.to_string(),
        })?,
        headers: HeaderMap::new(),
        body: Bytes::copy_from_slice(body),
    };
    decode_envelope("GET", "/1.0/fuzz", &raw)
}

/// Encodes a request body; `what` names the request in the (practically impossible) error.
pub(crate) fn to_json<T: serde::Serialize>(what: &str, value: &T) -> Result<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| Error::Protocol {
        what: what.to_owned(),
        reason: e.to_string(),
    })
}

pub(crate) fn decode<T: DeserializeOwned>(what: &str, value: serde_json::Value) -> Result<T> {
    serde_json::from_value(value).map_err(|e| Error::Protocol {
        what: what.to_owned(),
        reason: e.to_string(),
    })
}

pub(crate) fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        _ => "request",
    }
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

pub(crate) fn empty() -> Body {
    full(Bytes::new())
}

/// "outer: inner: innermost", so the root cause (ENOENT, ECONNREFUSED) is not lost.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Percent-encodes one path segment (an instance or alias name) or a query value.
pub(crate) fn enc(segment: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    // Unreserved characters (RFC 3986) stay as they are; everything else is encoded, including
    // '/', so a name can never address another resource.
    const SET: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    utf8_percent_encode(segment, SET).to_string()
}

//! Operation objects: long work runs in a spawned task behind `/org/kde/kapsule/operations/<id>`,
//! which reports progress by signals and ends with `Completed(success, message)`.
//!
//! The object is exported before the work starts and kept for a while after it ends, so a client
//! that reads `Status` first (as libkapsule-qt does) never misses a fast failure.
//!
//! An operation is its caller's: on the bus, where every client reaches every object, its
//! signals go to the caller's unique name alone and its properties answer only that name (an
//! operation's description names the container and the image; its messages say more). What the
//! object manager announces of it to everyone is its path and interface, without properties. On
//! the socket, the object is served on the caller's own connection and nobody else reaches it.
//!
//! Layer 3: uses identity (who may cancel) and host (activity) only.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use zbus::message::Header;
use zbus::names::{BusName, OwnedUniqueName};
use zbus::object_server::SignalEmitter;
use zbus::{Connection, OwnedObjectPath, interface};

use crate::host::activity::Activity;
use crate::identity::authority::{Action, Requester};
use crate::identity::link::Link;

/// Who is told that the list of containers changed.
pub(crate) mod clients;
/// Incus operations inside ours.
pub(crate) mod incus;

/// How long a finished operation stays on the bus for late readers of its status.
const LINGER: Duration = Duration::from_secs(30);

/// The kinds of message an operation reports (`Message(i type, s text, i indent)`), defined with
/// the contract.
pub(crate) use kapsule_dbus::MessageKind;
use kapsule_dbus::OperationStatus;

/// Why an operation did not succeed; the text is what the client is shown.
#[derive(Debug)]
pub(crate) enum Failure {
    Failed(String),
    Cancelled,
}

impl Failure {
    /// What the client is told.
    pub(crate) fn message(&self) -> &str {
        match self {
            Failure::Failed(why) => why,
            Failure::Cancelled => "Operation cancelled",
        }
    }
}

/// An Incus failure inside an operation, as Incus's client words it: the request and Incus's
/// own message (`PUT /1.0/instances/dev/state: …`).
impl From<kapsule_incus::Error> for Failure {
    fn from(e: kapsule_incus::Error) -> Self {
        Failure::Failed(crate::error::readable(&e.to_string()))
    }
}

/// A named error of a check made inside an operation (the container is gone, a name is taken).
impl From<kapsule_dbus::Error> for Failure {
    fn from(e: kapsule_dbus::Error) -> Self {
        Failure::Failed(e.to_string())
    }
}

#[derive(Debug)]
struct Outcome {
    status: OperationStatus,
    error: String,
}

/// The D-Bus face of one operation.
#[derive(Debug)]
pub(crate) struct OperationObject {
    id: u64,
    kind: String,
    description: String,
    target: String,
    /// The uid of who started it: they may cancel it.
    requester: u32,
    /// The link it was started through, which a `Cancel` comes through too.
    link: Link,
    /// On the bus, the unique name of the caller: the only one its properties answer.
    owner: Option<OwnedUniqueName>,
    state: Arc<Mutex<Outcome>>,
    cancel: CancellationToken,
}

#[interface(name = "org.kde.kapsule.Operation")]
impl OperationObject {
    #[zbus(property)]
    fn id(&self, #[zbus(header)] header: Option<Header<'_>>) -> zbus::fdo::Result<String> {
        self.readable_by(header.as_ref())?;
        Ok(self.id.to_string())
    }

    #[zbus(property, name = "Type")]
    fn kind(&self, #[zbus(header)] header: Option<Header<'_>>) -> zbus::fdo::Result<String> {
        self.readable_by(header.as_ref())?;
        Ok(self.kind.clone())
    }

    #[zbus(property)]
    fn description(&self, #[zbus(header)] header: Option<Header<'_>>) -> zbus::fdo::Result<String> {
        self.readable_by(header.as_ref())?;
        Ok(self.description.clone())
    }

    #[zbus(property)]
    fn target(&self, #[zbus(header)] header: Option<Header<'_>>) -> zbus::fdo::Result<String> {
        self.readable_by(header.as_ref())?;
        Ok(self.target.clone())
    }

    /// `running`, `completed`, `failed` or `cancelled`.
    #[zbus(property)]
    fn status(&self, #[zbus(header)] header: Option<Header<'_>>) -> zbus::fdo::Result<String> {
        self.readable_by(header.as_ref())?;
        Ok(self.state.lock().expect("state lock").status.as_str().to_owned())
    }

    #[zbus(property)]
    fn error_message(&self, #[zbus(header)] header: Option<Header<'_>>) -> zbus::fdo::Result<String> {
        self.readable_by(header.as_ref())?;
        Ok(self.state.lock().expect("state lock").error.clone())
    }

    /// Asks the work to stop. False when it is not running any more. Whoever started it may;
    /// anyone else needs `manage-container`.
    async fn cancel(
        &self,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<bool, kapsule_dbus::Error> {
        let who = Requester::of(&self.link, connection, &header).await?;
        if who.caller.uid != self.requester {
            who.authorize(Action::ManageContainer, &[]).await?;
        }
        if self.state.lock().expect("state lock").status != OperationStatus::Running {
            return Ok(false);
        }
        self.cancel.cancel();
        Ok(true)
    }

    #[zbus(signal)]
    async fn message(
        emitter: &SignalEmitter<'_>,
        message_type: i32,
        message: &str,
        indent_level: i32,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn progress_started(
        emitter: &SignalEmitter<'_>,
        progress_id: &str,
        description: &str,
        total: i32,
        indent_level: i32,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn progress_update(
        emitter: &SignalEmitter<'_>,
        progress_id: &str,
        current: i32,
        rate: f64,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn progress_text_update(emitter: &SignalEmitter<'_>, progress_id: &str, text: &str) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn progress_completed(
        emitter: &SignalEmitter<'_>,
        progress_id: &str,
        success: bool,
        message: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn completed(emitter: &SignalEmitter<'_>, success: bool, message: &str) -> zbus::Result<()>;
}

impl OperationObject {
    /// Whether the caller of the message with `header` may read this operation's properties: on
    /// the bus, only the caller that started it. Without a header (the object manager's
    /// `InterfacesAdded` and `GetManagedObjects`, which go to anyone) nothing is read.
    fn readable_by(&self, header: Option<&Header<'_>>) -> zbus::fdo::Result<()> {
        let Some(owner) = &self.owner else {
            return Ok(());
        };
        match header.and_then(|h| h.sender()) {
            Some(sender) if *sender == *owner.inner() => Ok(()),
            _ => Err(zbus::fdo::Error::AccessDenied(format!(
                "Operation {} is its caller's own",
                self.id
            ))),
        }
    }

    /// Its properties that change when it ends, as `PropertiesChanged` carries them (made here:
    /// the getters answer no one but a caller).
    fn ended_properties(&self) -> HashMap<&'static str, zbus::Variant<'static>> {
        let state = self.state.lock().expect("state lock");
        HashMap::from([
            ("Status", zbus::Variant::from(state.status.as_str().to_owned())),
            ("ErrorMessage", zbus::Variant::from(state.error.clone())),
        ])
    }
}

/// What the work of an operation uses to report progress and to notice cancellation.
#[derive(Clone, Debug)]
pub(crate) struct Reporter {
    id: u64,
    emitter: SignalEmitter<'static>,
    cancel: CancellationToken,
    next_progress: Arc<AtomicU64>,
}

impl Reporter {
    /// Sends a message to the client and logs it with the operation id.
    pub(crate) async fn say(&self, kind: MessageKind, text: &str) {
        log::info!("[op {}] {text}", self.id);
        // A client that went away is no reason to stop the work.
        let _ = OperationObject::message(&self.emitter, kind.to_wire(), text, 1).await;
    }

    pub(crate) async fn info(&self, text: &str) {
        self.say(MessageKind::Info, text).await;
    }

    pub(crate) async fn warn(&self, text: &str) {
        self.say(MessageKind::Warning, text).await;
    }

    /// Starts a progress bar (`total` < 0: a spinner) and returns its id.
    pub(crate) async fn progress_start(&self, description: &str, total: i32) -> String {
        let id = format!("{}-{}", self.id, self.next_progress.fetch_add(1, Ordering::Relaxed));
        let _ = OperationObject::progress_started(&self.emitter, &id, description, total, 1).await;
        id
    }

    /// Moves a progress bar to `current` (of the `total` it started with).
    pub(crate) async fn progress_update(&self, progress: &str, current: i32) {
        let _ = OperationObject::progress_update(&self.emitter, progress, current, 0.0).await;
    }

    /// Shows a line of text next to a progress bar.
    pub(crate) async fn progress_text(&self, progress: &str, text: &str) {
        let _ = OperationObject::progress_text_update(&self.emitter, progress, text).await;
    }

    pub(crate) async fn progress_done(&self, progress: &str, success: bool, message: &str) {
        let _ = OperationObject::progress_completed(&self.emitter, progress, success, message).await;
    }

    /// Resolves when the client asked to cancel.
    pub(crate) async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// Allocates ids, exports operation objects, runs their work and retires them. Each operation is
/// served on the connection whose call started it (the bus, or one client's socket connection);
/// ids are unique across all.
#[derive(Debug)]
pub(crate) struct Operations {
    activity: Arc<Activity>,
    next_id: AtomicU64,
    /// Running operations: their link, path and (on the bus) owner.
    running: Mutex<BTreeMap<u64, Running>>,
}

/// A running operation, as `ListOperations` and the idle check see it.
#[derive(Debug)]
struct Running {
    link: u64,
    path: OwnedObjectPath,
    owner: Option<OwnedUniqueName>,
}

/// What describes a new operation.
#[derive(Debug)]
pub(crate) struct OperationInfo {
    pub kind: &'static str,
    pub description: String,
    pub target: String,
}

impl Operations {
    pub(crate) fn new(activity: Arc<Activity>) -> Arc<Self> {
        Arc::new(Operations {
            activity,
            next_id: AtomicU64::new(1),
            running: Mutex::new(BTreeMap::new()),
        })
    }

    /// Paths of the operations still running that were started through `link` by the caller
    /// with unique name `caller` (on the bus: there, everyone's calls come through one link).
    pub(crate) fn running(&self, link: &Link, caller: Option<&zbus::names::UniqueName<'_>>) -> Vec<OwnedObjectPath> {
        self.running
            .lock()
            .expect("operations lock")
            .values()
            .filter(|r| r.link == link.id)
            .filter(|r| r.owner.as_ref().is_none_or(|owner| Some(owner.inner()) == caller))
            .map(|r| r.path.clone())
            .collect()
    }

    /// Whether any operation started through the link with id `link_id` still runs.
    pub(crate) fn any_running_through(&self, link_id: u64) -> bool {
        self.running
            .lock()
            .expect("operations lock")
            .values()
            .any(|r| r.link == link_id)
    }

    /// Exports a new operation for `who` on the connection their call came on and starts `work`
    /// in its own task. Returns the object path at once.
    pub(crate) async fn start<W, F>(
        self: &Arc<Self>,
        who: &Requester,
        info: OperationInfo,
        work: W,
    ) -> zbus::Result<OwnedObjectPath>
    where
        W: FnOnce(Reporter) -> F + Send + 'static,
        F: Future<Output = Result<String, Failure>> + Send + 'static,
    {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let path = kapsule_dbus::operation_path(id);
        let state = Arc::new(Mutex::new(Outcome {
            status: OperationStatus::Running,
            error: String::new(),
        }));
        let cancel = CancellationToken::new();
        let object = OperationObject {
            id,
            kind: info.kind.to_owned(),
            description: info.description.clone(),
            target: info.target,
            requester: who.caller.uid,
            link: who.link.clone(),
            owner: who.bus_name.clone(),
            state: state.clone(),
            cancel: cancel.clone(),
        };
        let connection = who.connection.clone();
        // Exported before the work runs, so Status is readable from the first moment.
        connection.object_server().at(&path, object).await?;
        self.running.lock().expect("operations lock").insert(
            id,
            Running {
                link: who.link.id,
                path: path.clone(),
                owner: who.bus_name.clone(),
            },
        );
        let mut emitter = SignalEmitter::new(&connection, path.clone())?.into_owned();
        if let Some(owner) = &who.bus_name {
            emitter = emitter.set_destination(BusName::Unique(owner.clone().into_inner()));
        }
        let reporter = Reporter {
            id,
            emitter: emitter.clone(),
            cancel,
            next_progress: Arc::new(AtomicU64::new(1)),
        };
        log::info!("[op {id}] started: {}", info.description);

        let operations = self.clone();
        let task_path = path.clone();
        let busy = self.activity.hold();
        tokio::spawn(async move {
            let _busy = busy;
            let outcome = work(reporter.clone()).await;
            let (status, message) = match outcome {
                Ok(done) => {
                    if !done.is_empty() {
                        reporter.say(MessageKind::Success, &done).await;
                    }
                    (OperationStatus::Completed, done)
                }
                Err(Failure::Cancelled) => (OperationStatus::Cancelled, "Operation cancelled".to_owned()),
                Err(Failure::Failed(why)) => (OperationStatus::Failed, why),
            };
            log::info!(
                "[op {id}] {}{}{message}",
                status.as_str(),
                if message.is_empty() { "" } else { ": " }
            );
            {
                let mut state = state.lock().expect("state lock");
                state.status = status;
                state.error = if status == OperationStatus::Completed {
                    String::new()
                } else {
                    message.clone()
                };
            }
            operations.running.lock().expect("operations lock").remove(&id);
            Operations::finish(
                &connection,
                &emitter,
                &task_path,
                status == OperationStatus::Completed,
                &message,
            )
            .await;
        });
        Ok(path)
    }

    async fn finish(
        connection: &Connection,
        emitter: &SignalEmitter<'static>,
        path: &OwnedObjectPath,
        success: bool,
        message: &str,
    ) {
        if let Ok(iface) = connection.object_server().interface::<_, OperationObject>(path).await {
            let changed = iface.get().await.ended_properties();
            let interface = zbus::names::InterfaceName::from_static_str_unchecked(kapsule_dbus::OPERATION_INTERFACE);
            let _ = zbus::fdo::Properties::properties_changed(emitter, interface, changed, Default::default()).await;
        }
        let completed_message = if success { "" } else { message };
        let _ = OperationObject::completed(emitter, success, completed_message).await;
        let connection = connection.clone();
        let path = path.clone();
        tokio::spawn(async move {
            tokio::time::sleep(LINGER).await;
            let _ = connection.object_server().remove::<OperationObject, _>(&path).await;
        });
    }
}

/// Where messages of a step go: an operation's client, or only the log (a setup done on the way
/// into a container, or recovery, has nobody to show them to).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Notes<'a>(pub Option<&'a Reporter>);

impl Notes<'_> {
    pub(crate) async fn say(&self, kind: MessageKind, text: &str) {
        match self.0 {
            Some(r) => r.say(kind, text).await,
            None => log::info!("{text}"),
        }
    }

    /// Resolves when the operation's client cancels; never without an operation.
    pub(crate) async fn cancelled(&self) {
        match self.0 {
            Some(r) => r.cancelled().await,
            None => std::future::pending().await,
        }
    }

    pub(crate) async fn info(&self, text: &str) {
        match self.0 {
            Some(r) => r.info(text).await,
            None => log::info!("{text}"),
        }
    }

    pub(crate) async fn warn(&self, text: &str) {
        match self.0 {
            Some(r) => r.warn(text).await,
            None => log::warn!("{text}"),
        }
    }
}

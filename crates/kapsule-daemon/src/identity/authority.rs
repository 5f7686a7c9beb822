//! Authorization: polkit decides, before any work, whether the caller may do what a method asks.
//!
//! On the bus, the subject is the caller's unique bus name (polkit's `system-bus-name`): polkitd
//! asks the bus itself who is behind it, so nothing the caller sends, and no pid the daemon would
//! have to look up (and could race), takes part. On the daemon's own socket it is the process the
//! kernel reported (see [`crate::identity::peer`]). polkit is always asked on the system bus. User interaction (a password dialog through the caller's
//! authentication agent) is allowed only when the call said it may wait for one
//! (`ALLOW_INTERACTIVE_AUTHORIZATION`). The actions and their defaults are in
//! `polkit/org.kde.kapsule.policy`.

use std::collections::HashMap;

use kapsule_dbus::Error;
use zbus::Connection;
use zbus::message::{Flags, Header};
use zbus_polkit::policykit1::{AuthorityProxy, CheckAuthorizationFlags, Subject};

use crate::host::activity::Busy;
use crate::identity::caller::Caller;
use crate::identity::calls::UnderWay;
use crate::identity::link::{Authority, Link};

/// What a method asks to do, as a polkit action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Enter one's own container, set oneself up in it.
    EnterContainer,
    /// Create, start, stop, delete containers; set up someone else; enter someone else's.
    ManageContainer,
    /// Import, refresh, delete images.
    ManageImages,
    /// Create one's own unprivileged container; enter, start, stop, delete, snapshot, reset,
    /// clone and upgrade it: nothing in it is root on the host.
    UseUnprivileged,
}

impl Action {
    /// The polkit action id.
    pub(crate) fn id(self) -> &'static str {
        match self {
            Action::EnterContainer => "org.kde.kapsule.enter-container",
            Action::ManageContainer => "org.kde.kapsule.manage-container",
            Action::ManageImages => "org.kde.kapsule.manage-images",
            Action::UseUnprivileged => "org.kde.kapsule.use-unprivileged-container",
        }
    }

    /// What the caller is told when polkit says no.
    fn refusal(self) -> &'static str {
        match self {
            Action::EnterContainer => "You are not allowed to enter this container",
            Action::ManageContainer => "You are not allowed to manage Kapsule containers",
            Action::ManageImages => "You are not allowed to manage Kapsule images",
            Action::UseUnprivileged => "You are not allowed to use unprivileged Kapsule containers",
        }
    }
}

fn unavailable(action: Action, e: &zbus::Error) -> Error {
    log::warn!("cannot ask polkit about {}: {e}", action.id());
    Error::NotAuthorized(format!("{}: polkit cannot be asked ({e})", action.refusal()))
}

/// A method call's caller, with what it takes to ask polkit about them. While it lives, the
/// daemon is busy (it does not exit for idleness in the middle of a call).
#[derive(Debug)]
pub(crate) struct Requester {
    pub(crate) caller: Caller,
    /// The connection the call came on: operations it starts are served there.
    pub(crate) connection: Connection,
    /// The link the call came through.
    pub(crate) link: Link,
    /// On the bus, the caller's unique name: what an operation it starts is visible to. (On the
    /// socket, the connection is the caller's alone.)
    pub(crate) bus_name: Option<zbus::names::OwnedUniqueName>,
    subject: Subject,
    interactive: bool,
    _busy: Busy,
    /// Its place among its uid's calls under way (`calls.rs`).
    _under_way: UnderWay,
}

impl Requester {
    /// The caller of the call with `header`, which came through `link` on `connection`.
    pub(crate) async fn of(link: &Link, connection: &Connection, header: &Header<'_>) -> Result<Requester, Error> {
        let busy = link.activity.hold();
        let (caller, subject) = link.identify(connection, header).await?;
        let under_way = link.calls.admit(caller.uid, u64::from(header.primary().body_len()))?;
        Ok(Requester {
            caller,
            connection: connection.clone(),
            link: link.clone(),
            bus_name: link
                .on_bus()
                .then(|| header.sender().map(|s| s.to_owned().into()))
                .flatten(),
            subject,
            interactive: header.primary().flags().contains(Flags::ALLOW_INTERACTIVE_AUTH),
            _busy: busy,
            _under_way: under_way,
        })
    }

    /// The caller of the call with `header`, once polkit said they may do `action`: what every
    /// method that always needs one action starts with.
    pub(crate) async fn authorized(
        link: &Link,
        connection: &Connection,
        header: &Header<'_>,
        action: Action,
        details: &[(&str, &str)],
    ) -> Result<Requester, Error> {
        let who = Requester::of(link, connection, header).await?;
        who.authorize(action, details).await?;
        Ok(who)
    }

    /// Asks polkit whether the caller may do `action`; `Ok` when they may. `details` reach
    /// polkit rules as `action.lookup(key)`.
    ///
    /// A refusal is `NotAuthorized`, with a hint when authentication would have helped; a polkit
    /// that cannot be asked refuses too (and says why): no answer is never a yes.
    pub(crate) async fn authorize(&self, action: Action, details: &[(&str, &str)]) -> Result<(), Error> {
        let interactive = self.interactive;
        let flags = if interactive {
            CheckAuthorizationFlags::ALLOW_USER_INTERACTION
        } else {
            CheckAuthorizationFlags::empty()
        };
        // Without the test variant there is one arm; with it, two more.
        #[allow(clippy::infallible_destructuring_match)]
        let polkit = match &self.link.authority {
            Authority::Polkit(bus) => bus,
            #[cfg(test)]
            Authority::Allowing(allowed) if allowed.contains(&action.id()) => return Ok(()),
            #[cfg(test)]
            Authority::Allowing(_) => return Err(Error::NotAuthorized(action.refusal().to_owned())),
            #[cfg(test)]
            Authority::Waiting(answers) => {
                answers.acquire().await.expect("the test's semaphore").forget();
                return Ok(());
            }
        };
        let details: HashMap<&str, &str> = details.iter().copied().collect();
        let authority = AuthorityProxy::new(polkit).await.map_err(|e| unavailable(action, &e))?;
        let result = authority
            .check_authorization(&self.subject, action.id(), &details, flags, "")
            .await
            .map_err(|e| unavailable(action, &e))?;
        if result.is_authorized {
            log::debug!("{} (uid {}) may {}", self.caller.name, self.caller.uid, action.id());
            return Ok(());
        }
        log::info!(
            "{} (uid {}) was refused {}",
            self.caller.name,
            self.caller.uid,
            action.id()
        );
        let hint = if result.is_challenge && !interactive {
            " (authentication is required; run it from a terminal or session with a polkit agent)"
        } else if result.is_challenge {
            " (authentication failed or was dismissed)"
        } else {
            ""
        };
        Err(Error::NotAuthorized(format!("{}{hint}", action.refusal())))
    }
}

//! Where a call came from: the system bus, or a client on the daemon's own socket. Each served
//! object knows its link, and asks it who is calling.

use std::sync::Arc;

use kapsule_dbus::Error;
use zbus::Connection;
use zbus::message::Header;
use zbus_polkit::policykit1::Subject;

use crate::host::activity::Activity;
use crate::identity::caller::Caller;
use crate::identity::calls::Calls;
use crate::identity::peer::Peer;

/// The link of the bus; socket clients count from 1.
const BUS: u64 = 0;

/// Who answers whether a caller may do an action.
#[derive(Clone, Debug)]
pub(crate) enum Authority {
    /// polkit, on this connection to the system bus.
    Polkit(Connection),
    /// Tests of the surface without a bus: the actions with these polkit ids are allowed, every
    /// other is refused.
    #[cfg(test)]
    Allowing(Vec<&'static str>),
    /// Tests of the surface without a bus: each answer (a yes) waits for a permit, as a call
    /// waits while polkit asks the user for a password.
    #[cfg(test)]
    Waiting(Arc<tokio::sync::Semaphore>),
}

/// One way in to the daemon.
#[derive(Clone, Debug)]
pub(crate) struct Link {
    /// Tells the operations started through this link from the others.
    pub(crate) id: u64,
    /// The socket client, as the kernel saw it when it connected; `None` on the bus.
    peer: Option<Peer>,
    /// Who is asked whether a caller may: polkit on the system bus, whatever the link.
    pub(crate) authority: Authority,
    pub(crate) activity: Arc<Activity>,
    /// Every uid's calls under way, shared by all links.
    pub(crate) calls: Calls,
}

impl Link {
    /// The system bus (or the bus the daemon was told to serve on).
    pub(crate) fn bus(bus: &Connection, activity: &Arc<Activity>, calls: &Calls) -> Link {
        Link {
            id: BUS,
            peer: None,
            authority: Authority::Polkit(bus.clone()),
            activity: activity.clone(),
            calls: calls.clone(),
        }
    }

    /// Socket client number `id`, which is `peer`; `authority` is asked about it.
    pub(crate) fn peer(authority: Authority, activity: &Arc<Activity>, calls: &Calls, id: u64, peer: Peer) -> Link {
        Link {
            id,
            peer: Some(peer),
            authority,
            activity: activity.clone(),
            calls: calls.clone(),
        }
    }

    /// Whether this is the bus, where every client can reach every object the daemon serves.
    pub(crate) fn on_bus(&self) -> bool {
        self.peer.is_none()
    }

    /// Who sent the call with `header` on `connection`, and what polkit is asked about: on the
    /// bus, the sender's unique name (the bus vouches for it); on the socket, the process the
    /// kernel reported.
    pub(crate) async fn identify(
        &self,
        connection: &Connection,
        header: &Header<'_>,
    ) -> Result<(Caller, Subject), Error> {
        let cannot_tell = |e: zbus_polkit::Error| Error::NotAuthorized(format!("Cannot tell who is calling: {e}"));
        match &self.peer {
            None => {
                let caller = Caller::of(connection, header).await?;
                let subject = Subject::new_for_message_header(header).map_err(cannot_tell)?;
                Ok((caller, subject))
            }
            Some(peer) => {
                let caller = Caller::from_uid(peer.uid)?;
                let subject =
                    Subject::new_for_pid(peer.pid, Some(peer.start_time), Some(peer.uid)).map_err(cannot_tell)?;
                Ok((caller, subject))
            }
        }
    }
}

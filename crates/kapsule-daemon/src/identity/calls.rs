//! Calls under way per uid, on the bus and the socket together: a caller's call holds a place
//! from the moment it is known who sent it until it is answered (an operation it started runs
//! on without it).
//!
//! A call can wait long: for polkit while the user is asked for a password, for a container to
//! boot before a session starts. Each waiting call holds its message (up to what the bus allows,
//! 32 MiB or more) and a task; without a bound, one user's flood of such calls would hold the
//! daemon's memory and threads. Over the bound, a call is refused at once with `Failed`, before
//! polkit is asked or any work is done; other users are not affected.

use kapsule_dbus::Error;

use crate::identity::per_uid::{PerUid, Place, Refused};

/// The most calls one uid may have under way. Konsole restoring a window of tabs, each an
/// `Enter`, stays well below; a flood does not.
pub(crate) const MAX_CALLS: usize = 64;
/// The most bytes of message body one uid's calls under way may hold together.
pub(crate) const MAX_BYTES: u64 = 64 * 1024 * 1024;

/// The table of every uid's calls under way; clones share it.
#[derive(Clone, Debug)]
pub(crate) struct Calls(PerUid);

impl Default for Calls {
    fn default() -> Calls {
        Calls(PerUid::new(MAX_CALLS, MAX_BYTES))
    }
}

/// One call's place; given back when dropped.
pub(crate) type UnderWay = Place;

impl Calls {
    /// A place for a call of `uid` whose message body is `bytes` long, or the refusal that
    /// caller is given when their calls under way are at a bound.
    pub(crate) fn admit(&self, uid: u32, bytes: u64) -> Result<UnderWay, Error> {
        self.0.take(uid, bytes).map_err(|Refused { load, first }| {
            // Said once while the uid is at the bound, not once per refused call of a flood.
            if first {
                log::warn!(
                    "uid {uid} has {} calls under way holding {} bytes; refusing more until some are answered",
                    load.count,
                    load.weight
                );
            }
            Error::Failed(format!(
                "Too many of your calls are under way ({} holding {} MiB; at most {MAX_CALLS} holding {} MiB): try again once they are answered",
                load.count,
                load.weight >> 20,
                MAX_BYTES >> 20
            ))
        })
    }

    /// How many calls `uid` has under way.
    #[cfg(test)]
    pub(crate) fn of(&self, uid: u32) -> usize {
        self.0.count(uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_uid_has_its_own_bound_in_calls_and_bytes_and_places_are_given_back() {
        let calls = Calls::default();
        let mut mine: Vec<UnderWay> = (0..MAX_CALLS).map(|_| calls.admit(1000, 10).unwrap()).collect();
        let refused = calls.admit(1000, 10).unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("Too many of your calls are under way (64 holding 0 MiB; at most 64 holding 64 MiB)"),
            "{refused}"
        );
        // Another user is not affected.
        let theirs = calls.admit(1001, 10).unwrap();
        mine.pop();
        let again = calls.admit(1000, 10).unwrap();
        assert_eq!(calls.of(1000), MAX_CALLS);
        drop((again, theirs, mine));
        // Bytes: one large call fits, the next that would pass the bound does not.
        let calls = Calls::default();
        assert!(
            calls.admit(1000, MAX_BYTES + 1).is_err(),
            "one call larger than the bound"
        );
        assert!(!calls.0.remembers(1000), "a refusal left an entry");
        let large = calls.admit(1000, MAX_BYTES - 1).unwrap();
        assert!(calls.admit(1000, 2).is_err());
        let small = calls.admit(1000, 1).unwrap();
        drop((large, small));
        assert!(!calls.0.remembers(1000), "a uid with nothing under way is forgotten");
    }
}

//! What each uid holds of something bounded (clients on the socket, calls under way), and the
//! places it holds: a place is taken only within the uid's bounds, and given back when dropped.
//! One user at a bound does not touch another's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How much one uid holds: how many places, and how much they weigh together (bytes, say).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Load {
    pub(crate) count: usize,
    pub(crate) weight: u64,
    /// A place was refused since one was last given back.
    refused: bool,
}

/// Every uid's load, with the bounds each is held to; clones share it.
#[derive(Clone, Debug)]
pub(crate) struct PerUid {
    table: Arc<Mutex<HashMap<u32, Load>>>,
    max_count: usize,
    max_weight: u64,
}

/// A refusal: the uid's load, and whether it is the first refusal since a place was given back
/// (to say so once, not once per refused place of a flood).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) load: Load,
    pub(crate) first: bool,
}

/// One place of a uid's; given back when dropped.
#[derive(Debug)]
pub(crate) struct Place {
    table: PerUid,
    uid: u32,
    weight: u64,
}

impl PerUid {
    /// At most `max_count` places per uid, weighing at most `max_weight` together.
    pub(crate) fn new(max_count: usize, max_weight: u64) -> PerUid {
        PerUid {
            table: Arc::default(),
            max_count,
            max_weight,
        }
    }

    /// A place of `weight` for `uid`, if its load stays within the bounds with it.
    pub(crate) fn take(&self, uid: u32, weight: u64) -> Result<Place, Refused> {
        let mut table = self.table.lock().expect("per-uid table");
        let load = table.get(&uid).copied().unwrap_or_default();
        if load.count >= self.max_count || load.weight + weight > self.max_weight {
            // A uid that holds nothing keeps no entry, not even for a refusal.
            let first = table
                .get_mut(&uid)
                .is_some_and(|load| !std::mem::replace(&mut load.refused, true));
            return Err(Refused { load, first });
        }
        let load = table.entry(uid).or_default();
        load.count += 1;
        load.weight += weight;
        Ok(Place {
            table: self.clone(),
            uid,
            weight,
        })
    }

    /// How many places `uid` holds.
    #[cfg(test)]
    pub(crate) fn count(&self, uid: u32) -> usize {
        self.table
            .lock()
            .expect("per-uid table")
            .get(&uid)
            .map_or(0, |load| load.count)
    }

    /// Whether the table keeps an entry for `uid`.
    #[cfg(test)]
    pub(crate) fn remembers(&self, uid: u32) -> bool {
        self.table.lock().expect("per-uid table").contains_key(&uid)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut table = self.table.table.lock().expect("per-uid table");
        if let Some(load) = table.get_mut(&self.uid) {
            load.count -= 1;
            load.weight -= self.weight;
            load.refused = false;
            if load.count == 0 {
                table.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_uid_is_held_to_its_bounds_and_places_come_back() {
        let per_uid = PerUid::new(3, 100);
        let mut mine: Vec<Place> = (0..3).map(|_| per_uid.take(1000, 10).unwrap()).collect();
        let refused = per_uid.take(1000, 10).unwrap_err();
        assert_eq!((refused.load.count, refused.load.weight, refused.first), (3, 30, true));
        assert!(!per_uid.take(1000, 10).unwrap_err().first, "said once");
        // Another uid is not affected.
        let theirs = per_uid.take(1001, 10).unwrap();
        mine.pop();
        assert_eq!(per_uid.count(1000), 2);
        let again = per_uid.take(1000, 10).unwrap();
        assert!(
            per_uid.take(1000, 10).unwrap_err().first,
            "said again after a place came back"
        );
        drop((again, theirs, mine));
        assert!(!per_uid.remembers(1001), "a uid holding nothing is forgotten");
        assert!(!per_uid.remembers(1000));
        // Weight: one place over the bound alone, and one that would pass it.
        let per_uid = PerUid::new(3, 100);
        assert!(per_uid.take(1000, 101).is_err());
        assert!(!per_uid.remembers(1000), "a refusal left an entry");
        let large = per_uid.take(1000, 99).unwrap();
        assert!(per_uid.take(1000, 2).is_err());
        let small = per_uid.take(1000, 1).unwrap();
        drop((large, small));
        assert!(!per_uid.remembers(1000));
    }
}

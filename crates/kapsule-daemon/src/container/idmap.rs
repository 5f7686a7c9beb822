//! An unprivileged container's ids: its owner's uid and gid mapped to themselves (`raw.idmap`),
//! and those host ids given to root in the host's subordinate id files before Incus starts it
//! (LXC maps them through `newuidmap`, which refuses ids root was not given). Every start of a
//! container goes through [`start`], so an entry someone removed meanwhile is given again.

use kapsule_incus::models::{ConfigMap, Instance, Operation};

use crate::container::Containers;
use crate::container::error::Error;
use crate::operation::Failure;

/// The `raw.idmap` of a container whose owner is `uid`:`gid`.
pub(crate) fn raw_idmap(uid: u32, gid: u32) -> String {
    format!("uid {uid} {uid}\ngid {gid} {gid}")
}

/// Host ids from the first to the last, both included.
type Ids = (u32, u32);

/// The host ids a `raw.idmap` maps (uids, gids): `uid`, `gid` and `both` lines, each a single
/// id or a range `first-last`. What is not such a line is not Kapsule's and left to Incus.
fn host_ids(raw: &str) -> (Vec<Ids>, Vec<Ids>) {
    let (mut uids, mut gids) = (Vec::new(), Vec::new());
    for line in raw.lines() {
        let mut fields = line.split_whitespace();
        let (Some(kind), Some(host)) = (fields.next(), fields.next()) else {
            continue;
        };
        let range = match host.split_once('-') {
            Some((first, last)) => first.parse::<u32>().ok().zip(last.parse::<u32>().ok()),
            None => host.parse::<u32>().ok().map(|id| (id, id)),
        };
        let Some((first, last)) = range.filter(|(first, last)| first <= last) else {
            continue;
        };
        match kind {
            "uid" => uids.push((first, last)),
            "gid" => gids.push((first, last)),
            "both" => {
                uids.push((first, last));
                gids.push((first, last));
            }
            _ => {}
        }
    }
    (uids, gids)
}

/// Gives root the host ids the container with `config` maps to themselves. A range is given id
/// by id, which suits what Kapsule writes (one id each); a range of more than 65536 ids is not
/// Kapsule's and left to whoever wrote it.
pub(crate) async fn give_root(containers: &Containers, config: &ConfigMap) -> Result<(), Error> {
    let Some(raw) = config.get("raw.idmap") else {
        return Ok(());
    };
    let (uids, gids) = host_ids(raw);
    let expand = |ranges: Vec<Ids>| -> Vec<u32> {
        ranges
            .into_iter()
            .filter(|(first, last)| last - first < 65536)
            .flat_map(|(first, last)| first..=last)
            .collect()
    };
    let (uids, gids) = (expand(uids), expand(gids));
    if uids.is_empty() && gids.is_empty() {
        return Ok(());
    }
    let subids = containers.settings.subids();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        for uid in uids {
            subids.give_root_uid(uid)?;
        }
        for gid in gids {
            subids.give_root_gid(gid)?;
        }
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)
    .flatten()
    .map_err(Error::Ids)
}

/// Asks Incus to start `instance` (as the caller read it: a start changes no config), its ids
/// given to root first.
pub(crate) async fn start(containers: &Containers, instance: &Instance) -> Result<Operation, Failure> {
    give_root(containers, &instance.config).await?;
    Ok(containers.incus.start_instance(&instance.name).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ids_of_a_raw_idmap_are_read_as_incus_reads_them() {
        assert_eq!(
            host_ids(&raw_idmap(1001, 1002)),
            (vec![(1001, 1001)], vec![(1002, 1002)])
        );
        assert_eq!(
            host_ids("both 1000 1000\nuid 50-60 500-510\ngid 7 8\n# note\nbogus 1 1\nuid x 1\nuid 9-3 1"),
            (vec![(1000, 1000), (50, 60)], vec![(1000, 1000), (7, 7)])
        );
    }
}

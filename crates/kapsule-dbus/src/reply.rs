//! The structs that Manager replies carry, each one D-Bus struct on the wire.
//!
//! The original daemon declares `GetContainerInfo` as returning one `(sssss)` and `PrepareEnter`
//! as returning one `(bsas)`; libkapsule-qt's generated proxies check exactly that. zbus spreads a
//! returned Rust tuple over several out-arguments (`sssss`, `b s as`), so these are named structs,
//! and a server method that returns one wraps it in a one-element tuple: `Ok((info,))`.

use serde::{Deserialize, Serialize};
use zbus::zvariant::Type;
use zbus::{DeserializeDict, SerializeDict};

/// One container as `ListContainers` (each element of `a(sssss)`) and `GetContainerInfo` (one
/// `(sssss)`) describe it. Ordered by name first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Type)]
pub struct ContainerInfo {
    /// The Incus instance name.
    pub name: String,
    /// Incus's status string as it is (`Running`, `Stopped`, …; `Unknown` when Incus gave none).
    pub status: String,
    /// The image's description, else its OS, else `unknown`.
    pub image: String,
    /// When it was created, ISO 8601 with an offset; empty when unknown.
    pub created: String,
    /// `Default`, `Session` or `DbusMux`.
    pub mode: String,
}

/// `PrepareEnter`'s reply, `(bsas)`: whether the container is ready for the caller, why not
/// when it is not, and the command that enters it when it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct EnterCommand {
    /// True when `command` enters the container.
    pub success: bool,
    /// Why not, when `success` is false; empty otherwise.
    pub message: String,
    /// The command line to run (`kapsule enter …`); empty when `success` is false.
    pub command: Vec<String>,
}

/// One snapshot of a container, as `ListSnapshots` lists them (`a(ssb)`, oldest first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct SnapshotInfo {
    /// The snapshot's name (without the container's).
    pub name: String,
    /// When it was taken, ISO 8601 with an offset.
    pub created: String,
    /// True for a snapshot Kapsule took on its own (before an upgrade); those are pruned to the
    /// last few, the user's never.
    pub automatic: bool,
}

/// One container in full, as `GetContainerDetails` returns it: an `a{sv}` (snake_case keys), so
/// a newer daemon can add keys that older clients skip. A value the daemon cannot know (an
/// owner the original daemon did not record, the disk use of a pool that does not count it) is
/// left out, not sent empty.
#[derive(Clone, Debug, Default, PartialEq, SerializeDict, DeserializeDict, Type)]
#[zbus(signature = "a{sv}")]
pub struct ContainerDetails {
    /// The fields of [`ContainerInfo`], with the same meaning.
    pub name: String,
    pub status: String,
    pub image: String,
    pub created: String,
    pub mode: String,
    /// What it was created from, as the creator named it (`images:debian/12`, `local:dev`).
    pub image_source: Option<String>,
    /// The fingerprint of the image its files came from (the one `kapsule reset` uses).
    pub image_fingerprint: Option<String>,
    /// When it was last started, ISO 8601 with an offset.
    pub last_used: Option<String>,
    /// The uid of its creator, and their user name on this host.
    pub owner: Option<u32>,
    pub owner_name: Option<String>,
    /// The uids of the users set up in it.
    pub users: Vec<u32>,
    /// Its create options (see `GetCreateSchema`).
    pub session_mode: bool,
    pub dbus_mux: bool,
    pub host_rootfs: bool,
    pub mount_home: bool,
    /// The host directory that is each user's home inside (`~/` is theirs); empty: the host home.
    pub home: String,
    pub custom_mounts: Vec<String>,
    pub gpu: bool,
    pub nvidia_drivers: bool,
    pub pre_init_hooks: Vec<String>,
    pub additional_packages: Vec<String>,
    pub init_hooks: Vec<String>,
    /// Removed once the last session in it ends (`kapsule run`).
    pub ephemeral: bool,
    /// In a user namespace (root in it is not root on the host).
    pub unprivileged: bool,
    /// Its snapshots, oldest first.
    pub snapshots: Vec<SnapshotInfo>,
    /// Bytes its root file system uses, where the storage pool counts them.
    pub disk_usage: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::zvariant::Type;

    #[test]
    fn each_reply_is_one_struct_on_the_wire() {
        assert_eq!(ContainerInfo::SIGNATURE.to_string(), "(sssss)");
        assert_eq!(EnterCommand::SIGNATURE.to_string(), "(bsas)");
        assert_eq!(SnapshotInfo::SIGNATURE.to_string(), "(ssb)");
        assert_eq!(ContainerDetails::SIGNATURE.to_string(), "a{sv}");
    }

    #[test]
    fn details_leave_unknown_values_out_and_read_back() {
        use zbus::wire::{Endian, serialized::Context, to_bytes};
        let details = ContainerDetails {
            name: "dev".into(),
            owner: Some(1000),
            users: vec![1000, 1001],
            snapshots: vec![SnapshotInfo {
                name: "s".into(),
                created: "2026-12-05T00:00:00+00:00".into(),
                automatic: false,
            }],
            ..Default::default()
        };
        let ctxt = Context::new(Endian::Little, 0);
        let bytes = to_bytes(ctxt, &details).unwrap();
        let dict: std::collections::HashMap<String, zbus::OwnedVariant> = bytes.deserialize().unwrap().0;
        assert!(dict.contains_key("owner") && dict.contains_key("snapshots"));
        assert!(!dict.contains_key("disk_usage") && !dict.contains_key("owner_name"));
        let back: ContainerDetails = bytes.deserialize().unwrap().0;
        assert_eq!(back, details);
    }
}

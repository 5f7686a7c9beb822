//! What Incus is asked to make: a container's config keys, its devices (the host's `/`, GPUs, the
//! home, custom mounts, the minimal host mounts) and its `raw.lxc`.

use kapsule_dbus::options::CreateOptions;
use kapsule_incus::models::{ConfigMap, Devices};

use crate::container::Containers;
use crate::container::provision::Steps;
use crate::identity::account::Account;

/// The ids an unprivileged container has: 0 to this, shifted onto a range of host ids of its own
/// (Incus's `security.idmap.isolated`), so root in one user's container is nobody in another's.
/// It covers root's ids and the subordinate ranges user setup gives (from 100000, 65536 each),
/// which rootless podman inside maps.
pub(crate) const UNPRIVILEGED_IDS: u32 = 262_144;

/// `security.*` and the `user.kapsule.*` metadata (the original daemon's keys, so containers it
/// made are read the same way). `owner` is the creator's uid and primary gid: an unprivileged
/// container maps them to themselves, so their home and files keep their owner inside.
pub(crate) fn config(options: &CreateOptions, owner: (u32, u32)) -> ConfigMap {
    let mut config = ConfigMap::new();
    let mut set = |k: &str, v: &str| {
        config.insert(k.to_owned(), v.to_owned());
    };
    // Nesting either way: docker, podman and systemd run inside as they do on a host.
    set("security.nesting", "true");
    if options.unprivileged {
        let (uid, gid) = owner;
        set("security.privileged", "false");
        set("security.idmap.isolated", "true");
        set("security.idmap.size", &UNPRIVILEGED_IDS.to_string());
        set("raw.idmap", &crate::container::idmap::raw_idmap(uid, gid));
        // What a nested container runtime does as root that a user namespace refuses, done by
        // Incus on its behalf where it is safe: device nodes it may make (mknod) and the
        // extended attributes of overlay file systems (setxattr).
        set("security.syscalls.intercept.mknod", "true");
        set("security.syscalls.intercept.setxattr", "true");
    } else {
        // Root in it is root on the host: what the original daemon made, and the default.
        set("security.privileged", "true");
    }
    let yes_no = |b: bool| if b { "true" } else { "false" };
    if options.session_mode {
        set("user.kapsule.session-mode", "true");
    }
    if options.dbus_mux {
        set("user.kapsule.dbus-mux", "true");
    }
    set("user.kapsule.host-rootfs", yes_no(options.host_rootfs));
    set("user.kapsule.mount-home", yes_no(options.mount_home));
    set("user.kapsule.gpu", yes_no(options.gpu));
    set(
        "user.kapsule.nvidia-drivers",
        yes_no(options.gpu && options.nvidia_drivers),
    );
    if !options.custom_mounts.is_empty() {
        set(
            "user.kapsule.custom-mounts",
            &serde_json::to_string(&options.custom_mounts).unwrap_or_default(),
        );
    }
    if !options.home.is_empty() {
        set("user.kapsule.home", &options.home);
    }
    if options.ephemeral {
        set(crate::container::meta::EPHEMERAL_KEY, "true");
    }
    config.extend(Steps::of_options(options).config());
    config
}

/// One device's settings, from `(key, value)` pairs.
pub(crate) fn device(pairs: &[(&str, &str)]) -> ConfigMap {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// The root disk (in `pool`), the GPU when asked for and present, and the host filesystem.
pub(crate) fn devices(options: &CreateOptions, gpu_present: bool, pool: &str) -> Devices {
    let mut devices = Devices::new();
    devices.insert(
        "root".into(),
        device(&[("type", "disk"), ("path", "/"), ("pool", pool)]),
    );
    // Incus refuses to start a container whose gpu device finds no GPU, so it is only added when
    // the host has one.
    if options.gpu && gpu_present {
        devices.insert("gpu".into(), device(&[("type", "gpu")]));
    }
    // Nested podman's networking (slirp4netns) makes a TAP device in a network namespace of its
    // own: the host's `/dev/net/tun` is the host's root's (mode 0600 without udev), so Incus makes
    // one for an unprivileged container, usable by its users. It reaches no hardware: a TAP
    // device exists only in the namespace that made it.
    if options.unprivileged {
        devices.insert(
            "kapsule-tun".into(),
            device(&[
                ("type", "unix-char"),
                ("source", "/dev/net/tun"),
                ("path", "/dev/net/tun"),
                ("mode", "0666"),
            ]),
        );
    }
    if options.host_rootfs {
        devices.insert(
            "hostfs".into(),
            device(&[
                ("type", "disk"),
                ("source", "/"),
                ("path", "/.kapsule/host"),
                ("propagation", "rslave"),
                ("recursive", "true"),
                ("shift", "false"),
            ]),
        );
    }
    devices
}

/// Whether the host has a GPU Incus can pass through.
/// True when Incus can give containers a GPU (it refuses to start a `gpu` device otherwise).
/// An error counts as no GPU: the container then starts, without one.
pub(crate) async fn host_has_gpu(containers: &Containers) -> bool {
    match containers.incus.gpu_count().await {
        Ok(n) => n > 0,
        Err(e) => {
            log::warn!("cannot ask Incus for GPUs: {e}");
            false
        }
    }
}

/// The `raw.lxc` lines of a container: the network namespace it shares (the host's: LXC opens
/// the path in incusd's `forkstart`, which lives in the host's), and the NVIDIA mount hook when
/// asked for and installed.
///
/// `lxc.namespace.share.net=<path>` is the host networking every Incus accepts: 6.0 rejects the
/// original's `lxc.net.0.type=none` (only address keys of `lxc.net.*` pass its raw.lxc check),
/// while `lxc.namespace.*` passes old and new. Containers the original made with
/// `lxc.net.0.type=none`, on an Incus that took it, are left as they are and keep working.
///
/// An unprivileged container's root may not mount a fresh sysfs in a network namespace its user
/// namespace does not own (the host's), so LXC's automatic sysfs would fail its start: the auto
/// mounts are given again without it, and the host's `/sys` is bound recursively instead (what a
/// fresh one in the host's network namespace would show, read-only to a root that is nobody on
/// the host; LXC mounts the container's own cgroups over the host's below it). Setting
/// `lxc.mount.auto` drops every auto mount Incus set, so Incus's `shmounts` (how it mounts disks
/// into a running unprivileged container: the home, at a user's first enter) is given again,
/// at `shmounts` ([`shmounts_path`]).
pub(crate) fn raw_lxc(
    options: &CreateOptions,
    network_namespace: &std::path::Path,
    nvidia_hook: Option<&std::path::Path>,
    shmounts: &std::path::Path,
) -> String {
    let mut lines = format!("lxc.namespace.share.net={}\n", network_namespace.display());
    if options.unprivileged {
        lines.push_str(&unprivileged_mounts(shmounts));
    }
    if options.gpu
        && options.nvidia_drivers
        && let Some(hook) = nvidia_hook
    {
        lines.push_str(&format!("lxc.hook.mount={}\n", hook.display()));
    }
    lines
}

/// The auto mounts of an unprivileged container (see [`raw_lxc`]).
fn unprivileged_mounts(shmounts: &std::path::Path) -> String {
    format!(
        "{AUTO_MOUNTS} =\n{AUTO_MOUNTS} = proc:rw cgroup:rw:force shmounts:{}:/dev/.incus-mounts\n\
         lxc.mount.entry = /sys sys none rbind,create=dir 0 0\n",
        shmounts.display()
    )
}

const AUTO_MOUNTS: &str = "lxc.mount.auto";

/// Where Incus keeps the `shmounts` of container `name` (`<its directory>/shmounts/<name>`).
pub(crate) fn shmounts_path(incus_dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    incus_dir.join("shmounts").join(name)
}

/// `raw` (a container's `raw.lxc`) with its `shmounts` at `shmounts` instead: a copy's own (it
/// is named after the container).
pub(crate) fn with_shmounts(raw: &str, shmounts: &std::path::Path) -> String {
    raw.lines()
        .map(|line| match line.split_once('=') {
            Some((key, value)) if key.trim() == AUTO_MOUNTS && value.contains("shmounts:") => {
                let words: Vec<String> = value
                    .split_whitespace()
                    .map(|word| match word.strip_prefix("shmounts:") {
                        Some(_) => format!("shmounts:{}:/dev/.incus-mounts", shmounts.display()),
                        None => word.to_owned(),
                    })
                    .collect();
                format!("{AUTO_MOUNTS} = {}\n", words.join(" "))
            }
            _ => format!("{line}\n"),
        })
        .collect()
}

/// The user's home device: `source` (their host home, or the container's separate home) at their
/// home inside.
pub(crate) fn home_devices(account: &Account, source: &std::path::Path) -> Devices {
    let home = source.to_string_lossy();
    let target = account.container_home();
    Devices::from([(
        format!("kapsule-home-{}", account.name),
        device(&[
            ("type", "disk"),
            ("source", &home),
            ("path", &target),
            ("shift", "false"),
        ]),
    )])
}

/// The original daemon's device names: `kapsule-mount-<path with / and . as ->`, or a hash when
/// that is longer than Incus allows.
pub(crate) fn custom_mount_device(path: &str) -> String {
    let slug: String = path
        .trim_matches('/')
        .chars()
        .map(|c| if c == '/' || c == '.' { '-' } else { c })
        .collect();
    let name = format!("kapsule-mount-{slug}");
    if name.len() <= 63 {
        return name;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(path.as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("kapsule-mount-{hex}")
}

pub(crate) fn minimal_host_devices(uid: u32) -> Devices {
    let run = format!("/run/user/{uid}");
    let run_target = format!("/.kapsule/host/run/user/{uid}");
    let shared = |source: &str, path: &str| {
        device(&[
            ("type", "disk"),
            ("source", source),
            ("path", path),
            ("shift", "false"),
            // Sockets made on the host after the start show up inside.
            ("propagation", "rslave"),
            // No session yet (no runtime directory, no X server) is no error: the mount
            // appears at the next start once the source exists. Incus then cannot check that
            // the source is a directory, so `recursive` (which would need that) is not set.
            ("required", "false"),
        ])
    };
    Devices::from([
        (format!("kapsule-hostrun-{uid}"), shared(&run, &run_target)),
        (
            "kapsule-x11".to_owned(),
            shared("/tmp/.X11-unix", "/.kapsule/host/tmp/.X11-unix"),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use kapsule_dbus::options;
    use std::collections::BTreeMap;

    fn defaults() -> CreateOptions {
        options::resolve(&BTreeMap::new(), &BTreeMap::new()).unwrap()
    }

    #[test]
    fn config_carries_the_original_metadata_keys() {
        let mut o = defaults();
        o.custom_mounts = vec!["~/src".into()];
        let c = config(&o, (1000, 1000));
        assert_eq!(c["security.privileged"], "true");
        assert_eq!(c["security.nesting"], "true");
        assert_eq!(c["user.kapsule.host-rootfs"], "true");
        assert_eq!(c["user.kapsule.mount-home"], "true");
        assert_eq!(c["user.kapsule.gpu"], "true");
        assert_eq!(c["user.kapsule.nvidia-drivers"], "false");
        assert_eq!(c["user.kapsule.custom-mounts"], r#"["~/src"]"#);
        assert!(!c.contains_key("user.kapsule.session-mode"));
    }

    #[test]
    fn an_unprivileged_container_maps_its_owner_to_themselves_in_a_range_of_its_own() {
        let mut o = defaults();
        o.unprivileged = true;
        let c = config(&o, (1001, 1002));
        assert_eq!(c["security.privileged"], "false");
        assert_eq!(c["security.nesting"], "true");
        assert_eq!(c["security.idmap.isolated"], "true");
        assert_eq!(c["security.idmap.size"], "262144");
        assert_eq!(c["raw.idmap"], "uid 1001 1001\ngid 1002 1002");
        assert_eq!(c["security.syscalls.intercept.mknod"], "true");
        assert_eq!(c["security.syscalls.intercept.setxattr"], "true");
        let privileged = config(&defaults(), (1001, 1002));
        assert!(
            !privileged
                .keys()
                .any(|k| k.starts_with("security.idmap") || k.starts_with("raw.idmap"))
        );
    }

    #[test]
    fn raw_lxc_shares_the_network_and_registers_the_hook_only_when_asked_for_and_installed() {
        let hook = std::path::Path::new("/usr/lib/kapsule/kapsule-nvidia-hook");
        let host = std::path::Path::new("/proc/self/ns/net");
        let net = "lxc.namespace.share.net=/proc/self/ns/net\n";
        let shm = std::path::Path::new("/var/lib/incus/shmounts/dev");
        let mut o = defaults();
        o.gpu = true;
        o.nvidia_drivers = true;
        assert_eq!(
            raw_lxc(&o, host, Some(hook), shm),
            format!("{net}lxc.hook.mount=/usr/lib/kapsule/kapsule-nvidia-hook\n")
        );
        assert_eq!(
            raw_lxc(&o, host, None, shm),
            net,
            "not installed: no hook LXC could not run"
        );
        o.nvidia_drivers = false;
        assert_eq!(raw_lxc(&o, host, Some(hook), shm), net);
        o.nvidia_drivers = true;
        o.gpu = false;
        assert_eq!(raw_lxc(&o, host, Some(hook), shm), net);
        assert_eq!(
            raw_lxc(&o, std::path::Path::new("/run/netns/test"), None, shm),
            "lxc.namespace.share.net=/run/netns/test\n"
        );
    }

    #[test]
    fn an_unprivileged_container_binds_the_hosts_sysfs_and_keeps_incuss_shmounts() {
        let mut o = defaults();
        o.unprivileged = true;
        let shm = shmounts_path(std::path::Path::new("/var/lib/incus"), "dev");
        let raw = raw_lxc(&o, std::path::Path::new("/proc/self/ns/net"), None, &shm);
        assert_eq!(
            raw,
            "lxc.namespace.share.net=/proc/self/ns/net\n\
             lxc.mount.auto =\n\
             lxc.mount.auto = proc:rw cgroup:rw:force shmounts:/var/lib/incus/shmounts/dev:/dev/.incus-mounts\n\
             lxc.mount.entry = /sys sys none rbind,create=dir 0 0\n"
        );
        // A copy named `copy` gets its own shmounts; nothing else changes.
        let copied = with_shmounts(&raw, &shmounts_path(std::path::Path::new("/var/lib/incus"), "copy"));
        assert_eq!(copied, raw.replace("shmounts/dev:", "shmounts/copy:"));
        let privileged = "lxc.namespace.share.net=/proc/self/ns/net\n";
        assert_eq!(with_shmounts(privileged, &shm), privileged);
        assert_eq!(devices(&o, false, "default")["kapsule-tun"]["mode"], "0666");
        assert!(!devices(&defaults(), false, "default").contains_key("kapsule-tun"));
    }

    #[test]
    fn devices_follow_options_and_hardware() {
        let o = defaults();
        let d = devices(&o, false, "default");
        assert_eq!(
            d.keys().collect::<Vec<_>>(),
            ["hostfs", "root"],
            "no gpu device without a GPU"
        );
        assert_eq!(d["hostfs"]["propagation"], "rslave");
        assert!(devices(&o, true, "default").contains_key("gpu"));
        let mut o = defaults();
        o.host_rootfs = false;
        o.gpu = false;
        assert_eq!(devices(&o, true, "default").keys().collect::<Vec<_>>(), ["root"]);
    }
}

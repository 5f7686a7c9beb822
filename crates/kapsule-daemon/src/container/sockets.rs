//! The desktop's sockets inside a container: on each enter, the caller's Wayland, PipeWire,
//! PulseAudio, X11 and session-bus sockets (and an Xauthority file in their runtime directory)
//! are bind-mounted at the same paths inside, by one run of `kapsule-mounts` in the
//! container's mount namespace. The session's environment (which the caller sent) then points
//! at them as it does on the host. The same run places `kapsule-host-exec` (a static program
//! that reaches the host through that session bus) read-only at [`HOST_EXEC_TARGET`].
//!
//! Most enters need nothing: the mounts are remembered per container and user, keyed by the
//! container's boot (its init's pid and start time), the socket-related environment, which
//! host files the sources are (device and inode, from a `stat` each) and which mounts the
//! target directories are in inside. A new boot, another display, a socket the host re-created
//! (PipeWire restarted) or a fresh tmpfs over the runtime directory inside (logind) changes the
//! key, and the next enter runs the helper again, which repairs what is stale.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use kapsule_mounts::{Dir, Mount, Outcome, Report, Request};
use kapsule_rootfs::IdMap;

use crate::container::Containers;
use crate::container::error::Error;
use crate::identity::account::Account;

/// Where `kapsule-host-exec` appears in every container: on PATH in every image that follows the
/// FHS, and a directory no package owns.
pub(crate) const HOST_EXEC_TARGET: &str = "/usr/local/bin/kapsule-host-exec";

/// How long the helper may take (it does a few system calls per entry).
const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

/// The socket mounts known to be current, per container and uid.
#[derive(Debug, Default)]
pub(crate) struct SocketMounts(std::sync::Mutex<HashMap<(String, u32), Key>>);

/// What decides whether the mounts of one user in one container are current.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Key {
    init: (u32, u64),
    request: Request,
    sources: Vec<Option<(u64, u64)>>,
    /// Which mount each directory holding a target is in the container: a fresh tmpfs over
    /// `/run/user/<uid>` (logind's, when a login session starts there) hides the sockets, and
    /// changes this.
    places: Vec<Option<u64>>,
}

/// The mounts the caller's environment asks for, for `account`; `session_mode` containers have
/// a session bus of their own. `host_exec` is the host's `kapsule-host-exec`, when installed.
pub(crate) fn plan(
    account: &Account,
    environment: &HashMap<String, String>,
    session_mode: bool,
    host_exec: Option<&str>,
) -> Request {
    let (uid, gid) = (account.uid, account.gid);
    let run = format!("/run/user/{uid}");
    let mut dirs = vec![
        Dir {
            path: "/run/user".into(),
            uid: 0,
            gid: 0,
            mode: 0o755,
        },
        Dir {
            path: run.clone(),
            uid,
            gid,
            mode: 0o700,
        },
        // PulseAudio refuses a `pulse` that is not a real directory of the user's.
        Dir {
            path: format!("{run}/pulse"),
            uid,
            gid,
            mode: 0o700,
        },
    ];
    // The same path on both sides, the user's file (an X server's socket may be root's; the
    // helper accepts that for any user).
    let same = |path: String| Mount {
        source: path.clone(),
        target: path,
        uid,
        gid,
        read_only: false,
    };
    let mut mounts = Vec::new();
    if let Some(name) = environment.get("WAYLAND_DISPLAY").and_then(|v| in_runtime_dir(&run, v)) {
        mounts.push(same(name));
    }
    mounts.push(same(format!("{run}/pipewire-0")));
    mounts.push(same(format!("{run}/pulse/native")));
    if !session_mode {
        mounts.push(same(format!("{run}/bus")));
    }
    if let Some(n) = environment.get("DISPLAY").and_then(|d| x11_display(d)) {
        dirs.push(Dir {
            path: "/tmp/.X11-unix".into(),
            uid: 0,
            gid: 0,
            mode: 0o1777,
        });
        mounts.push(same(format!("/tmp/.X11-unix/X{n}")));
    }
    // An Xauthority file elsewhere (in the home) is reached through the home mount.
    if let Some(path) = environment.get("XAUTHORITY").and_then(|v| in_runtime_dir(&run, v)) {
        mounts.push(same(path));
    }
    // Root's program, the same for every user (mounted once per boot: later runs find it
    // current); it fails with a clear line in session mode, which is better than a missing
    // command.
    if let Some(program) = host_exec {
        mounts.push(Mount {
            source: program.to_owned(),
            target: HOST_EXEC_TARGET.to_owned(),
            uid: 0,
            gid: 0,
            read_only: true,
        });
    }
    Request {
        dirs,
        mounts,
        maker: None,
    }
}

/// `value` (a file name, or an absolute path directly in `run`) as a path directly in `run`;
/// anything else (`..`, subdirectories, other places) is not mounted.
fn in_runtime_dir(run: &str, value: &str) -> Option<String> {
    let name = match value.strip_prefix(run).and_then(|rest| rest.strip_prefix('/')) {
        Some(name) => name,
        None if !value.starts_with('/') => value,
        None => return None,
    };
    let plain = !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0']);
    (plain && name.len() <= 255).then(|| format!("{run}/{name}"))
}

/// The local display number of `DISPLAY` (`:0`, `:1.0`); none for remote displays.
fn x11_display(display: &str) -> Option<u32> {
    let number = display.strip_prefix(':')?.split('.').next()?;
    number.parse().ok()
}

/// Makes the caller's sockets current in container `name` (whose init is `pid`, `pidfd`). Never
/// fails the enter: a session without sound is better than none; what went wrong is logged.
pub(crate) async fn ensure(
    containers: &Containers,
    name: &str,
    account: &Account,
    environment: &HashMap<String, String>,
    session_mode: bool,
    (pid, pidfd): (u32, &OwnedFd),
) {
    let host_exec = containers.settings.host_exec_path();
    let host_exec = host_exec.as_deref().and_then(std::path::Path::to_str);
    let request = plan(account, environment, session_mode, host_exec);
    let Ok(start_time) = crate::host::procfs::start_time(pid) else {
        return; // The container stopped meanwhile; the session will say so.
    };
    // The helper makes the files as the host's root: in an unprivileged container, owners are
    // given as the host ids the container's stand for.
    let request = match id_maps(pid) {
        Ok(Some((uids, gids))) => in_host_ids(&request, &uids, &gids),
        Ok(None) => request,
        Err(e) => {
            log::warn!("{name}: the desktop sockets are not mounted: cannot read the container's id maps: {e}");
            return;
        }
    };
    let looked_at = request.clone();
    let Some((sources, places)) = off_the_async_threads(move || {
        let sources = looked_at.mounts.iter().map(|m| source_identity(&m.source)).collect();
        (sources, target_places(pid, &looked_at))
    })
    .await
    else {
        return;
    };
    let key = Key {
        init: (pid, start_time),
        sources,
        places,
        request,
    };
    let slot = (name.to_owned(), account.uid);
    if containers.socket_mounts.0.lock().expect("socket mounts").get(&slot) == Some(&key) {
        return;
    }
    match run_mounts_helper(containers, &key.request, pidfd).await {
        Ok(report) => {
            let mut all_fine = true;
            for entry in &report.entries {
                match &entry.outcome {
                    Outcome::Refused(why) | Outcome::Failed(why) => {
                        all_fine = false;
                        log::warn!("{name}: {}: {why}", entry.path);
                    }
                    outcome => log::debug!("{name}: {}: {outcome:?}", entry.path),
                }
            }
            // A refused or failed entry is tried again at the next enter. The directories are
            // looked at again: the helper may have made them (or replaced a symlink there).
            let looked_at = key.request.clone();
            if all_fine && let Some(places) = off_the_async_threads(move || target_places(pid, &looked_at)).await {
                let key = Key { places, ..key };
                containers
                    .socket_mounts
                    .0
                    .lock()
                    .expect("socket mounts")
                    .insert(slot, key);
            }
        }
        Err(e) => log::warn!("{name}: the desktop sockets are not mounted: {e}"),
    }
}

/// The id maps of process `pid`'s user namespace (uids, gids); `None` for the host's own.
fn id_maps(pid: u32) -> std::io::Result<Option<(IdMap, IdMap)>> {
    let map = |file: &str| -> std::io::Result<IdMap> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/{file}"))?;
        IdMap::parse(&text).map_err(std::io::Error::other)
    };
    let (uids, gids) = (map("uid_map")?, map("gid_map")?);
    Ok((uids != IdMap::identity() || gids != IdMap::identity()).then_some((uids, gids)))
}

/// `request` with each owner (the container's ids) given as the host id it stands for, and new
/// files made as the container's root. An entry whose owner the container does not map is left
/// out: nothing could own it there.
fn in_host_ids(request: &Request, uids: &IdMap, gids: &IdMap) -> Request {
    let host = |uid: u32, gid: u32, path: &str| match (uids.to_host(uid), gids.to_host(gid)) {
        (Some(uid), Some(gid)) => Some((uid, gid)),
        _ => {
            log::warn!("{path}: its owner {uid}:{gid} has no id in the container; not made");
            None
        }
    };
    Request {
        dirs: request
            .dirs
            .iter()
            .filter_map(|d| host(d.uid, d.gid, &d.path).map(|(uid, gid)| Dir { uid, gid, ..d.clone() }))
            .collect(),
        mounts: request
            .mounts
            .iter()
            .filter_map(|m| host(m.uid, m.gid, &m.target).map(|(uid, gid)| Mount { uid, gid, ..m.clone() }))
            .collect(),
        maker: uids.to_host(0).zip(gids.to_host(0)),
    }
}

/// `work` (the sockets' host files and the places inside they go are looked at this way) on a
/// blocking thread: a file system in the container (a FUSE mount there) or on the host may keep
/// a `stat` from ever returning, and that must hold up this enter at most, never the daemon's
/// async threads.
async fn off_the_async_threads<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(work).await.ok()
}

/// Which host file `path` is, if there is one.
fn source_identity(path: &str) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The mount id of each directory holding a target, as the container sees it (through
/// `/proc/<pid>/root`, resolved inside it without following its symlinks).
fn target_places(pid: u32, request: &Request) -> Vec<Option<u64>> {
    use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, StatxFlags};
    let Ok(root) = rustix::fs::open(
        format!("/proc/{pid}/root"),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return Vec::new();
    };
    let dirs: std::collections::BTreeSet<&str> = request
        .mounts
        .iter()
        .filter_map(|m| m.target.rsplit_once('/').map(|(dir, _)| dir))
        .collect();
    dirs.iter()
        .map(|dir| {
            let fd = rustix::fs::openat2(
                &root,
                dir.trim_start_matches('/'),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            )
            .ok()?;
            let stat = rustix::fs::statx(&fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID).ok()?;
            Some(stat.stx_mnt_id)
        })
        .collect()
}

/// Runs `kapsule-mounts` with `request` in the container whose init is `pidfd`; its report.
async fn run_mounts_helper(containers: &Containers, request: &Request, pidfd: &OwnedFd) -> Result<Report, Error> {
    let program = containers.settings.mounts_path();
    let failed = |reason: String| Error::Helper {
        program: program.clone(),
        reason,
    };
    let json = serde_json::to_string(request).map_err(|e| failed(format!("cannot encode the request: {e}")))?;
    let stdin = pidfd
        .try_clone()
        .map_err(|e| failed(format!("cannot pass the pidfd: {e}")))?;
    let mut command = tokio::process::Command::new(&program);
    command
        .arg(json)
        .env_clear()
        .stdin(std::process::Stdio::from(stdin))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    kapsule_sys::only_stdio_on_exec(command.as_std_mut());
    let child = command.spawn().map_err(|e| failed(format!("cannot run it: {e}")))?;
    let output = tokio::time::timeout(HELPER_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| failed(format!("did not finish within {HELPER_TIMEOUT:?}")))?
        .map_err(|e| failed(e.to_string()))?;
    if !output.status.success() {
        return Err(failed(format!(
            "failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| failed(format!("unreadable report: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> Account {
        Account {
            uid: 1000,
            gid: 1000,
            name: "alice".into(),
            home: "/home/alice".into(),
            shell: "/bin/bash".into(),
        }
    }

    fn targets(request: &Request) -> Vec<&str> {
        request.mounts.iter().map(|m| m.target.as_str()).collect()
    }

    #[test]
    fn a_desktop_session_gets_its_five_sockets_at_the_hosts_paths() {
        let env = HashMap::from([
            ("WAYLAND_DISPLAY".to_owned(), "wayland-0".to_owned()),
            ("DISPLAY".to_owned(), ":1.0".to_owned()),
            ("XAUTHORITY".to_owned(), "/run/user/1000/xauth_abc".to_owned()),
        ]);
        let request = plan(&account(), &env, false, Some("/usr/lib/kapsule/kapsule-host-exec"));
        request.validate().unwrap();
        assert_eq!(
            targets(&request),
            [
                "/run/user/1000/wayland-0",
                "/run/user/1000/pipewire-0",
                "/run/user/1000/pulse/native",
                "/run/user/1000/bus",
                "/tmp/.X11-unix/X1",
                "/run/user/1000/xauth_abc",
                HOST_EXEC_TARGET,
            ]
        );
        let (program, sockets) = request.mounts.split_last().unwrap();
        assert!(
            sockets
                .iter()
                .all(|m| m.source == m.target && !m.read_only && m.uid == 1000)
        );
        assert_eq!(
            (program.source.as_str(), program.uid, program.read_only),
            ("/usr/lib/kapsule/kapsule-host-exec", 0, true)
        );
        let x11 = request.dirs.iter().find(|d| d.path == "/tmp/.X11-unix").unwrap();
        assert_eq!((x11.uid, x11.mode), (0, 0o1777));
        let run = request.dirs.iter().find(|d| d.path == "/run/user/1000").unwrap();
        assert_eq!((run.uid, run.gid, run.mode), (1000, 1000, 0o700));
    }

    #[test]
    fn session_mode_keeps_its_own_bus_and_odd_values_mount_nothing() {
        let env = HashMap::from([
            ("WAYLAND_DISPLAY".to_owned(), "../../../etc/shadow".to_owned()),
            ("DISPLAY".to_owned(), "remote:0".to_owned()),
            ("XAUTHORITY".to_owned(), "/home/alice/.Xauthority".to_owned()),
        ]);
        let request = plan(&account(), &env, true, None);
        assert_eq!(
            targets(&request),
            ["/run/user/1000/pipewire-0", "/run/user/1000/pulse/native"]
        );
        assert!(!request.dirs.iter().any(|d| d.path == "/tmp/.X11-unix"));
        for bad in ["..", ".", "", "a/b", "/run/user/1001/wayland-0", "/run/user/1000/a/b"] {
            assert_eq!(in_runtime_dir("/run/user/1000", bad), None, "{bad}");
        }
        assert_eq!(
            in_runtime_dir("/run/user/1000", "/run/user/1000/wayland-1").as_deref(),
            Some("/run/user/1000/wayland-1")
        );
        assert_eq!(x11_display(":0"), Some(0));
        assert_eq!(x11_display(":12.3"), Some(12));
        assert_eq!(x11_display("host:0"), None);
    }
}

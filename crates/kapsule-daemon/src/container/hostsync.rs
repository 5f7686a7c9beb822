//! The host's timezone, locale and DNS in its containers: pushed when a container is made, when
//! it starts, and, while the daemon runs, within a moment of a change on the host (inotify on
//! the files that hold them). When the daemon is not running, `kapsule-host-sync.path` starts it
//! on such a change, and the daemon catches up at start.
//!
//! An image says how it wants each value through an executable `/.kapsule/sync/<kind>` (the
//! original daemon's protocol: the value on stdin, run as root). Without one, Kapsule does what
//! any image understands: `/etc/localtime` and `/etc/timezone` for the timezone,
//! `/etc/resolv.conf` for DNS; a locale needs the image's own tools (`locale-gen`), so only a
//! script changes it.
//!
//! What was last pushed is recorded in the container's config (`user.kapsule.synced.<kind>`: a
//! digest of the value), so a value is pushed once per container, however often the daemon
//! starts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kapsule_incus::models::{ConfigMap, Instance};
use kapsule_rootfs::Meta;

use crate::container::Containers;
use crate::container::error::Error;
use crate::container::files::ContainerFiles;
use crate::container::meta;

/// How long a sync script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);
/// Changes arriving within this time of each other are pushed together.
const SETTLE: Duration = Duration::from_millis(300);
/// The most of a configuration file read.
const MAX_FILE: u64 = 64 * 1024;

/// One kind of host configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Setting {
    Timezone,
    Locale,
    Dns,
}

impl Setting {
    fn name(self) -> &'static str {
        match self {
            Setting::Timezone => "timezone",
            Setting::Locale => "locale",
            Setting::Dns => "dns",
        }
    }

    fn config_key(self) -> String {
        format!("user.kapsule.synced.{}", self.name())
    }
}

/// The host's values, each as its sync script gets it on stdin.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct HostConfig(BTreeMap<Setting, String>);

impl HostConfig {
    /// Reads the configuration below `root`: the timezone from the `/etc/localtime` link (or
    /// `/etc/timezone`), the locale from `/etc/locale.conf` (or Debian's `/etc/default/locale`),
    /// DNS from `/etc/resolv.conf`. What cannot be read is left out.
    pub(crate) fn read(root: &Path) -> HostConfig {
        let etc = root.join("etc");
        let mut values = BTreeMap::new();
        if let Some(zone) = timezone(&etc) {
            values.insert(Setting::Timezone, zone);
        }
        let locale = read_small(&etc.join("locale.conf"))
            .or_else(|| read_small(&etc.join("default/locale")))
            .map(|text| locale_lines(&text))
            .filter(|lines| !lines.is_empty());
        if let Some(locale) = locale {
            values.insert(Setting::Locale, locale);
        }
        if let Some(dns) = read_small(&etc.join("resolv.conf")) {
            values.insert(Setting::Dns, dns);
        }
        HostConfig(values)
    }
}

fn read_small(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_FILE)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// The zone `/etc/localtime` links to (`.../zoneinfo/Europe/Berlin` → `Europe/Berlin`), else
/// the first line of `/etc/timezone`; only names a zone file can have.
fn timezone(etc: &Path) -> Option<String> {
    let linked = std::fs::read_link(etc.join("localtime")).ok().and_then(|target| {
        let target = target.to_str()?.to_owned();
        target.split_once("zoneinfo/").map(|(_, zone)| zone.to_owned())
    });
    let zone = linked.or_else(|| read_small(&etc.join("timezone"))?.lines().next().map(str::to_owned))?;
    let zone = zone.trim();
    let plain = !zone.is_empty()
        && zone.len() <= 64
        && !zone.starts_with('/')
        && zone
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && zone.chars().all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c));
    plain.then(|| zone.to_owned())
}

/// The `LANG=`, `LANGUAGE=` and `LC_*=` lines of a locale file, unquoted, one per line (what
/// localed reports and the original sync scripts read).
fn locale_lines(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines().map(str::trim) {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let wanted = key == "LANG" || key == "LANGUAGE" || key.starts_with("LC_");
        let key_ok = key.chars().all(|c| c.is_ascii_uppercase() || c == '_');
        let value = value.trim_matches('"');
        if wanted && key_ok && !value.is_empty() && !value.contains(['\'', '"', '\\', '$', '`']) {
            out.push_str(&format!("{key}={value}\n"));
        }
    }
    out
}

/// A short digest of a value, for the container's config.
fn digest(value: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(value.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What became of one kind: how it was pushed, or why it was not.
pub(crate) type Synced = Result<String, String>;

/// Pushes whatever of `config` container `instance` (running) does not have yet, and records
/// it. Returns a line per kind pushed or failed, for the log or a client.
pub(crate) async fn sync_container(containers: &Containers, instance: &Instance, config: &HostConfig) -> Vec<Synced> {
    let name = instance.name.as_str();
    let pending: Vec<(Setting, &String, String)> = config
        .0
        .iter()
        .map(|(&kind, value)| (kind, value, digest(value)))
        .filter(|(kind, _, digest)| instance.config.get(&kind.config_key()) != Some(digest))
        .collect();
    if pending.is_empty() {
        return Vec::new();
    }
    let files = match ContainerFiles::open(containers, name).await {
        Ok(files) => files,
        Err(e) => return vec![Err(format!("not synced: {e}"))],
    };
    let mut done = ConfigMap::new();
    let mut lines = Vec::new();
    for (kind, value, digest) in pending {
        match push(containers, &files, kind, value).await {
            Ok(how) => {
                lines.push(Ok(format!("{}: {how}", kind.name())));
                done.insert(kind.config_key(), digest);
            }
            Err(e) => lines.push(Err(format!("{}: not synced: {e}", kind.name()))),
        }
    }
    if !done.is_empty()
        && let Err(e) = containers.incus.patch_instance_config(name, &done).await
    {
        lines.push(Err(format!("cannot record what was synced: {e}")));
    }
    lines
}

/// Pushes one value into container `name`: through the image's script if it has one, else the
/// built-in way. Says which.
async fn push(
    containers: &Containers,
    files: &ContainerFiles,
    kind: Setting,
    value: &str,
) -> Result<&'static str, Error> {
    let name = files.name();
    let script = format!("/.kapsule/sync/{}", kind.name());
    let path = script.clone();
    let has_script = match files.with_root(move |root| root.metadata(&path)).await {
        Ok(Some(stat)) => stat.kind == kapsule_rootfs::Kind::File && stat.meta.mode & 0o111 != 0,
        Ok(None) => false,
        Err(e) => return Err(e.into()),
    };
    let root = |mode| Meta::new(0, 0, mode);
    if has_script {
        let ran =
            crate::container::exec::run_as_root(containers, name, &[script.as_str()], value.as_bytes(), SCRIPT_TIMEOUT)
                .await
                .map_err(Error::Command)?;
        if !ran.success() {
            return Err(Error::Exited {
                code: ran.code(),
                stderr: String::from_utf8_lossy(&ran.stderr).trim().to_owned(),
                command: script,
            });
        }
        return Ok("by the image's script");
    }
    let value = value.to_owned();
    match kind {
        Setting::Timezone => {
            files
                .with_root(move |r| {
                    r.symlink("/etc/localtime", &format!("/usr/share/zoneinfo/{value}"))?;
                    r.write("/etc/timezone", format!("{value}\n").as_bytes(), root(0o644))
                })
                .await?
        }
        // A symlink (to the container's own resolver's file) is replaced, not written through:
        // with the host's network, the host's resolver is the one to ask.
        Setting::Dns => {
            files
                .with_root(move |r| r.write("/etc/resolv.conf", value.as_bytes(), root(0o644)))
                .await?
        }
        // Recorded as done: the image chose not to take it. A new value is offered again.
        Setting::Locale => return Ok("left to the image (it has no /.kapsule/sync/locale)"),
    }
    Ok("built in")
}

/// Brings every running Kapsule container up to the host's configuration.
pub(crate) async fn sync_all(containers: &Containers) {
    let Some(root) = containers.settings.host_sync.root() else {
        return;
    };
    let _busy = containers.activity.hold();
    let config = HostConfig::read(root);
    let instances = match containers.incus.list_instances().await {
        Ok(instances) => instances,
        Err(e) => {
            log::warn!("host sync: cannot list the containers: {e}");
            return;
        }
    };
    // A container being made or removed is not touched: a create syncs its container as its
    // last step, and a removal needs nothing.
    let settled = |i: &&Instance| meta::is_kapsule(i) && meta::is_running(i) && meta::pending(i).is_none();
    for instance in instances.iter().filter(settled) {
        log_lines(&instance.name, sync_container(containers, instance, &config).await);
    }
}

/// Pushes the host's configuration into container `instance`, which just started (its config,
/// read before the start, still holds what was synced: a start does not change it).
pub(crate) async fn sync_instance(containers: &Containers, instance: &Instance) -> Vec<Synced> {
    let Some(root) = containers.settings.host_sync.root() else {
        return Vec::new();
    };
    sync_container(containers, instance, &HostConfig::read(root)).await
}

/// Pushes the host's configuration into container `name`, which was just made.
pub(crate) async fn sync_one(containers: &Containers, name: &str) -> Vec<Synced> {
    if containers.settings.host_sync.root().is_none() {
        return Vec::new();
    }
    match containers.incus.get_instance(name).await {
        Ok(instance) => sync_instance(containers, &instance).await,
        Err(e) => vec![Err(format!("cannot read the container: {e}"))],
    }
}

/// Logs what [`sync_container`] said about container `name`.
pub(crate) fn log_lines(name: &str, lines: Vec<Synced>) {
    for line in lines {
        match line {
            Ok(line) => log::info!("host sync: {name}: {line}"),
            Err(line) => log::warn!("host sync: {name}: {line}"),
        }
    }
}

/// Tells an operation's client what [`sync_container`] said.
pub(crate) async fn report(notes: crate::operation::Notes<'_>, lines: Vec<Synced>) {
    for line in lines {
        match line {
            Ok(line) => {
                notes
                    .say(
                        crate::operation::MessageKind::Dim,
                        &format!("Host configuration: {line}"),
                    )
                    .await
            }
            Err(line) => notes.warn(&format!("Host configuration: {line}")).await,
        }
    }
}

/// While the daemon runs: catches up once, then pushes each change of the host's files.
pub(crate) fn watch(containers: Arc<Containers>) {
    let Some(root) = containers.settings.host_sync.root().map(Path::to_owned) else {
        return;
    };
    tokio::spawn(async move {
        sync_all(&containers).await;
        let mut changes = match watch_files(&root) {
            Ok(changes) => changes,
            Err(e) => {
                log::warn!(
                    "host sync: cannot watch {}: {e}; changes reach containers when they start",
                    root.display()
                );
                return;
            }
        };
        while changes.recv().await.is_some() {
            // An update writes several files (or one in several steps): let it finish.
            tokio::time::sleep(SETTLE).await;
            while changes.try_recv().is_ok() {}
            sync_all(&containers).await;
        }
    });
}

/// The files a change of which matters, by the directory holding them.
fn watched(root: &Path) -> Vec<(PathBuf, Vec<String>)> {
    let etc = root.join("etc");
    let names = |list: &[&str]| list.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
    let mut dirs = vec![
        (
            etc.clone(),
            names(&["localtime", "timezone", "locale.conf", "resolv.conf"]),
        ),
        (etc.join("default"), names(&["locale"])),
    ];
    // resolv.conf is often a link to a file a resolver rewrites elsewhere
    // (/run/systemd/resolve/stub-resolv.conf): that directory too.
    if let Ok(target) = std::fs::canonicalize(etc.join("resolv.conf"))
        && let (Some(dir), Some(file)) = (target.parent(), target.file_name())
        && dir != etc
    {
        dirs.push((dir.to_owned(), vec![file.to_string_lossy().into_owned()]));
    }
    dirs
}

/// Watches the files of [`watched`] with inotify, on a thread of its own (a blocking read; the
/// daemon's runtime never waits for it), and sends `()` for each change of one of them.
fn watch_files(root: &Path) -> std::io::Result<tokio::sync::mpsc::UnboundedReceiver<()>> {
    use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
    let fd = inotify::init(CreateFlags::CLOEXEC)?;
    let mut names = BTreeMap::new();
    let flags = WatchFlags::CLOSE_WRITE | WatchFlags::MOVED_TO | WatchFlags::CREATE | WatchFlags::DELETE;
    for (dir, files) in watched(root) {
        match inotify::add_watch(&fd, &dir, flags) {
            Ok(wd) => {
                names.insert(wd, files);
            }
            // Not every system has /etc/default.
            Err(e) if dir.ends_with("default") => log::debug!("not watching {}: {e}", dir.display()),
            Err(e) => return Err(e.into()),
        }
    }
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("host-sync-watch".into())
        .spawn(move || {
            let mut buffer = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
            let mut reader = inotify::Reader::new(&fd, &mut buffer);
            loop {
                match reader.next() {
                    Ok(event) => {
                        let name = event.file_name().map(|n| n.to_string_lossy().into_owned());
                        let relevant = matches!(
                            (names.get(&event.wd()), name),
                            (Some(files), Some(name)) if files.contains(&name)
                        );
                        if relevant && sender.send(()).is_err() {
                            return;
                        }
                    }
                    Err(rustix::io::Errno::INTR) => {}
                    Err(e) => {
                        log::warn!("host sync: watching stopped: {e}");
                        return;
                    }
                }
            }
        })?;
    Ok(receiver)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_values_are_read_from_its_files() {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc");
        std::fs::create_dir_all(etc.join("default")).unwrap();
        std::os::unix::fs::symlink(
            "../usr/share/zoneinfo/America/Argentina/Buenos_Aires",
            etc.join("localtime"),
        )
        .unwrap();
        std::fs::write(
            etc.join("default/locale"),
            "# Debian\nLANG=\"de_DE.UTF-8\"\nLC_TIME=en_GB.UTF-8\nFOO=bar\n",
        )
        .unwrap();
        std::fs::write(etc.join("resolv.conf"), "nameserver 192.0.2.53\n").unwrap();
        let config = HostConfig::read(root.path());
        assert_eq!(config.0[&Setting::Timezone], "America/Argentina/Buenos_Aires");
        assert_eq!(config.0[&Setting::Locale], "LANG=de_DE.UTF-8\nLC_TIME=en_GB.UTF-8\n");
        assert_eq!(config.0[&Setting::Dns], "nameserver 192.0.2.53\n");

        // locale.conf wins over Debian's file; /etc/timezone when localtime is no link.
        std::fs::write(etc.join("locale.conf"), "LANG=fr_FR.UTF-8\n").unwrap();
        std::fs::remove_file(etc.join("localtime")).unwrap();
        std::fs::write(etc.join("timezone"), "Europe/Paris\n").unwrap();
        let config = HostConfig::read(root.path());
        assert_eq!(config.0[&Setting::Locale], "LANG=fr_FR.UTF-8\n");
        assert_eq!(config.0[&Setting::Timezone], "Europe/Paris");
    }

    #[test]
    fn odd_values_are_left_out() {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        for bad in ["../../etc/shadow", "/abs", "a b", "Europe/../x", ""] {
            std::fs::write(etc.join("timezone"), bad).unwrap();
            assert_eq!(timezone(&etc), None, "{bad}");
        }
        assert_eq!(locale_lines("LANG=$(reboot)\nLC_ALL=`x`\nlang=x\n"), "");
        assert_eq!(HostConfig::read(root.path()), HostConfig::default());
    }

    #[test]
    fn a_digest_names_a_value() {
        assert_eq!(digest("a"), digest("a"));
        assert_ne!(digest("a"), digest("b"));
        assert_eq!(digest("a").len(), 16);
    }
}

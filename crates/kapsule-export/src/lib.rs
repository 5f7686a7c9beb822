//! What `kapsule export` does on the host, as the user, for one container: a desktop entry of the
//! container's copied into the user's menu with its icons, a command of the container's given a
//! wrapper on the user's PATH, a terminal entry for the container itself; each recorded, so it can
//! be listed and removed exactly, also when the container goes.
//!
//! Nothing here runs inside the container: [`Guest`] is how the caller reads it (the CLI does
//! that through `kapsule enter`, as the user, so only what the user can read there is exported),
//! and everything this crate writes is written by the host side, in the user's own directories.
//! That is why it works the same for containers without the host's root or home mounted.
//!
//! Names: every file is called `kapsule.<container>.<what>`; a container name has no dots (Incus
//! allows letters, digits and hyphens), so two containers' `firefox` never meet, and a
//! container's terminal entry (`kapsule.<container>.desktop`) never meets an app of another's.

mod desktop;
mod icons;
mod record;
mod wrapper;

pub use desktop::{DesktopEntry, exec_quote, menu_entry};
pub use icons::{EXTENSIONS as ICON_EXTENSIONS, ICON_DIRS, IconFile, icon_target};
pub use record::{Export, Kind, Places, Record};
pub use wrapper::{is_ours as is_our_wrapper, shell_quote, wrapper_script};

use std::path::{Path, PathBuf};

/// What went wrong, said so a user can act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing in the container answers to what was asked.
    #[error("{0}")]
    NotFound(String),
    /// Several things answer to it.
    #[error("{0}")]
    Ambiguous(String),
    /// A desktop entry that cannot be exported.
    #[error("{path}: {reason}")]
    BadEntry { path: String, reason: String },
    /// A request that would do harm (escape a directory, overwrite someone else's file).
    #[error("{0}")]
    Refused(String),
    /// A host file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Reading the container failed.
    #[error("{0}")]
    Guest(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// Refuses a container name that could not be an Incus one (letters, digits, hyphens), as it
/// becomes part of file names.
pub fn check_container_name(name: &str) -> Result<()> {
    let fine = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-');
    if fine {
        Ok(())
    } else {
        Err(Error::Refused(format!(
            "'{name}' is not a container name (letters, digits and hyphens)"
        )))
    }
}

/// How the container is read: as the user, inside it.
pub trait Guest {
    /// Every desktop entry in the container's application directories: (path, text).
    fn desktop_entries(&self) -> impl Future<Output = Result<Vec<(String, String)>>>;
    /// Every icon file for the icon name `name` in the container's icon themes and pixmaps.
    fn icon_files(&self, name: &str) -> impl Future<Output = Result<Vec<String>>>;
    /// A file's bytes.
    fn read(&self, path: &str) -> impl Future<Output = Result<Vec<u8>>>;
    /// The absolute path of an executable: `command` itself when it is a path, else looked up
    /// on the container's PATH; `None` when there is none.
    fn executable(&self, command: &str) -> impl Future<Output = Result<Option<String>>>;
}

/// The directories a desktop entry is looked for in, by precedence (XDG_DATA_DIRS order).
pub const APPLICATION_DIRS: &[&str] = &["/usr/local/share/applications", "/usr/share/applications"];

/// The desktop-file ID of an entry at `path` (below one of [`APPLICATION_DIRS`]): its path
/// there with `/` as `-` (the XDG rule), `None` outside them.
pub fn desktop_file_id(path: &str) -> Option<String> {
    APPLICATION_DIRS.iter().find_map(|dir| {
        let rest = path.strip_prefix(dir)?.strip_prefix('/')?;
        rest.ends_with(".desktop").then(|| rest.replace('/', "-"))
    })
}

/// The entry `app` names among `entries` (path, text): by desktop-file ID (with or without
/// `.desktop`), else by `Name` in any language, else by the program its `Exec` runs; the first
/// directory wins for an ID in both.
pub fn find_app<'a>(entries: &'a [(String, String)], app: &str) -> Result<&'a (String, String)> {
    let wanted_id = if app.ends_with(".desktop") {
        app.to_owned()
    } else {
        format!("{app}.desktop")
    };
    let by_id: Vec<_> = entries
        .iter()
        .filter(|(path, _)| desktop_file_id(path).as_deref() == Some(wanted_id.as_str()))
        .collect();
    if let Some(first) = by_id.first() {
        return Ok(first);
    }
    let lower = app.to_lowercase();
    let by = |matches: &dyn Fn(&DesktopEntry) -> bool| -> Vec<&'a (String, String)> {
        let mut found: Vec<&(String, String)> = entries
            .iter()
            .filter(|(_, text)| DesktopEntry::parse(text).is_ok_and(|e| matches(&e)))
            .collect();
        // The same ID in two directories is one app.
        let mut seen = std::collections::HashSet::new();
        found.retain(|(path, _)| seen.insert(desktop_file_id(path)));
        found
    };
    for found in [
        by(&|e| e.names().any(|n| n.to_lowercase() == lower)),
        by(&|e| e.program().is_some_and(|p| p.rsplit('/').next() == Some(app))),
    ] {
        match found.as_slice() {
            [] => continue,
            [one] => return Ok(one),
            several => {
                let ids: Vec<String> = several.iter().filter_map(|(p, _)| desktop_file_id(p)).collect();
                return Err(Error::Ambiguous(format!(
                    "'{app}' names several apps: {}; give one of these IDs",
                    ids.join(", ")
                )));
            }
        }
    }
    Err(Error::NotFound(format!(
        "no app '{app}' in the container (looked for a desktop entry with that ID, name or program in {})",
        APPLICATION_DIRS.join(" and ")
    )))
}

/// Writes `bytes` to `path` with `mode`, whole or not at all (a temporary file beside it,
/// renamed over it), making the directories on the way.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .ok_or_else(|| Error::Refused(format!("{} has no directory", path.display())))?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut temp = tempfile::Builder::new()
        .prefix(".kapsule-export")
        .tempfile_in(dir)
        .map_err(io(dir))?;
    temp.write_all(bytes).map_err(io(path))?;
    temp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io(path))?;
    temp.persist(path).map_err(|e| Error::Io {
        path: path.to_owned(),
        source: e.error,
    })?;
    Ok(())
}

/// Exports the app `app` of `container`: its entry into the user's menu, its icons into their
/// theme. `kapsule` is the command the entry runs. Returns the export, with every file written.
pub async fn export_app(
    guest: &impl Guest,
    places: &Places,
    container: &str,
    app: &str,
    kapsule: &str,
) -> Result<Export> {
    let entries = guest.desktop_entries().await?;
    let (path, text) = find_app(&entries, app)?;
    let id = desktop_file_id(path).unwrap_or_else(|| app.to_owned());
    let entry = DesktopEntry::parse(text).map_err(|reason| Error::BadEntry {
        path: path.clone(),
        reason,
    })?;
    let target = places.applications().join(format!("kapsule.{container}.{id}"));
    check_ours_or_absent(&target, &desktop::marker(container))?;
    // The icon's files are read and placed first: the entry names the copied icon only if one
    // will be there. Nothing is written until the entry is known to export.
    let mut icons = Vec::new();
    let mut icon_name = None;
    if let Some(icon) = entry.icon() {
        let found = if icon.starts_with('/') {
            vec![icon.to_owned()]
        } else if icon.contains('/') {
            Vec::new()
        } else {
            guest.icon_files(icon).await?
        };
        let base = icon.rsplit('/').next().unwrap_or(icon);
        let base = icons::EXTENSIONS
            .iter()
            .find_map(|e| base.strip_suffix(&format!(".{e}")))
            .unwrap_or(base);
        let name = format!("kapsule.{container}.{base}");
        for file in icons::choose(&found) {
            let bytes = guest.read(&file.path).await?;
            if let Some(target) = icon_target(&places.icons(), &file, &name, &bytes) {
                icons.push((target, bytes));
                icon_name = Some(name.clone());
            }
        }
    }
    let exported = entry
        .export(container, &id, kapsule, icon_name.as_deref())
        .map_err(|reason| Error::BadEntry {
            path: path.clone(),
            reason,
        })?;
    let mut files = Vec::new();
    for (icon, bytes) in icons {
        write_file(&icon, &bytes, 0o644)?;
        if !files.contains(&icon) {
            files.push(icon);
        }
    }
    write_file(&target, exported.as_bytes(), 0o644)?;
    files.insert(0, target);
    Ok(Export {
        kind: Kind::App,
        source: id,
        files,
    })
}

/// Exports the command `command` of `container` as a wrapper in `dir`.
pub async fn export_bin(
    guest: &impl Guest,
    container: &str,
    command: &str,
    dir: &Path,
    kapsule: &str,
) -> Result<Export> {
    let name = command.rsplit('/').next().unwrap_or(command);
    if name.is_empty() || name == "." || name == ".." || name.starts_with('-') {
        return Err(Error::Refused(format!("'{command}' does not name a program")));
    }
    let path = guest.executable(command).await?.ok_or_else(|| {
        Error::NotFound(format!(
            "no program '{command}' in the container ({})",
            if command.contains('/') {
                "not an executable file there"
            } else {
                "not on its PATH"
            }
        ))
    })?;
    let target = dir.join(name);
    if target.exists() && !wrapper::is_ours(&target) {
        return Err(Error::Refused(format!(
            "{} exists and was not written by kapsule export; remove it or choose another --export-path",
            target.display()
        )));
    }
    write_file(&target, wrapper_script(container, &path, kapsule).as_bytes(), 0o755)?;
    Ok(Export {
        kind: Kind::Bin,
        source: path,
        files: vec![target],
    })
}

/// Writes the terminal entry of `container` ("NAME (Kapsule)").
pub fn export_menu_entry(places: &Places, container: &str, kapsule: &str) -> Result<Export> {
    let target = places.applications().join(format!("kapsule.{container}.desktop"));
    check_ours_or_absent(&target, &desktop::marker(container))?;
    write_file(&target, menu_entry(container, kapsule).as_bytes(), 0o644)?;
    Ok(Export {
        kind: Kind::MenuEntry,
        source: String::new(),
        files: vec![target],
    })
}

/// Whether the desktop entry at `path` carries `marker` (it is this container's, by Kapsule).
fn carries_marker(path: &Path, marker: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|text| text.lines().any(|l| l.trim() == marker))
}

/// Refuses to replace a file that does not carry `marker` (someone else's).
fn check_ours_or_absent(target: &Path, marker: &str) -> Result<()> {
    if target.exists() && !carries_marker(target, marker) {
        return Err(Error::Refused(format!(
            "{} exists and was not written by kapsule export for this container",
            target.display()
        )));
    }
    Ok(())
}

/// Removes the files of `export` that are still Kapsule's (an entry or wrapper someone replaced
/// since stays); the files removed.
pub fn remove_files(export: &Export, container: &str) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for file in &export.files {
        let ours = match export.kind {
            Kind::Bin => wrapper::is_ours(file),
            Kind::App | Kind::MenuEntry => {
                let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
                let prefix = format!("kapsule.{container}.");
                name.starts_with(&prefix)
                    && (!name.ends_with(".desktop") || carries_marker(file, &desktop::marker(container)))
            }
        };
        if ours && std::fs::remove_file(file).is_ok() {
            removed.push(file.clone());
        }
    }
    removed
}

#[cfg(test)]
mod tests;

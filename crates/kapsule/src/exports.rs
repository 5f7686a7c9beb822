//! What the user exported from containers, on the host side only: the record of each container,
//! its menu entry made after a create and everything removed with the container. The export
//! itself, which reads the container, is `kapsule export` in `commands.rs`.

use anyhow::{Context, Result, anyhow};
use kapsule_dbus::ManagerProxy;
use kapsule_export::{Kind, Places, Record};

/// The command exported entries and wrappers run: this program, by its full path (a menu
/// entry's launcher has no shell and maybe another PATH).
pub(crate) fn kapsule_path() -> Result<String> {
    let exe = std::env::current_exe().context("cannot tell where this program is")?;
    exe.to_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("the path of this program ({}) is not valid UTF-8", exe.display()))
}

/// After `name` was created: its terminal entry in the user's menu, unless the configuration's
/// `menu_entries` is `false` or this is root (who has no desktop menu of their own). A failure
/// is a warning; the container is there either way.
pub(crate) async fn menu_entry_for_new(manager: &ManagerProxy<'_>, name: &str) {
    if rustix::process::geteuid().is_root() {
        return;
    }
    let wanted = match manager.get_config().await {
        Ok(config) => config.get("menu_entries").is_none_or(|v| v != "false"),
        Err(_) => true,
    };
    if !wanted {
        return;
    }
    if let Err(e) = add_menu_entry(name) {
        eprintln!("warning: no menu entry for {name}: {e:#}");
    }
}

/// Writes the terminal entry of `name` and records it.
pub(crate) fn add_menu_entry(name: &str) -> Result<()> {
    let places = Places::from_env()?;
    let mut record = Record::load(&places, name)?;
    let export = kapsule_export::export_menu_entry(&places, name, &kapsule_path()?)?;
    eprintln!("Menu entry: {name} (Kapsule) in {}", export.files[0].display());
    record.add(export);
    record.save(&places)?;
    Ok(())
}

/// After `name` was removed: everything the user exported from it goes too, and they are told.
pub(crate) fn remove_all(name: &str) {
    // No home of ours (none at all, or root with a user's HOME): nothing of ours to remove.
    let Ok(places) = Places::from_env() else {
        return;
    };
    let result = (|| -> Result<()> {
        let mut record = Record::load(&places, name)?;
        if record.exports.is_empty() {
            return Ok(());
        }
        let exports = std::mem::take(&mut record.exports);
        for export in &exports {
            kapsule_export::remove_files(export, name);
        }
        record.save(&places)?;
        eprintln!("Removed what was exported from {name}: {}", summary(&exports));
        Ok(())
    })();
    if let Err(e) = result {
        eprintln!("warning: the exports of {name} were not removed: {e:#}");
    }
}

/// "2 apps, 1 command and the menu entry".
pub(crate) fn summary(exports: &[kapsule_export::Export]) -> String {
    let count = |kind| exports.iter().filter(|e| e.kind == kind).count();
    let mut parts = Vec::new();
    match count(Kind::App) {
        0 => {}
        1 => parts.push("1 app".to_owned()),
        n => parts.push(format!("{n} apps")),
    }
    match count(Kind::Bin) {
        0 => {}
        1 => parts.push("1 command".to_owned()),
        n => parts.push(format!("{n} commands")),
    }
    if count(Kind::MenuEntry) > 0 {
        parts.push("the menu entry".to_owned());
    }
    match parts.len() {
        0 => "nothing".to_owned(),
        1 => parts.remove(0),
        _ => {
            let last = parts.pop().unwrap_or_default();
            format!("{} and {last}", parts.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kapsule_export::Export;

    #[test]
    fn the_summary_reads_as_a_sentence() {
        let export = |kind| Export {
            kind,
            source: String::new(),
            files: Vec::new(),
        };
        assert_eq!(summary(&[]), "nothing");
        assert_eq!(summary(&[export(Kind::MenuEntry)]), "the menu entry");
        assert_eq!(
            summary(&[
                export(Kind::App),
                export(Kind::Bin),
                export(Kind::Bin),
                export(Kind::MenuEntry)
            ]),
            "1 app, 2 commands and the menu entry"
        );
    }
}

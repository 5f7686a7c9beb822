//! Layered configuration: built-in defaults < `/usr/lib/kapsule/kapsule.conf` (the vendor's) <
//! `/etc/kapsule/kapsule.conf` (the admin's) < `~/.config/kapsule/kapsule.conf` (the caller's).
//! INI, section `[kapsule]`, the original daemon's format. A file that is missing is skipped; one
//! that cannot be read or parsed is skipped with a log line.
//!
//! This module merges the layers; the caller's own file is read by the identity layer
//! (`identity::caller::config_for`) with the caller's own file-system identity, so a symlink
//! from there to a file the user may not read gives nothing away.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Keys clients may read, with their built-in defaults.
pub(crate) const DEFAULTS: &[(&str, &str)] = &[
    ("default_container", "kapsule"),
    ("default_image", "images:ubuntu/24.04"),
    // Whether `kapsule create` puts a "NAME (Kapsule)" terminal entry in the user's menu (the
    // CLI reads it; the daemon only serves it with the rest).
    ("menu_entries", "true"),
];

/// The system layers, lowest first.
pub(crate) const SYSTEM_FILES: &[&str] = &["/usr/lib/kapsule/kapsule.conf", "/etc/kapsule/kapsule.conf"];

/// A configuration file is a handful of lines; anything bigger is not one.
pub(crate) const MAX_FILE: u64 = 64 * 1024;

/// Applies the layers, lowest first, over the built-in defaults.
pub(crate) fn merge(layers: Vec<(PathBuf, std::io::Result<String>)>) -> BTreeMap<String, String> {
    let mut config: BTreeMap<String, String> = DEFAULTS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    for (file, text) in layers {
        let Some(entries) = layer_entries(&file, text) else {
            continue;
        };
        // The `[kapsule]` keys Kapsule knows; others are ignored.
        config.extend(
            entries
                .into_iter()
                .filter(|e| e.section == "kapsule" && DEFAULTS.iter().any(|(k, _)| *k == e.key))
                .map(|e| (e.key, e.value)),
        );
    }
    config
}

/// One layer's entries: `None` for a file that is missing (silently) or that cannot be read or
/// parsed (logged): the layer is skipped whole.
fn layer_entries(file: &Path, text: std::io::Result<String>) -> Option<Vec<Entry>> {
    let parsed = match text {
        Ok(text) => entries(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => Err(e.to_string()),
    };
    parsed
        .inspect_err(|e| log::warn!("skipping {}: {e}", file.display()))
        .ok()
}

/// One `key = value` line of an INI text, with the section it is in.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub section: String,
    pub key: String,
    pub value: String,
}

/// Every `key = value` of an INI text, in order; `#` and `;` start comment lines. A line that is
/// neither fails the whole file (a half-read file is worse than a skipped one).
pub(crate) fn entries(text: &str) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    let mut section = String::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[') {
            let name = name
                .strip_suffix(']')
                .ok_or_else(|| format!("line {}: unclosed section", n + 1))?;
            section = name.trim().to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: expected key = value", n + 1))?;
        entries.push(Entry {
            section: section.clone(),
            key: key.trim().to_owned(),
            value: value.trim().to_owned(),
        });
    }
    Ok(entries)
}

/// Reads the system layers (lowest first) for what only the system decides, such as image
/// remotes: the text of each file that exists and parses; the others are logged and skipped.
pub(crate) async fn system_entries(files: &[PathBuf]) -> Vec<(PathBuf, Vec<Entry>)> {
    let mut layers = Vec::new();
    for file in files {
        if let Some(entries) = layer_entries(file, tokio::fs::read_to_string(file).await) {
            layers.push((file.clone(), entries));
        }
    }
    layers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(path: &str, text: std::io::Result<&str>) -> (PathBuf, std::io::Result<String>) {
        (PathBuf::from(path), text.map(str::to_owned))
    }

    #[test]
    fn layers_override_in_order_and_bad_files_are_skipped() {
        let config = merge(vec![
            layer(
                "vendor",
                Ok("# vendor\n[kapsule]\ndefault_container = container\ndefault_image = images:archlinux\n"),
            ),
            layer(
                "admin",
                Ok("[other]\ndefault_image = nope\n[kapsule]\ndefault_image = local:kapsule-test\nunknown = x\n"),
            ),
            layer("broken", Ok("[kapsule]\ndefault_container\n")),
            layer("missing", Err(std::io::ErrorKind::NotFound.into())),
            layer("denied", Err(std::io::ErrorKind::PermissionDenied.into())),
        ]);
        assert_eq!(config["default_container"], "container");
        assert_eq!(config["default_image"], "local:kapsule-test");
        assert_eq!(config["menu_entries"], "true");
        assert_eq!(config.len(), 3, "only known keys: {config:?}");
        assert_eq!(merge(vec![])["default_image"], "images:ubuntu/24.04");
    }

    #[test]
    fn the_shipped_vendor_file_sets_the_defaults_and_no_remote() {
        let text = include_str!("../../../../config/kapsule.conf");
        let config = merge(vec![layer("/usr/lib/kapsule/kapsule.conf", Ok(text))]);
        assert_eq!(config["default_container"], "container");
        assert_eq!(config["default_image"], "archlinux");
        let entries = entries(text).unwrap();
        assert!(
            entries.iter().all(|e| e.section == "kapsule"),
            "the kapsule remote ships commented out: {entries:?}"
        );
    }
}

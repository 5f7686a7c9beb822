//! Layered configuration: built-in defaults < `/usr/lib/kapsule/kapsule.conf` (the vendor's) <
//! `/etc/kapsule/kapsule.conf` (the admin's). INI, section `[kapsule]`, the original daemon's
//! format. A file that is missing or malformed is skipped, with a log line for the latter.
//!
//! The per-user layer (`~/.config/kapsule/kapsule.conf`, read safely as the caller) comes with
//! caller identity in the enter work.

use std::collections::BTreeMap;
use std::path::Path;

/// Keys clients may read, with their built-in defaults.
pub(crate) const DEFAULTS: &[(&str, &str)] = &[
    ("default_container", "kapsule"),
    ("default_image", "images:ubuntu/24.04"),
];

/// The system layers, lowest first.
pub(crate) const SYSTEM_FILES: &[&str] = &["/usr/lib/kapsule/kapsule.conf", "/etc/kapsule/kapsule.conf"];

/// Reads the layers in `files` over the built-in defaults.
pub(crate) fn load(files: &[&Path]) -> BTreeMap<String, String> {
    let mut config: BTreeMap<String, String> = DEFAULTS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                log::warn!("skipping {}: {e}", file.display());
                continue;
            }
        };
        match parse(&text) {
            Ok(values) => config.extend(values),
            Err(e) => log::warn!("skipping {}: {e}", file.display()),
        }
    }
    config
}

/// The `[kapsule]` keys of an INI text that Kapsule knows; others are ignored.
fn parse(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut values = BTreeMap::new();
    let mut in_section = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[') {
            let section = section
                .strip_suffix(']')
                .ok_or_else(|| format!("line {}: unclosed section", n + 1))?;
            in_section = section.trim() == "kapsule";
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: expected key = value", n + 1))?;
        let key = key.trim();
        if in_section && DEFAULTS.iter().any(|(k, _)| *k == key) {
            values.insert(key.to_owned(), value.trim().to_owned());
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_override_in_order_and_bad_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let vendor = dir.path().join("vendor.conf");
        let admin = dir.path().join("admin.conf");
        let broken = dir.path().join("broken.conf");
        std::fs::write(
            &vendor,
            "# vendor\n[kapsule]\ndefault_container = container\ndefault_image = images:archlinux\n",
        )
        .unwrap();
        std::fs::write(
            &admin,
            "[other]\ndefault_image = nope\n[kapsule]\ndefault_image = local:kapsule-test\nunknown = x\n",
        )
        .unwrap();
        std::fs::write(&broken, "[kapsule]\ndefault_container\n").unwrap();
        let missing = dir.path().join("missing.conf");
        let config = load(&[&vendor, &admin, &broken, &missing]);
        assert_eq!(config["default_container"], "container");
        assert_eq!(config["default_image"], "local:kapsule-test");
        assert_eq!(config.len(), 2, "only known keys: {config:?}");
        assert_eq!(load(&[])["default_image"], "images:ubuntu/24.04");
    }
}

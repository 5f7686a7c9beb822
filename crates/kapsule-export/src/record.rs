//! Where exports go (the XDG base directories of the user) and the record of what was exported
//! from each container: `$XDG_DATA_HOME/kapsule/exports/<container>.json`, every file written
//! for each export, so `--list` shows it and `--delete` (or the container's removal) takes away
//! exactly that.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result, io};

/// The user's directories.
#[derive(Clone, Debug)]
pub struct Places {
    /// `$XDG_DATA_HOME`, default `~/.local/share`.
    pub data_home: PathBuf,
    /// Where wrappers go by default: `~/.local/bin` (on PATH in most login profiles).
    pub bin: PathBuf,
}

impl Places {
    /// From the environment, as the XDG Base Directory Specification says (a relative
    /// `XDG_DATA_HOME` is ignored). A home that is not the running user's (root with a user's
    /// HOME, through `sudo -E`) is refused: what is written there would be root's.
    pub fn from_env() -> Result<Places> {
        use std::os::unix::fs::MetadataExt;
        let home = std::env::var_os("HOME")
            .filter(|h| Path::new(h).is_absolute())
            .map(PathBuf::from)
            .ok_or_else(|| Error::Refused("HOME is not set to an absolute path".into()))?;
        let me = rustix::process::geteuid().as_raw();
        let owner = std::fs::metadata(&home).map_err(io(&home))?.uid();
        if owner != me {
            return Err(Error::Refused(format!(
                "your HOME ({}) belongs to uid {owner}, not to you (uid {me}); run this as its owner",
                home.display()
            )));
        }
        let data_home = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .unwrap_or_else(|| home.join(".local/share"));
        Ok(Places {
            data_home,
            bin: home.join(".local/bin"),
        })
    }

    /// Where desktop entries go.
    pub fn applications(&self) -> PathBuf {
        self.data_home.join("applications")
    }

    /// Where icons go.
    pub fn icons(&self) -> PathBuf {
        self.data_home.join("icons")
    }

    fn record(&self, container: &str) -> PathBuf {
        self.data_home.join("kapsule/exports").join(format!("{container}.json"))
    }
}

/// What an export is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// An app's desktop entry and its icons.
    App,
    /// A command's wrapper.
    Bin,
    /// The container's own terminal entry.
    MenuEntry,
}

impl Kind {
    /// How a user calls it.
    pub fn label(self) -> &'static str {
        match self {
            Kind::App => "app",
            Kind::Bin => "bin",
            Kind::MenuEntry => "menu entry",
        }
    }
}

/// One export: what it was made from and every file written for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Export {
    pub kind: Kind,
    /// The app's desktop-file ID, the command's path; empty for the menu entry.
    pub source: String,
    pub files: Vec<PathBuf>,
}

/// Everything exported from one container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub container: String,
    pub exports: Vec<Export>,
}

impl Record {
    /// The record of `container`; empty when there is none.
    pub fn load(places: &Places, container: &str) -> Result<Record> {
        let path = places.record(container);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Io {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record {
                container: container.to_owned(),
                exports: Vec::new(),
            }),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Writes it back; an empty record is removed.
    pub fn save(&self, places: &Places) -> Result<()> {
        let path = places.record(&self.container);
        if self.exports.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
                _ => Ok(()),
            };
        }
        let json = serde_json::to_vec_pretty(self).expect("a record serializes");
        crate::write_file(&path, &json, 0o644)
    }

    /// Adds `export`, in place of an earlier export of the same thing (whose files it keeps
    /// where the new one did not write them again).
    pub fn add(&mut self, mut export: Export) {
        if let Some(old) = self.take(export.kind, &export.source) {
            for file in old.files {
                if !export.files.contains(&file) {
                    export.files.push(file);
                }
            }
        }
        self.exports.push(export);
    }

    /// Takes the export of `source` of this kind out of the record.
    pub fn take(&mut self, kind: Kind, source: &str) -> Option<Export> {
        let at = self.exports.iter().position(|e| e.kind == kind && e.source == source)?;
        Some(self.exports.remove(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_vanishes_when_empty() {
        let dir = tempfile::tempdir().unwrap();
        let places = Places {
            data_home: dir.path().to_owned(),
            bin: dir.path().join("bin"),
        };
        let mut record = Record::load(&places, "c").unwrap();
        assert!(record.exports.is_empty());
        record.add(Export {
            kind: Kind::Bin,
            source: "/usr/bin/a".into(),
            files: vec!["/x/a".into()],
        });
        record.add(Export {
            kind: Kind::Bin,
            source: "/usr/bin/a".into(),
            files: vec!["/y/a".into()],
        });
        assert_eq!(record.exports.len(), 1);
        assert_eq!(record.exports[0].files, [PathBuf::from("/y/a"), PathBuf::from("/x/a")]);
        record.save(&places).unwrap();
        assert_eq!(Record::load(&places, "c").unwrap(), record);
        assert!(record.take(Kind::App, "/usr/bin/a").is_none());
        assert!(record.take(Kind::Bin, "/usr/bin/a").is_some());
        record.save(&places).unwrap();
        assert!(!dir.path().join("kapsule/exports/c.json").exists());
    }
}

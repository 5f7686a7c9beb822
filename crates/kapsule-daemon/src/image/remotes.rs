//! Image remotes: the simplestreams servers a client names as `<remote>:<alias>`.
//!
//! `images` and `ubuntu` are built in. The system configuration (never a user's own file: the
//! daemon fetches as root, into the image store every user shares) adds remotes or overrides
//! these, one section each:
//!
//! ```ini
//! [remote.kapsule]
//! url = https://images.example.org/kapsule
//! # Optional: the server's certificate (PEM), pinned instead of trusting the system's CAs.
//! certificate = /etc/kapsule/kapsule-images.pem
//! ```
//!
//! `kapsule` is the distribution's own image server; it has no built-in URL, so naming it
//! without configuring it says how to. `local` is the local store and cannot be redefined.

use std::path::PathBuf;

use kapsule_dbus::Error;

use crate::host::config::system_entries;

/// The remotes every installation knows.
const BUILT_IN: &[(&str, &str)] = &[
    ("images", "https://images.linuxcontainers.org"),
    ("ubuntu", "https://cloud-images.ubuntu.com/releases"),
];

/// A PEM certificate is a few KiB; anything bigger is not one.
const MAX_CERTIFICATE: u64 = 64 * 1024;

/// One image server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Remote {
    pub name: String,
    /// The simplestreams base URL (`https://`).
    pub url: String,
    /// A PEM file with the server's certificate, to pin.
    pub certificate: Option<PathBuf>,
}

impl Remote {
    /// The pinned certificate's PEM text, if one is configured.
    pub(crate) async fn certificate_pem(&self) -> Result<Option<String>, Error> {
        let Some(path) = &self.certificate else {
            return Ok(None);
        };
        let fail = |why: String| {
            Error::Failed(format!(
                "Cannot read the certificate of image remote '{}' ({}): {why}",
                self.name,
                path.display()
            ))
        };
        let meta = tokio::fs::metadata(path).await.map_err(|e| fail(e.to_string()))?;
        if !meta.is_file() || meta.len() > MAX_CERTIFICATE {
            return Err(fail("not a PEM certificate file".into()));
        }
        let pem = tokio::fs::read_to_string(path).await.map_err(|e| fail(e.to_string()))?;
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(fail("not a PEM certificate".into()));
        }
        Ok(Some(pem))
    }
}

/// The remotes in effect: built in, then the system layers in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Remotes(Vec<Remote>);

impl Remotes {
    /// The remotes as the system files (lowest layer first) define them.
    pub(crate) async fn read(files: &[PathBuf]) -> Remotes {
        let mut remotes = Remotes::built_in();
        for (file, entries) in system_entries(files).await {
            remotes.apply(&file, &entries);
        }
        remotes
    }

    pub(crate) fn built_in() -> Remotes {
        Remotes(
            BUILT_IN
                .iter()
                .map(|(name, url)| Remote {
                    name: (*name).to_owned(),
                    url: (*url).to_owned(),
                    certificate: None,
                })
                .collect(),
        )
    }

    /// Applies one file's `[remote.<name>]` sections; a bad section is logged and skipped, the
    /// rest of the file still counts.
    fn apply(&mut self, file: &std::path::Path, entries: &[crate::host::config::Entry]) {
        let mut sections: Vec<(&str, Option<&str>, Option<&str>)> = Vec::new();
        for entry in entries {
            let Some(name) = entry.section.strip_prefix("remote.") else {
                continue;
            };
            let index = match sections.iter().position(|(n, _, _)| *n == name) {
                Some(i) => i,
                None => {
                    sections.push((name, None, None));
                    sections.len() - 1
                }
            };
            match entry.key.as_str() {
                "url" => sections[index].1 = Some(&entry.value),
                "certificate" => sections[index].2 = Some(&entry.value),
                other => log::warn!("{}: [remote.{name}]: unknown key '{other}' ignored", file.display()),
            }
        }
        for (name, url, certificate) in sections {
            match check(name, url, certificate) {
                Ok(remote) => {
                    self.0.retain(|r| r.name != remote.name);
                    self.0.push(remote);
                }
                Err(why) => log::warn!("{}: [remote.{name}] skipped: {why}", file.display()),
            }
        }
    }

    /// The remote called `name`, or the error that lists the known ones.
    pub(crate) fn get(&self, name: &str) -> Result<&Remote, Error> {
        if let Some(remote) = self.0.iter().find(|r| r.name == name) {
            return Ok(remote);
        }
        if name == "kapsule" {
            return Err(Error::InvalidArgument(
                "The image remote 'kapsule' has no server configured: set `url` in a [remote.kapsule] \
                 section of /etc/kapsule/kapsule.conf"
                    .into(),
            ));
        }
        Err(Error::InvalidArgument(format!(
            "Unknown image remote '{name}'. Known remotes: {}",
            self.names().join(", ")
        )))
    }

    /// The remote whose server is `url`, for naming where a pulled image came from.
    pub(crate) fn by_url(&self, url: &str) -> Option<&Remote> {
        self.0.iter().find(|r| r.url == url)
    }

    /// Every name a client may use before `:`, `local` first.
    pub(crate) fn names(&self) -> Vec<&str> {
        std::iter::once("local")
            .chain(self.0.iter().map(|r| r.name.as_str()))
            .collect()
    }
}

fn check(name: &str, url: Option<&str>, certificate: Option<&str>) -> Result<Remote, String> {
    kapsule_dbus::image::check_remote(name).map_err(|e| e.to_string())?;
    if name == "local" {
        return Err("'local' is the local image store".into());
    }
    let url = url.ok_or("no url")?;
    let rest = url.strip_prefix("https://").ok_or("the url must start with https://")?;
    if rest.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("'{url}' is not a URL"));
    }
    let certificate = match certificate {
        Some(path) if !path.starts_with('/') => return Err("the certificate must be an absolute path".into()),
        Some(path) => Some(PathBuf::from(path)),
        None => None,
    };
    Ok(Remote {
        name: name.to_owned(),
        url: url.trim_end_matches('/').to_owned(),
        certificate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remotes(text: &str) -> Remotes {
        let mut remotes = Remotes::built_in();
        remotes.apply(
            std::path::Path::new("test.conf"),
            &crate::host::config::entries(text).unwrap(),
        );
        remotes
    }

    #[test]
    fn built_in_remotes_and_configured_ones() {
        let r = remotes(
            "[kapsule]\ndefault_image = kapsule:arch\n\
             [remote.kapsule]\nurl = https://img.example.org/kapsule/\ncertificate = /etc/kapsule/k.pem\n\
             [remote.images]\nurl = https://mirror.example.org/images\n",
        );
        let kapsule = r.get("kapsule").unwrap();
        assert_eq!(kapsule.url, "https://img.example.org/kapsule");
        assert_eq!(
            kapsule.certificate.as_deref(),
            Some(std::path::Path::new("/etc/kapsule/k.pem"))
        );
        assert_eq!(r.get("images").unwrap().url, "https://mirror.example.org/images");
        assert_eq!(r.get("ubuntu").unwrap().url, "https://cloud-images.ubuntu.com/releases");
        assert_eq!(r.names(), ["local", "ubuntu", "kapsule", "images"]);
        assert_eq!(r.by_url("https://img.example.org/kapsule").unwrap().name, "kapsule");
    }

    #[test]
    fn bad_sections_are_skipped_and_unknown_remotes_list_the_known() {
        let r = remotes(
            "[remote.plain]\nurl = http://example.org\n\
             [remote.local]\nurl = https://example.org\n\
             [remote.bad name]\nurl = https://example.org\n\
             [remote.relcert]\nurl = https://example.org\ncertificate = k.pem\n\
             [remote.nourl]\ncertificate = /k.pem\n\
             [remote.ok]\nurl = https://ok.example.org\nextra = 1\n",
        );
        assert_eq!(r.names(), ["local", "images", "ubuntu", "ok"]);
        let message = r.get("bogus").unwrap_err().to_string();
        assert!(message.contains("Unknown image remote 'bogus'"), "{message}");
        assert!(
            message.contains("Known remotes: local, images, ubuntu, ok"),
            "{message}"
        );
        let message = r.get("kapsule").unwrap_err().to_string();
        assert!(message.contains("[remote.kapsule]"), "{message}");
    }

    #[tokio::test]
    async fn a_pinned_certificate_must_be_a_pem_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.pem");
        std::fs::write(&good, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").unwrap();
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "hello").unwrap();
        let remote = |certificate: Option<PathBuf>| Remote {
            name: "k".into(),
            url: "https://k".into(),
            certificate,
        };
        assert!(remote(Some(good)).certificate_pem().await.unwrap().is_some());
        assert!(remote(None).certificate_pem().await.unwrap().is_none());
        for path in [bad, dir.path().to_owned(), dir.path().join("missing")] {
            let message = remote(Some(path)).certificate_pem().await.unwrap_err().to_string();
            assert!(
                message.contains("Cannot read the certificate of image remote 'k'"),
                "{message}"
            );
        }
    }
}

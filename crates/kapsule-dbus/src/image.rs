//! Image strings as clients write them, the Incus way: `<alias>`, `<remote>:<alias>` or
//! `local:<alias>`, where an alias may also be a full fingerprint.
//!
//! The parser only checks the shape; which remotes exist and what they point at is the daemon's
//! configuration. What passes here is safe to put into an Incus URL segment or request body: no
//! whitespace, control characters, empty or `..` path components.

use std::fmt;

/// The longest image string accepted.
pub const MAX_LEN: usize = 256;

/// A parsed image string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageRef<'a> {
    /// The remote before the first `:`, if any (`local` included).
    pub remote: Option<&'a str>,
    /// The alias (or fingerprint) after it.
    pub alias: &'a str,
}

impl<'a> ImageRef<'a> {
    /// Parses `text`, or says what is wrong with it.
    pub fn parse(text: &'a str) -> Result<ImageRef<'a>, ImageRefError> {
        if text.is_empty() {
            return Err(ImageRefError::Empty);
        }
        if text.len() > MAX_LEN {
            return Err(ImageRefError::TooLong);
        }
        let (remote, alias) = match text.split_once(':') {
            Some((remote, alias)) => (Some(remote), alias),
            None => (None, text),
        };
        if let Some(remote) = remote {
            check_remote(remote)?;
        }
        check_alias(alias, true)?;
        Ok(ImageRef { remote, alias })
    }

    /// True when the image may be in the local store: `local:` or no remote, and an alias that
    /// a local image can have (no `/`).
    pub fn may_be_local(&self) -> bool {
        matches!(self.remote, None | Some("local")) && !self.alias.contains('/')
    }
}

/// The names `ImportImage` looks for in an image directory, in order of preference (the
/// original daemon's first): the metadata tarball...
pub const METADATA_FILES: &[&str] = &["incus.tar.xz", "metadata.tar.xz", "metadata.tar.gz"];
/// ...and the root filesystem. The images bundled in the sysext (`/usr/share/kapsule/images/
/// <alias>/`, imported by `kapsule-init`) use the same names.
pub const ROOTFS_FILES: &[&str] = &["rootfs.squashfs", "rootfs.tar.xz", "rootfs.tar.gz", "rootfs.tar.zst"];

/// Checks a local alias (what `ImportImage` names, what `DeleteImage` finds): an alias without
/// `/`, because it is one segment of an Incus URL.
pub fn check_local_alias(alias: &str) -> Result<(), ImageRefError> {
    if alias.len() > MAX_LEN {
        return Err(ImageRefError::TooLong);
    }
    check_alias(alias, false)
}

/// True for a full image fingerprint: 64 hexadecimal digits.
pub fn is_fingerprint(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks a remote's name: 1 to 63 letters, digits, `-` or `_`.
pub fn check_remote(remote: &str) -> Result<(), ImageRefError> {
    if remote.is_empty() {
        return Err(ImageRefError::EmptyRemote);
    }
    if remote.len() > 63
        || !remote
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ImageRefError::BadRemote);
    }
    Ok(())
}

fn check_alias(alias: &str, slash_allowed: bool) -> Result<(), ImageRefError> {
    if alias.is_empty() {
        return Err(ImageRefError::EmptyAlias);
    }
    if let Some(c) = alias
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "._+-".contains(c) || (c == '/' && slash_allowed)))
    {
        return Err(ImageRefError::BadCharacter(c));
    }
    if alias
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(ImageRefError::BadComponent);
    }
    Ok(())
}

/// Why an image string was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageRefError {
    Empty,
    TooLong,
    EmptyRemote,
    BadRemote,
    EmptyAlias,
    BadCharacter(char),
    BadComponent,
}

impl fmt::Display for ImageRefError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRefError::Empty => f.write_str("it is empty"),
            ImageRefError::TooLong => write!(f, "it is longer than {MAX_LEN} characters"),
            ImageRefError::EmptyRemote => f.write_str("there is no remote before ':'"),
            ImageRefError::BadRemote => f.write_str("a remote name is 1 to 63 letters, digits, '-' or '_'"),
            ImageRefError::EmptyAlias => f.write_str("there is no alias"),
            ImageRefError::BadCharacter(c) => write!(
                f,
                "'{}' is not allowed (an alias has letters, digits, '.', '_', '+', '-' and, for remote images, '/')",
                c.escape_debug()
            ),
            ImageRefError::BadComponent => f.write_str("an alias has no empty, '.' or '..' part"),
        }
    }
}

impl std::error::Error for ImageRefError {}

impl ImageRefError {
    /// The named D-Bus error for `what` (the string as given) being refused.
    pub fn for_image(self, what: &str) -> crate::Error {
        crate::Error::InvalidArgument(format!("Invalid image {}: {self}", crate::quote(what)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_incus_forms_parse() {
        let parse = |s| ImageRef::parse(s).unwrap();
        assert_eq!(
            parse("images:debian/12"),
            ImageRef {
                remote: Some("images"),
                alias: "debian/12"
            }
        );
        assert_eq!(
            parse("archlinux"),
            ImageRef {
                remote: None,
                alias: "archlinux"
            }
        );
        assert_eq!(parse("local:kapsule-test").remote, Some("local"));
        assert_eq!(parse("ubuntu:24.04").alias, "24.04");
        assert!(parse("local:kapsule-test").may_be_local());
        assert!(parse("archlinux").may_be_local());
        assert!(!parse("debian/12").may_be_local());
        assert!(!parse("images:archlinux").may_be_local());
    }

    #[test]
    fn bad_strings_say_why() {
        for (bad, want) in [
            ("", ImageRefError::Empty),
            (":x", ImageRefError::EmptyRemote),
            ("images:", ImageRefError::EmptyAlias),
            ("bad remote:x", ImageRefError::BadRemote),
            ("images:a b", ImageRefError::BadCharacter(' ')),
            ("images:a:b", ImageRefError::BadCharacter(':')),
            ("images:debian/../../1.0", ImageRefError::BadComponent),
            ("images:/debian", ImageRefError::BadComponent),
            ("images:debian//12", ImageRefError::BadComponent),
            ("..", ImageRefError::BadComponent),
            ("x\u{0}", ImageRefError::BadCharacter('\0')),
            ("a?b", ImageRefError::BadCharacter('?')),
            ("a%2fb", ImageRefError::BadCharacter('%')),
        ] {
            assert_eq!(ImageRef::parse(bad), Err(want), "{bad:?}");
        }
        assert_eq!(ImageRef::parse(&"a".repeat(MAX_LEN + 1)), Err(ImageRefError::TooLong));
        let message = ImageRefError::BadComponent.for_image("images:..").to_string();
        assert!(message.contains("Invalid image 'images:..'"), "{message}");
    }

    #[test]
    fn local_aliases_have_no_slash() {
        assert!(check_local_alias("kapsule-test").is_ok());
        assert_eq!(check_local_alias("a/b"), Err(ImageRefError::BadCharacter('/')));
        assert_eq!(check_local_alias(""), Err(ImageRefError::EmptyAlias));
        assert!(is_fingerprint(&"aB".repeat(32)));
        assert!(!is_fingerprint(&"g".repeat(64)));
    }
}

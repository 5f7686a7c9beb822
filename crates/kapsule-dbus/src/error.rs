//! The named errors of the Kapsule bus API.

/// Every error a Kapsule method answers with, as `org.kde.kapsule.Error.<Variant>`.
///
/// Clients switch on the name; the message is for humans and never carries a backtrace or
/// internal detail. The set is small and stable: add a variant only when a client needs to react
/// differently to it.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.kde.kapsule.Error")]
pub enum Error {
    /// A D-Bus-level failure (transport, marshalling), passed through with its own name.
    #[zbus(error)]
    ZBus(zbus::Error),
    /// polkit said no, or the caller may not act on this object.
    NotAuthorized(String),
    /// The container, image or operation does not exist.
    NotFound(String),
    /// A container or image with that name exists already.
    AlreadyExists(String),
    /// An argument is malformed: a name, an option, a path.
    InvalidArgument(String),
    /// Incus cannot be reached.
    IncusUnavailable(String),
    /// Anything else; the message says what.
    Failed(String),
}

/// A client's value as an error message quotes it: control characters escaped, and cut after
/// 64 characters, so a hostile 100 KB argument does not come back as a 100 KB message.
pub fn quote(value: &str) -> String {
    const SHOWN: usize = 64;
    let count = value.chars().count();
    let shown: String = value.chars().take(SHOWN).collect();
    if count > SHOWN {
        format!("'{}…' ({count} characters)", shown.escape_debug())
    } else {
        format!("'{}'", shown.escape_debug())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::DBusError;

    #[test]
    fn quoted_values_are_short_and_printable() {
        assert_eq!(quote("a\nb"), "'a\\nb'");
        let long = quote(&"x".repeat(100_000));
        assert!(long.len() < 100 && long.ends_with("…' (100000 characters)"), "{long}");
    }

    #[test]
    fn errors_have_stable_names_and_plain_messages() {
        let cases = [
            (Error::NotAuthorized("no".into()), "org.kde.kapsule.Error.NotAuthorized"),
            (Error::NotFound("no".into()), "org.kde.kapsule.Error.NotFound"),
            (Error::AlreadyExists("no".into()), "org.kde.kapsule.Error.AlreadyExists"),
            (
                Error::InvalidArgument("no".into()),
                "org.kde.kapsule.Error.InvalidArgument",
            ),
            (
                Error::IncusUnavailable("no".into()),
                "org.kde.kapsule.Error.IncusUnavailable",
            ),
            (Error::Failed("no".into()), "org.kde.kapsule.Error.Failed"),
        ];
        for (error, name) in cases {
            assert_eq!(error.name().as_str(), name);
            assert_eq!(error.description(), Some("no"));
        }
    }
}

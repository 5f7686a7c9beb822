//! The host account of a caller, as user setup makes it at home in a container.

use std::path::{Path, PathBuf};

use kapsule_dbus::Error;

use crate::identity::caller::Caller;

/// The host account being set up in a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Account {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    /// The home on the host.
    pub home: PathBuf,
    /// The login shell on the host.
    pub shell: String,
}

impl Account {
    /// The account of a caller (already looked up in the user database).
    pub(crate) fn of(caller: &Caller) -> Account {
        Account {
            uid: caller.uid,
            gid: caller.gid,
            name: caller.name.clone(),
            home: caller.home.clone(),
            shell: caller.shell.clone(),
        }
    }

    /// The home inside the container: `/home/<last part of the host home>`, as the original
    /// daemon made it (so its containers keep their layout).
    pub(crate) fn container_home(&self) -> String {
        let base = self
            .home
            .file_name()
            .map(|b| b.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.name.clone());
        format!("/home/{base}")
    }
}

/// `~` and `~/x` are the user's home and what is in it; anything else is taken as it is.
pub(crate) fn expand_home(raw: &str, home: &Path) -> PathBuf {
    match raw.strip_prefix('~') {
        Some("") => home.to_owned(),
        Some(rest) if rest.starts_with('/') => home.join(rest.trim_start_matches('/')),
        _ => PathBuf::from(raw),
    }
}

/// The account `SetupUser` was asked for, which must be the host's own account of that uid:
/// the daemon does not create users the host does not have.
pub(crate) fn requested_account(uid: u32, gid: u32, username: &str, home: &str) -> Result<Account, Error> {
    let host =
        Caller::from_uid(uid).map_err(|_| Error::InvalidArgument(format!("There is no user {uid} on this host")))?;
    let account = Account::of(&host);
    if account.gid != gid || account.name != username || account.home != Path::new(home) {
        return Err(Error::InvalidArgument(format!(
            "User {uid} on this host is {}:{} with home {}, not {username}:{gid} with home {home}",
            account.name,
            account.gid,
            account.home.display()
        )));
    }
    Ok(account)
}

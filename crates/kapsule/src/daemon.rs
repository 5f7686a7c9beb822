//! Reaching the daemon (its socket, else the bus) and its errors as a user reads them.

use anyhow::{Context, Result, anyhow};
use zbus::Connection;

/// The daemon's own socket, from kapsule-daemon.socket.
const SOCKET: &str = "/run/kapsule/kapsule.sock";

/// Where the daemon is: the bus at `$KAPSULE_BUS_ADDRESS` when that is set (tests,
/// development); else its own socket (`$KAPSULE_SOCKET`, default [`SOCKET`]), which starts it
/// if needed and needs no bus; else the system bus, which starts it too.
pub(crate) async fn connect() -> Result<Connection> {
    if let Ok(address) = std::env::var("KAPSULE_BUS_ADDRESS") {
        return zbus::connection::Builder::address(address.as_str())
            .build()
            .await
            .with_context(|| format!("cannot reach the bus at {address}"));
    }
    let socket = std::env::var_os("KAPSULE_SOCKET").map_or_else(|| SOCKET.into(), std::path::PathBuf::from);
    let refused = match tokio::net::UnixStream::connect(&socket).await {
        Ok(stream) => {
            let handshake = zbus::connection::Builder::unix_stream(stream.into_std()?).p2p().build();
            match tokio::time::timeout(SOCKET_HANDSHAKE, handshake).await {
                Ok(Ok(connection)) => return Ok(connection),
                // The daemon turned this client away (too many of this user's, or of everyone's,
                // at once) or could not answer: the bus is another way in.
                Ok(Err(e)) => format!("the daemon's socket {} refused this client ({e})", socket.display()),
                Err(_) => format!(
                    "the daemon's socket {} did not answer within {SOCKET_HANDSHAKE:?}",
                    socket.display()
                ),
            }
        }
        // No socket unit (an older installation, a development setup): the bus will do.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            String::new()
        }
        Err(e) => format!("cannot connect to {} ({e})", socket.display()),
    };
    zbus::connection::Builder::system().build().await.with_context(|| {
        if refused.is_empty() {
            "cannot reach the system bus (is D-Bus running?)".to_owned()
        } else {
            format!("{refused}, and the system bus cannot be reached either")
        }
    })
}

/// How long the daemon's socket may take to accept this client before the bus is tried.
const SOCKET_HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(5);

/// A daemon error as one line, with a hint where one helps. Kapsule's own errors are matched by
/// the contract's enum; the bus's by their standard names.
pub(crate) fn explain(e: impl Into<kapsule_dbus::Error>) -> anyhow::Error {
    use zbus::DBusError;
    let e = match e.into() {
        kapsule_dbus::Error::IncusUnavailable(text) => {
            return anyhow!("{text}\nhint: check `systemctl status incus`");
        }
        kapsule_dbus::Error::ZBus(e) => e,
        named => return anyhow!("{}", named.description().unwrap_or_default()),
    };
    let (name, text) = match &e {
        zbus::Error::MethodError(name, message, _) => {
            (name.to_string(), message.clone().unwrap_or_else(|| name.to_string()))
        }
        zbus::Error::FDO(fdo) => (fdo.name().to_string(), fdo.description().unwrap_or_default().to_owned()),
        _ => return anyhow!("talking to the Kapsule daemon failed: {e}"),
    };
    match name.as_str() {
        "org.freedesktop.DBus.Error.ServiceUnknown" | "org.freedesktop.DBus.Error.NameHasNoOwner" => {
            anyhow!(
                "the Kapsule daemon is not running and could not be started\nhint: check `systemctl status kapsule-daemon`"
            )
        }
        // The daemon went away before it answered (it crashed or was stopped mid-call).
        "org.freedesktop.DBus.Error.NoReply" => anyhow!(
            "the Kapsule daemon stopped while handling the request; its outcome is unknown\n\
             hint: check `journalctl -u kapsule-daemon` and `kapsule list`"
        ),
        _ => anyhow!("{text}"),
    }
}

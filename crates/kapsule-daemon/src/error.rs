//! The named error a client sees for what Incus said.

use kapsule_dbus::Error;

/// The named error a client sees for an Incus failure. Incus's own message is kept (it says
/// what is wrong with the request); nothing internal is added.
pub(crate) fn incus_error(e: kapsule_incus::Error) -> Error {
    use kapsule_incus::Error as E;
    match e {
        E::Unavailable { .. } => Error::IncusUnavailable(format!("{e}. Is Incus running?")),
        E::NotFound { message, .. } => Error::NotFound(message),
        E::AlreadyExists { message, .. } => Error::AlreadyExists(message),
        other => Error::Failed(readable(&other.to_string())),
    }
}

/// The most of an Incus message a client gets. Incus passes a failed command's whole output on
/// (a full disk during an unpack is about a megabyte of `tar` complaints); that is logged, and the
/// client gets its beginning and the cause.
const SHOWN: usize = 600;

/// Incus's message `text`, fit for a person: short ones as they are; a long one cut, with the
/// cause put first when it is a full disk (buried in the output otherwise), the whole of it
/// logged.
pub(crate) fn readable(text: &str) -> String {
    if text.len() <= SHOWN {
        return text.to_owned();
    }
    log::warn!("Incus said ({} bytes): {text}", text.len());
    let mut cut = SHOWN;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let shown = format!(
        "{}… ({} more bytes in the daemon's log)",
        &text[..cut],
        text.len() - cut
    );
    if text.to_ascii_lowercase().contains("no space left on device") {
        format!("no space left on device (a disk Incus writes to is full). Incus said: {shown}")
    } else {
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_with_a_full_disk_said_first() {
        assert_eq!(readable("short"), "short");
        let tar = format!(
            "Unpack failed: {}tar: ./b: Cannot write: No space left on device\n",
            "tar: ./a: Wrote only 6656 of 10240 bytes\n".repeat(100)
        );
        let message = readable(&tar);
        assert!(message.starts_with("no space left on device (a disk"), "{message}");
        assert!(message.len() < SHOWN + 200, "{}", message.len());
        assert!(message.ends_with("more bytes in the daemon's log)"), "{message}");
        let long = "é".repeat(1000);
        assert!(readable(&long).starts_with("éé"), "cut at a character boundary");
    }
}

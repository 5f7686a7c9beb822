//! The local side of a relayed terminal, shared by `kapsule enter` (the pty is inside a
//! container) and `kapsule-host-exec` (the pty's other side is a process on the host): the
//! user's terminal in raw mode while the session lasts, so every key (Ctrl-C included) reaches
//! the far side's line discipline; keyboard bytes pumped into the pty master, its output pumped
//! to the screen; window sizes copied across; and the signals a user sends the local side
//! ([`Forwarded`]), which it passes on to the command it stands for.
//!
//! The pumps are blocking loops on threads: a terminal's `read` cannot be cancelled, and the
//! keyboard pump is simply left behind when the session ends (the process exits soon after).

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};

/// The terminal on stdin in raw mode for as long as this lives; the saved settings come back
/// on drop, also when the session fails.
#[derive(Debug)]
pub struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    /// Puts stdin's terminal in raw mode.
    pub fn enable() -> std::io::Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Flush, &raw)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(std::io::stdin(), rustix::termios::OptionalActions::Flush, &self.saved);
    }
}

/// Whether `fd` is a terminal.
pub fn is_terminal(fd: impl AsFd) -> bool {
    rustix::termios::isatty(fd)
}

/// Starts a thread copying stdin into `master` until either side closes. It is never joined:
/// it blocks in `read` on the keyboard until the process exits.
pub fn pump_keyboard(master: OwnedFd) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut master = std::fs::File::from(master);
        let mut buf = [0u8; 8192];
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || master.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
}

/// Copies what `master` prints to `screen` until no one holds the pty's other side any more
/// (`read` then fails with EIO) or the screen is gone. Blocking: run it on a thread.
pub fn pump_screen(master: OwnedFd, mut screen: impl Write) {
    let mut master = std::fs::File::from(master);
    let mut buf = [0u8; 16384];
    loop {
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if screen.write_all(&buf[..n]).and_then(|()| screen.flush()).is_err() {
                    break;
                }
            }
        }
    }
}

/// Gives `master` the window size of the terminal `from` (on start and on every SIGWINCH);
/// nothing when `from` has no size.
pub fn copy_window_size(from: impl AsFd, master: impl AsFd) {
    if let Ok(size) = rustix::termios::tcgetwinsize(from)
        && size.ws_row > 0
        && size.ws_col > 0
    {
        let _ = rustix::termios::tcsetwinsize(master, size);
    }
}

/// A new pty: its master (close-on-exec) and its other side, opened without becoming anyone's
/// controlling terminal.
pub fn open_pty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use rustix::fs::{Mode, OFlags};
    use rustix::pty::OpenptFlags;
    let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let other = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok((master, other))
}

/// The signals a user sends a command in the foreground (Ctrl-C, Ctrl-\\, `kill`, a closed
/// terminal), caught so that the local side can pass them on instead of dying of them.
#[derive(Debug)]
pub struct Forwarded(Vec<(tokio::signal::unix::Signal, i32)>);

impl Forwarded {
    /// Catches SIGINT, SIGTERM, SIGHUP and SIGQUIT from now on (needs a tokio runtime).
    pub fn catch() -> std::io::Result<Forwarded> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut caught = Vec::new();
        for (kind, number) in [
            (SignalKind::interrupt(), 2),
            (SignalKind::terminate(), 15),
            (SignalKind::hangup(), 1),
            (SignalKind::quit(), 3),
        ] {
            caught.push((signal(kind)?, number));
        }
        Ok(Forwarded(caught))
    }

    /// The number of the next signal that arrives.
    pub async fn next(&mut self) -> i32 {
        std::future::poll_fn(|cx| {
            for (signal, number) in &mut self.0 {
                if signal.poll_recv(cx).is_ready() {
                    return std::task::Poll::Ready(*number);
                }
            }
            std::task::Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pty_carries_bytes_and_sizes_both_ways() {
        let (master, other) = open_pty().unwrap();
        assert!(is_terminal(&other) && is_terminal(&master));
        let size = rustix::termios::Winsize {
            ws_row: 37,
            ws_col: 91,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(&other, size).unwrap();
        copy_window_size(&other, &master);
        let got = rustix::termios::tcgetwinsize(&other).unwrap();
        assert_eq!((got.ws_row, got.ws_col), (37, 91));
        // What the far side writes arrives at the screen, until it closes its side.
        let mut far = std::fs::File::from(other);
        // The line discipline turns a newline into CR LF on the way out (ONLCR).
        far.write_all(b"hello\n").unwrap();
        drop(far);
        let mut screen = Vec::new();
        pump_screen(master, &mut screen);
        assert_eq!(String::from_utf8_lossy(&screen), "hello\r\n");
    }
}

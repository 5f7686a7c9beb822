//! The session channel: the socket `Enter` hands the client, on which the client may send
//! signals to the session's command and on which the session reports how it ended.
//!
//! One line per message, in ASCII: client to session `signal <n>`; session to client, last and
//! once, `exit <code>` or `signal <n>` (killed by signal `n`). End of file before a status means
//! the session's helper died, which the client reports as an error.

/// How a session's command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Killed(i32),
}

impl Status {
    /// The line that reports it.
    pub fn to_line(self) -> String {
        match self {
            Status::Exited(code) => format!("exit {code}\n"),
            Status::Killed(signal) => format!("signal {signal}\n"),
        }
    }

    /// Reads a status line; `None` if it is not one.
    pub fn parse(line: &str) -> Option<Status> {
        let (word, number) = line.trim_end().split_once(' ')?;
        let number: i32 = number.parse().ok()?;
        match word {
            "exit" => Some(Status::Exited(number)),
            "signal" if number > 0 => Some(Status::Killed(number)),
            _ => None,
        }
    }
}

impl From<std::process::ExitStatus> for Status {
    /// How a waited-for process ended; a status that is neither (a stopped process) counts as
    /// exit 1.
    fn from(status: std::process::ExitStatus) -> Status {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => Status::Exited(code),
            (None, Some(signal)) => Status::Killed(signal),
            (None, None) => Status::Exited(1),
        }
    }
}

/// The line asking the session to send `signal` to its command.
pub fn signal_line(signal: i32) -> String {
    format!("signal {signal}\n")
}

/// The signal a client line asks for, if it is such a line (and a signal number).
pub fn parse_signal_line(line: &str) -> Option<i32> {
    let n: i32 = line.trim_end().strip_prefix("signal ")?.parse().ok()?;
    (1..=64).contains(&n).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_status_becomes_an_exit_code_or_a_signal() {
        use std::os::unix::process::ExitStatusExt;
        let status = |raw| Status::from(std::process::ExitStatus::from_raw(raw));
        assert_eq!(status(0), Status::Exited(0));
        assert_eq!(status(7 << 8), Status::Exited(7));
        assert_eq!(status(9), Status::Killed(9));
        // Stopped (WIFSTOPPED by SIGSTOP): neither.
        assert_eq!(status((19 << 8) | 0x7f), Status::Exited(1));
    }

    #[test]
    fn lines_round_trip_and_garbage_is_refused() {
        for status in [Status::Exited(0), Status::Exited(7), Status::Killed(9)] {
            assert_eq!(Status::parse(&status.to_line()), Some(status));
        }
        for bad in ["", "exit", "exit x", "signal 0", "quit 1", "exit 1 2"] {
            assert_eq!(Status::parse(bad), None, "{bad:?}");
        }
        assert_eq!(parse_signal_line(&signal_line(2)), Some(2));
        for bad in ["signal 0", "signal 65", "signal -1", "signal", "kill 9"] {
            assert_eq!(parse_signal_line(bad), None, "{bad:?}");
        }
    }
}

//! Facts about host processes, read from `/proc`.

use std::io;
use std::os::fd::OwnedFd;

/// True once the process `pidfd` refers to has ended (a pidfd becomes readable then). Whoever
/// reads `/proc/<pid>` of a process it holds a pidfd of checks this after the read: while the
/// process lives, its pid is not reused, so what was read was its own.
pub(crate) fn exited(pidfd: &OwnedFd) -> bool {
    let mut fds = [rustix::event::PollFd::new(pidfd, rustix::event::PollFlags::IN)];
    let zero = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
    matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
}

/// The start time of process `pid`, in clock ticks after boot.
pub(crate) fn start_time(pid: u32) -> io::Result<u64> {
    stat_field(pid, 22)
}

/// The pid of process `pid`'s parent.
pub(crate) fn parent(pid: u32) -> io::Result<u32> {
    stat_field(pid, 4)
}

/// Field `field` (counted from 1, as proc(5) does) of `/proc/<pid>/stat`.
fn stat_field<T: std::str::FromStr>(pid: u32, field: usize) -> io::Result<T> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_field(&stat, field)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("unexpected /proc/{pid}/stat")))
}

/// Field `field` (3 or later) of a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may hold spaces and parentheses itself, so fields are counted after the last
/// `)`.
fn parse_field<T: std::str::FromStr>(stat: &str, field: usize) -> Option<T> {
    let (_, after_name) = stat.rsplit_once(')')?;
    // Field 3 (the state) is the first after the name.
    after_name.split_whitespace().nth(field.checked_sub(3)?)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_is_field_22_counted_after_the_name() {
        let fields: Vec<String> = (3..=25).map(|n| n.to_string()).collect();
        let stat = format!("1234 (a) b) (c) {}", fields.join(" "));
        assert_eq!(parse_field::<u64>(&stat, 22), Some(22));
        assert_eq!(parse_field::<u32>(&stat, 4), Some(4));
        assert_eq!(parse_field::<u64>("1234 (name) S 1 2", 22), None);
        assert_eq!(parse_field::<u64>("garbage", 22), None);
    }

    #[test]
    fn a_process_has_its_parent() {
        assert_eq!(parent(std::process::id()).unwrap(), std::os::unix::process::parent_id());
    }
}

//! A container's user database as text: the lines an account, its group, its subordinate ids and
//! its sudo rule add, each only where it is missing.

/// The user's own shell when the image lists it, else bash when listed, else `/bin/sh`.
pub(crate) fn choose_shell(host_shell: &str, etc_shells: &str) -> String {
    let listed: Vec<&str> = etc_shells
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('/'))
        .collect();
    for candidate in [host_shell, "/bin/bash", "/usr/bin/bash"] {
        if !candidate.is_empty() && listed.contains(&candidate) {
            return candidate.to_owned();
        }
    }
    "/bin/sh".to_owned()
}

/// `text` with `line` appended if no entry is named `name`; `None` when nothing changes.
pub(crate) fn add_line_if_absent(text: &str, name: &str, line: &str) -> Option<String> {
    if text.lines().any(|l| l.split(':').next() == Some(name)) {
        return None;
    }
    let mut out = text.to_owned();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(line);
    out.push('\n');
    Some(out)
}

/// `/etc/group` with a group `name` of `gid`, unless a group of that name exists (a group with
/// that gid under another name is left alone and a second name added, as `groupadd -o` would).
pub(crate) fn add_group_line(text: &str, name: &str, gid: u32) -> Option<String> {
    add_line_if_absent(text, name, &format!("{name}:x:{gid}:"))
}

/// The first subordinate id useradd gives out, and how many each user gets (login.defs'
/// `SUB_UID_MIN` and `SUB_UID_COUNT`).
const SUBORDINATE_FIRST: u64 = 100_000;

const SUBORDINATE_COUNT: u64 = 65_536;

/// `/etc/subuid` (or `subgid`) with a range for `user` after every range already given out,
/// unless the user (by name or uid) has one; `None` when nothing changes.
pub(crate) fn add_subordinate_range(text: &str, user: &str, uid: u32) -> Option<String> {
    let uid = uid.to_string();
    let mut next = SUBORDINATE_FIRST;
    for line in text.lines() {
        let mut fields = line.trim().split(':');
        let (Some(owner), Some(start), Some(count)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if owner == user || owner == uid {
            return None;
        }
        if let (Ok(start), Ok(count)) = (start.parse::<u64>(), count.parse::<u64>()) {
            next = next.max(start.saturating_add(count));
        }
    }
    if next.saturating_add(SUBORDINATE_COUNT) > u64::from(u32::MAX) {
        return None;
    }
    add_line_if_absent(text, user, &format!("{user}:{next}:{SUBORDINATE_COUNT}"))
}

/// Today, as `/etc/shadow` counts days.
pub(crate) fn days_since_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0)
}

pub(crate) fn sudoers_entry(user: &str) -> (String, String) {
    let file: String = user
        .chars()
        .map(|c| if c == '.' || c == '~' { '_' } else { c })
        .collect();
    (
        format!("/etc/sudoers.d/{file}"),
        format!("{user} ALL=(ALL) NOPASSWD:ALL\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_are_added_once_and_nothing_else_changes() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nubuntu:x:1000:1000::/home/ubuntu:/bin/bash";
        let line = "alice:x:1000:1000:alice:/home/alice:/bin/bash";
        let added = add_line_if_absent(passwd, "alice", line).unwrap();
        assert_eq!(added, format!("{passwd}\n{line}\n"), "appended, same uid allowed");
        assert_eq!(add_line_if_absent(&added, "alice", line), None, "idempotent");
        assert_eq!(add_line_if_absent("", "a", "a:x"), Some("a:x\n".into()));
        // A name that is only a prefix of another is not the same name.
        assert!(add_line_if_absent("alice2:x:1:1::/:/bin/sh\n", "alice", line).is_some());
        assert_eq!(
            add_group_line("root:x:0:\n", "alice", 1000).unwrap(),
            "root:x:0:\nalice:x:1000:\n"
        );
    }

    #[test]
    fn subordinate_ranges_follow_those_given_out() {
        assert_eq!(
            add_subordinate_range("", "alice", 1000).as_deref(),
            Some("alice:100000:65536\n")
        );
        assert_eq!(
            add_subordinate_range("bob:100000:65536\ncarol:165536:65536", "alice", 1000).as_deref(),
            Some("bob:100000:65536\ncarol:165536:65536\nalice:231072:65536\n")
        );
        // A low range (a hand-made one) does not pull the next below the first useradd gives.
        assert_eq!(
            add_subordinate_range("dave:5000:10\n", "alice", 1000).as_deref(),
            Some("dave:5000:10\nalice:100000:65536\n")
        );
        assert_eq!(add_subordinate_range("alice:300000:65536\n", "alice", 1000), None);
        assert_eq!(
            add_subordinate_range("1000:300000:65536\n", "alice", 1000),
            None,
            "by uid"
        );
        assert_eq!(
            add_subordinate_range("x:4294900000:65536\n", "alice", 1000),
            None,
            "no room left: nothing written"
        );
        // Comments and junk lines are kept and skipped.
        assert_eq!(
            add_subordinate_range("# ids\njunk\n", "alice", 1000).as_deref(),
            Some("# ids\njunk\nalice:100000:65536\n")
        );
    }

    #[test]
    fn the_shell_is_the_users_own_when_the_image_has_it() {
        let debian = "# /etc/shells\n/bin/sh\n/bin/bash\n/usr/bin/bash\n";
        assert_eq!(choose_shell("/usr/bin/zsh", debian), "/bin/bash");
        assert_eq!(
            choose_shell("/usr/bin/zsh", "/usr/bin/zsh\n/bin/bash\n"),
            "/usr/bin/zsh"
        );
        assert_eq!(choose_shell("/bin/bash", ""), "/bin/sh", "BusyBox: no /etc/shells");
    }
}

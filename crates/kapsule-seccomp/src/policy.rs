//! LXC's seccomp policy format, version 2, as Incus writes it:
//!
//! ```text
//! 2
//! denylist
//! [all]
//! reject_force_umount  # comment this to allow umount -f;  not recommended
//! [all]
//! kexec_load errno 38
//! mknod notify [1,8192,SCMP_CMP_MASKED_EQ,61440]
//! ```
//!
//! The version; the mode (`denylist` or `allowlist`, or their old names `blacklist` and
//! `whitelist`), optionally followed by the default action; then rules, each for the
//! architectures of the section it is in (`[all]` where none is named): a system call, its
//! action (else the mode's: `kill` in a denylist, `allow` in an allowlist) and conditions on its
//! arguments, `[index,value,comparison]` or, for a masked comparison, `[index,value,comparison,mask]`.

use std::str::FromStr;

use crate::{Error, Host};

/// A parsed policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// What a system call no rule matches gets.
    pub default_action: Action,
    pub rules: Vec<Rule>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Denylist,
    Allowlist,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Allow,
    Errno(u16),
    Kill,
    Trap,
    Log,
    /// Handed to the container manager's supervisor (Incus's interception).
    Notify,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub section: Section,
    pub syscall: String,
    pub action: Action,
    /// All must hold for the rule to apply.
    pub conditions: Vec<Condition>,
}

/// The architectures a rule is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// The host's own and its compat architecture.
    All,
    Only(Arch),
    /// An architecture this program knows nothing of: its rules apply nowhere here.
    Other,
}

impl Section {
    /// Whether the rules of this section apply to system calls of `arch` on `host`.
    pub fn covers(self, arch: Arch, host: Host) -> bool {
        match self {
            Section::All => arch == host.native || arch == host.compat,
            Section::Only(only) => only == arch,
            Section::Other => false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    X86,
    X32,
    Aarch64,
    Arm,
}

impl Arch {
    fn by_section_name(name: &str) -> Option<Arch> {
        Some(match name {
            "x86_64" | "amd64" => Arch::X86_64,
            "x86" | "i386" | "i486" | "i586" | "i686" => Arch::X86,
            "x32" => Arch::X32,
            "aarch64" | "arm64" => Arch::Aarch64,
            "arm" | "armel" | "armhf" | "armv6l" | "armv7l" | "armv8l" => Arch::Arm,
            _ => return None,
        })
    }

    /// What the kernel puts in `seccomp_data.arch` (linux/audit.h).
    pub(crate) fn audit_token(self) -> u32 {
        match self {
            // x32 shares x86-64's token; its calls are told apart by their number.
            Arch::X86_64 | Arch::X32 => 0xc000_003e,
            Arch::X86 => 0x4000_0003,
            Arch::Aarch64 => 0xc000_00b7,
            Arch::Arm => 0x4000_0028,
        }
    }

    pub(crate) fn is_64_bit(self) -> bool {
        matches!(self, Arch::X86_64 | Arch::Aarch64)
    }

    /// The number of system call `name` on this architecture, if it has it.
    pub fn number(self, name: &str) -> Option<u32> {
        let id = match self {
            Arch::X86_64 => syscalls::x86_64::Sysno::from_str(name).ok()?.id(),
            Arch::X86 => syscalls::x86::Sysno::from_str(name).ok()?.id(),
            Arch::Aarch64 => syscalls::aarch64::Sysno::from_str(name).ok()?.id(),
            Arch::Arm => syscalls::arm::Sysno::from_str(name).ok()?.id(),
            // Refused as a whole (see the crate's documentation).
            Arch::X32 => return None,
        };
        u32::try_from(id).ok()
    }
}

/// A condition on one argument of a system call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Condition {
    /// 0 to 5.
    pub arg: u8,
    pub compare: Compare,
    pub value: u64,
}

/// How an argument is compared with a condition's value (unsigned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compare {
    Equal,
    NotEqual,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
    /// `argument & mask == value`.
    MaskedEqual(u64),
}

const MNT_FORCE: u64 = 1;
const EACCES: u16 = 13;

impl Policy {
    pub fn parse(text: &str) -> Result<Policy, Error> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(n, line)| (n + 1, line.split('#').next().unwrap_or("").trim()))
            .filter(|(_, line)| !line.is_empty());
        let syntax = |line, reason: String| Error::Syntax { line, reason };

        let (_, version) = lines.next().ok_or_else(|| syntax(1, "the policy is empty".into()))?;
        if version != "2" {
            return Err(Error::Version(version.to_owned()));
        }
        let (line, header) = lines
            .next()
            .ok_or_else(|| syntax(2, "no mode (denylist or allowlist) after the version".into()))?;
        let mut words = header.split_whitespace();
        let mode = match words.next() {
            Some("denylist" | "blacklist") => Mode::Denylist,
            Some("allowlist" | "whitelist") => Mode::Allowlist,
            other => {
                return Err(syntax(
                    line,
                    format!("expected denylist or allowlist, found {:?}", other.unwrap_or("")),
                ));
            }
        };
        let rest: Vec<&str> = words.collect();
        let (default_action, rule_action) = match mode {
            Mode::Denylist => (Action::Allow, Action::Kill),
            Mode::Allowlist => (Action::Kill, Action::Allow),
        };
        let default_action = match rest.as_slice() {
            [] => default_action,
            words => parse_action(words)
                .filter(|(_, used)| *used == words.len())
                .map(|(action, _)| action)
                .ok_or_else(|| syntax(line, format!("unknown default action {:?}", words.join(" "))))?,
        };

        let mut section = Section::All;
        let mut rules = Vec::new();
        for (line, text) in lines {
            if let Some(name) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
                section = match name.trim() {
                    "all" => Section::All,
                    name => Arch::by_section_name(name).map_or(Section::Other, Section::Only),
                };
                continue;
            }
            let rule = parse_rule(text, section, rule_action).map_err(|reason| syntax(line, reason))?;
            rules.push(rule);
        }
        Ok(Policy {
            mode,
            default_action,
            rules,
        })
    }
}

/// One rule line (comment already removed).
fn parse_rule(text: &str, section: Section, default: Action) -> Result<Rule, String> {
    // LXC's own shorthand: `umount2` with MNT_FORCE fails with EACCES.
    if text.split_whitespace().next() == Some("reject_force_umount") {
        return Ok(Rule {
            section,
            syscall: "umount2".into(),
            action: Action::Errno(EACCES),
            conditions: vec![Condition {
                arg: 1,
                compare: Compare::MaskedEqual(MNT_FORCE),
                value: MNT_FORCE,
            }],
        });
    }
    // The conditions are the bracketed part; before it, the name and the action.
    let (head, conditions) = match text.find('[') {
        Some(at) => (&text[..at], &text[at..]),
        None => (text, ""),
    };
    let mut words = head.split_whitespace();
    let syscall = words.next().ok_or("a rule without a system call")?.to_owned();
    if !syscall.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!("{syscall:?} is not a system call's name"));
    }
    let words: Vec<&str> = words.collect();
    let action = match words.as_slice() {
        [] => default,
        words => match parse_action(words) {
            Some((action, used)) if used == words.len() => action,
            _ => return Err(format!("unknown action {:?}", words.join(" "))),
        },
    };
    let mut parsed = Vec::new();
    let mut rest = conditions.trim();
    while !rest.is_empty() {
        let body = rest
            .strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .ok_or_else(|| format!("malformed condition {rest:?}"))?;
        parsed.push(parse_condition(body.0)?);
        rest = body.1.trim_start();
    }
    if parsed.len() > 6 {
        return Err("more than six conditions".into());
    }
    Ok(Rule {
        section,
        syscall,
        action,
        conditions: parsed,
    })
}

/// An action at the start of `words`, and how many words it took.
fn parse_action(words: &[&str]) -> Option<(Action, usize)> {
    Some(match words {
        ["allow", ..] => (Action::Allow, 1),
        ["kill", ..] => (Action::Kill, 1),
        ["trap", ..] => (Action::Trap, 1),
        ["log", ..] => (Action::Log, 1),
        ["notify", ..] => (Action::Notify, 1),
        ["errno", n, ..] => (Action::Errno(n.parse().ok()?), 2),
        _ => return None,
    })
}

/// `index,value,comparison` or `index,value,SCMP_CMP_MASKED_EQ,mask`.
fn parse_condition(body: &str) -> Result<Condition, String> {
    let parts: Vec<&str> = body.split(',').map(str::trim).collect();
    let bad = || format!("malformed condition [{body}]");
    let (index, value, comparison, mask) = match parts.as_slice() {
        [i, v, c] => (i, v, c, None),
        [i, v, c, m] => (i, v, c, Some(number(m).ok_or_else(bad)?)),
        _ => return Err(bad()),
    };
    let arg: u8 = index.parse().ok().filter(|i| *i < 6).ok_or_else(bad)?;
    let value = number(value).ok_or_else(bad)?;
    let compare = match (*comparison, mask) {
        ("SCMP_CMP_EQ" | "==", None) => Compare::Equal,
        ("SCMP_CMP_NE" | "!=", None) => Compare::NotEqual,
        ("SCMP_CMP_LT" | "<", None) => Compare::Less,
        ("SCMP_CMP_LE" | "<=", None) => Compare::LessOrEqual,
        ("SCMP_CMP_GT" | ">", None) => Compare::Greater,
        ("SCMP_CMP_GE" | ">=", None) => Compare::GreaterOrEqual,
        ("SCMP_CMP_MASKED_EQ" | "&=", Some(mask)) => Compare::MaskedEqual(mask),
        _ => return Err(format!("unknown comparison in [{body}]")),
    };
    Ok(Condition { arg, compare, value })
}

/// A decimal number, or a hexadecimal one with `0x`.
fn number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

//! A container's seccomp policy, as Incus writes it for LXC, made into the filter a session in
//! that container gets, so a session is held to what the container's own processes are held to.
//!
//! LXC loads a container's policy into its init; everything the init starts inherits it. A
//! session the daemon starts with `setns` is not the init's descendant, so it gets the same
//! policy here: [`Policy::parse`] reads LXC's text format (version 2, the one Incus writes to
//! `/var/lib/incus/security/seccomp/<name>`) and [`Policy::compile`] turns it into a classic BPF
//! program for the host's architecture and its 32-bit compat one, as LXC (through libseccomp)
//! does. What differs from LXC, each on purpose:
//!
//! - `notify` rules (Incus's system call interception, for unprivileged containers) leave the
//!   call to the kernel (left out of a denylist, `allow` in an allowlist): no one listens for a
//!   session's notifications, and the kernel's own answer is never more than what interception
//!   would grant.
//! - A `kill` rule kills the whole process, not just the thread.
//! - x32 system calls (on x86-64) are refused with `ENOSYS`, the kernel's own answer where x32 is
//!   off, as it is on KDE Linux's kernel: their numbers differ from both the native and the
//!   compat table, and a filter that missed one would let a denied call through.

mod bpf;
mod policy;

pub use bpf::Instruction;
pub use policy::{Action, Arch, Compare, Condition, Mode, Policy, Rule, Section};

use bpf::{Assembler, Label, Step};

/// Why a policy cannot be read or compiled.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("line {line}: {reason}")]
    Syntax { line: usize, reason: String },
    #[error("seccomp policy version {0} is not supported (only 2 is)")]
    Version(String),
    #[error("no seccomp filter can be made for this architecture ({0})")]
    Architecture(&'static str),
    #[error("the filter would have {0} instructions, more than the kernel takes (4096)")]
    TooLong(usize),
    #[error("internal error in the seccomp compiler: {0}")]
    Internal(&'static str),
}

/// A compiled filter, and what of the policy it could not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub program: Vec<Instruction>,
    /// System calls the policy names that exist on none of the filter's architectures; LXC
    /// skips these too (with a warning).
    pub unknown: Vec<String>,
}

/// The architectures a filter covers: the host's own and its 32-bit compat one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Host {
    pub native: Arch,
    pub compat: Arch,
}

impl Host {
    /// This machine's.
    pub fn current() -> Result<Host, Error> {
        if cfg!(target_endian = "big") {
            return Err(Error::Architecture("big-endian"));
        }
        match std::env::consts::ARCH {
            "x86_64" => Ok(Host {
                native: Arch::X86_64,
                compat: Arch::X86,
            }),
            "aarch64" => Ok(Host {
                native: Arch::Aarch64,
                compat: Arch::Arm,
            }),
            other => Err(Error::Architecture(other)),
        }
    }
}

// What a filter returns (linux/seccomp.h).
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;
/// The kernel's limit on a filter's length (BPF_MAXINSNS).
const MAX_INSTRUCTIONS: usize = 4096;
/// x32 system calls are x86-64's with this bit set in their number.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const ENOSYS: u16 = 38;

// Offsets in struct seccomp_data: the system call's number, its architecture, its arguments.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
fn data_arg(index: u8, high: bool) -> u32 {
    16 + 8 * u32::from(index) + if high { 4 } else { 0 }
}

fn ret(action: Action) -> u32 {
    match action {
        // No one listens for a session's notifications: the kernel decides (see the crate's
        // documentation).
        Action::Allow | Action::Notify => RET_ALLOW,
        Action::Errno(n) => RET_ERRNO | u32::from(n),
        Action::Kill => RET_KILL_PROCESS,
        Action::Trap => RET_TRAP,
        Action::Log => RET_LOG,
    }
}

impl Policy {
    /// The filter for `host`: the architecture checked first (one the host does not run is
    /// killed, as libseccomp does), then the rules that apply to it in the order written (the
    /// first that matches decides), else the policy's default.
    pub fn compile(&self, host: Host) -> Result<Filter, Error> {
        let mut asm = Assembler::default();
        let (native, compat, bad_arch) = (asm.label(), asm.label(), asm.label());
        let (is_native, not_native, is_compat) = (asm.label(), asm.label(), asm.label());
        // The native block lies between here and the compat one, as long as its rules make
        // it: each architecture is reached by a `Goto`, which goes any distance.
        asm.push(Step::Load(DATA_ARCH));
        asm.push(Step::JumpIfEqual(host.native.audit_token(), is_native, not_native));
        asm.push(Step::Here(is_native));
        asm.push(Step::Goto(native));
        asm.push(Step::Here(not_native));
        asm.push(Step::JumpIfEqual(host.compat.audit_token(), is_compat, bad_arch));
        asm.push(Step::Here(is_compat));
        asm.push(Step::Goto(compat));
        asm.push(Step::Here(bad_arch));
        asm.push(Step::Return(RET_KILL_PROCESS));

        let mut resolved = std::collections::HashSet::new();
        for (arch, start) in [(host.native, native), (host.compat, compat)] {
            asm.push(Step::Here(start));
            if arch == Arch::X86_64 {
                let (x32, own) = (asm.label(), asm.label());
                asm.push(Step::Load(DATA_NR));
                asm.push(Step::JumpIfAtLeast(X32_SYSCALL_BIT, x32, own));
                asm.push(Step::Here(x32));
                asm.push(Step::Return(RET_ERRNO | u32::from(ENOSYS)));
                asm.push(Step::Here(own));
            }
            for rule in self.rules.iter().filter(|r| r.section.covers(arch, host)) {
                let Some(number) = arch.number(&rule.syscall) else {
                    continue;
                };
                resolved.insert(rule.syscall.as_str());
                // In a denylist, a notify rule is left out (the default allows what it
                // matches), so a later rule denying the same call still does.
                if rule.action == Action::Notify && self.mode == Mode::Denylist {
                    continue;
                }
                emit_rule(&mut asm, arch, number, rule);
            }
            asm.push(Step::Return(ret(self.default_action)));
        }
        let program = asm.finish()?;
        if program.len() > MAX_INSTRUCTIONS {
            return Err(Error::TooLong(program.len()));
        }
        let mut unknown: Vec<String> = self
            .rules
            .iter()
            .filter(|r| r.section.covers(host.native, host) || r.section.covers(host.compat, host))
            .filter(|r| !resolved.contains(r.syscall.as_str()))
            .map(|r| r.syscall.clone())
            .collect();
        unknown.sort();
        unknown.dedup();
        Ok(Filter { program, unknown })
    }
}

/// One rule: its system call's number, then each condition on the arguments; the action when
/// all hold, else on to the next rule.
fn emit_rule(asm: &mut Assembler, arch: Arch, number: u32, rule: &Rule) {
    let (matched, next, skip) = (asm.label(), asm.label(), asm.label());
    asm.push(Step::Load(DATA_NR));
    asm.push(Step::JumpIfEqual(number, matched, skip));
    asm.push(Step::Here(skip));
    asm.push(Step::Goto(next));
    asm.push(Step::Here(matched));
    for condition in &rule.conditions {
        let (pass, fail) = (asm.label(), asm.label());
        emit_condition(asm, arch.is_64_bit(), condition, pass, fail);
        asm.push(Step::Here(fail));
        asm.push(Step::Goto(next));
        asm.push(Step::Here(pass));
    }
    asm.push(Step::Return(ret(rule.action)));
    asm.push(Step::Here(next));
}

/// A condition on one argument, jumping to `pass` or `fail`. A 64-bit argument is compared in
/// two halves, the high one first; on a 32-bit architecture only the low half exists, and only
/// it is compared (as libseccomp does).
fn emit_condition(asm: &mut Assembler, wide: bool, condition: &Condition, pass: Label, fail: Label) {
    let value = condition.value;
    let halves = Halves {
        arg: condition.arg,
        wide,
        high: (value >> 32) as u32,
        low: value as u32,
    };
    match condition.compare {
        Compare::Equal => halves.equal(asm, None, pass, fail),
        Compare::NotEqual => halves.equal(asm, None, fail, pass),
        Compare::MaskedEqual(mask) => halves.equal(asm, Some(mask), pass, fail),
        Compare::Greater => halves.ordered(asm, Step::JumpIfGreater, pass, fail),
        Compare::GreaterOrEqual => halves.ordered(asm, Step::JumpIfAtLeast, pass, fail),
        // a < b is not a >= b; a <= b is not a > b.
        Compare::Less => halves.ordered(asm, Step::JumpIfAtLeast, fail, pass),
        Compare::LessOrEqual => halves.ordered(asm, Step::JumpIfGreater, fail, pass),
    }
}

/// A 64-bit value compared with an argument half by half.
struct Halves {
    arg: u8,
    wide: bool,
    high: u32,
    low: u32,
}

impl Halves {
    /// To `equal` if `argument & mask == value` (no mask: all bits), else to `differ`.
    fn equal(&self, asm: &mut Assembler, mask: Option<u64>, equal: Label, differ: Label) {
        if self.wide {
            let next = asm.label();
            asm.push(Step::Load(data_arg(self.arg, true)));
            if let Some(mask) = mask {
                asm.push(Step::And((mask >> 32) as u32));
            }
            asm.push(Step::JumpIfEqual(self.high, next, differ));
            asm.push(Step::Here(next));
        }
        asm.push(Step::Load(data_arg(self.arg, false)));
        if let Some(mask) = mask {
            asm.push(Step::And(mask as u32));
        }
        asm.push(Step::JumpIfEqual(self.low, equal, differ));
    }

    /// To `yes` if `test` (greater, or at least) holds of argument and value, else to `no`: a
    /// greater high half holds, a smaller one does not, equal ones leave it to the low halves.
    fn ordered(&self, asm: &mut Assembler, test: fn(u32, Label, Label) -> Step, yes: Label, no: Label) {
        if self.wide {
            let (not_greater, equal) = (asm.label(), asm.label());
            asm.push(Step::Load(data_arg(self.arg, true)));
            asm.push(Step::JumpIfGreater(self.high, yes, not_greater));
            asm.push(Step::Here(not_greater));
            asm.push(Step::JumpIfEqual(self.high, equal, no));
            asm.push(Step::Here(equal));
        }
        asm.push(Step::Load(data_arg(self.arg, false)));
        asm.push(test(self.low, yes, no));
    }
}

#[cfg(test)]
mod tests;

//! The policies Incus writes, parsed and compiled, and the filters run by a small classic-BPF
//! interpreter over system calls of every architecture (a kernel runs them in the integration
//! tests: tests/integration/tests/isolation.rs).

use super::*;
use bpf::{ALU_AND_K, JMP_JA, JMP_JEQ_K, JMP_JGE_K, JMP_JGT_K, LD_W_ABS, RET_K};

/// What Incus 6.0 writes for a privileged container (the default, as for Kapsule's).
const PRIVILEGED: &str = "2\ndenylist\n[all]\nreject_force_umount  # comment this to allow umount -f;  not recommended\n[all]\nkexec_load errno 38\nopen_by_handle_at errno 38\ninit_module errno 38\nfinit_module errno 38\ndelete_module errno 38\n";

/// And for an unprivileged one with mknod and setxattr interception.
const UNPRIVILEGED: &str = "2\ndenylist\n[all]\nreject_force_umount  # comment this to allow umount -f;  not recommended\n[all]\nkexec_load errno 38\nopen_by_handle_at errno 38\ninit_module errno 38\nfinit_module errno 38\ndelete_module errno 38\nseccomp errno 22 [1,2146435072,SCMP_CMP_MASKED_EQ,2146435072]\nseccomp errno 22 [1,8,SCMP_CMP_MASKED_EQ,8]\nmknod notify [1,8192,SCMP_CMP_MASKED_EQ,61440]\nmknod notify [1,24576,SCMP_CMP_MASKED_EQ,61440]\nmknodat notify [2,8192,SCMP_CMP_MASKED_EQ,61440]\nmknodat notify [2,24576,SCMP_CMP_MASKED_EQ,61440]\nsetxattr notify [3,1,SCMP_CMP_EQ]\n";

const X86_64: Host = Host {
    native: Arch::X86_64,
    compat: Arch::X86,
};
const AARCH64: Host = Host {
    native: Arch::Aarch64,
    compat: Arch::Arm,
};
const ALLOW: u32 = RET_ALLOW;
const fn errno(n: u32) -> u32 {
    RET_ERRNO | n
}

/// Runs `program` as the kernel would for one system call.
fn run(program: &[Instruction], arch: Arch, nr: u32, args: [u64; 6]) -> u32 {
    let mut data = Vec::new();
    data.extend(nr.to_le_bytes());
    data.extend(arch.audit_token().to_le_bytes());
    data.extend(0u64.to_le_bytes());
    for arg in args {
        data.extend(arg.to_le_bytes());
    }
    let (mut a, mut pc) = (0u32, 0usize);
    loop {
        let i = program[pc];
        pc += 1;
        let jump = |taken: bool| usize::from(if taken { i.jt } else { i.jf });
        match i.code {
            LD_W_ABS => {
                let at = i.k as usize;
                a = u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
            }
            ALU_AND_K => a &= i.k,
            JMP_JA => pc += i.k as usize,
            JMP_JEQ_K => pc += jump(a == i.k),
            JMP_JGT_K => pc += jump(a > i.k),
            JMP_JGE_K => pc += jump(a >= i.k),
            RET_K => return i.k,
            other => panic!("unknown instruction {other:#x}"),
        }
    }
}

fn number(arch: Arch, name: &str) -> u32 {
    arch.number(name).unwrap_or_else(|| panic!("{name} on {arch:?}"))
}

#[test]
fn the_privileged_policy_is_read_as_lxc_reads_it() {
    let policy = Policy::parse(PRIVILEGED).unwrap();
    assert_eq!(policy.mode, Mode::Denylist);
    assert_eq!(policy.default_action, Action::Allow);
    assert_eq!(
        policy.rules[0],
        Rule {
            section: Section::All,
            syscall: "umount2".into(),
            action: Action::Errno(13),
            conditions: vec![Condition {
                arg: 1,
                compare: Compare::MaskedEqual(1),
                value: 1
            }],
        }
    );
    let names: Vec<_> = policy.rules.iter().map(|r| (r.syscall.as_str(), r.action)).collect();
    assert_eq!(
        names[1..],
        [
            ("kexec_load", Action::Errno(38)),
            ("open_by_handle_at", Action::Errno(38)),
            ("init_module", Action::Errno(38)),
            ("finit_module", Action::Errno(38)),
            ("delete_module", Action::Errno(38)),
        ]
    );
}

#[test]
fn a_denied_call_is_refused_on_the_native_and_the_compat_architecture() {
    for host in [X86_64, AARCH64] {
        let filter = Policy::parse(PRIVILEGED).unwrap().compile(host).unwrap();
        assert_eq!(filter.unknown, Vec::<String>::new());
        for arch in [host.native, host.compat] {
            for name in [
                "kexec_load",
                "open_by_handle_at",
                "init_module",
                "finit_module",
                "delete_module",
            ] {
                assert_eq!(
                    run(&filter.program, arch, number(arch, name), [0; 6]),
                    errno(38),
                    "{name} on {arch:?}"
                );
            }
            for name in ["read", "write", "mount", "openat", "clone", "seccomp"] {
                assert_eq!(
                    run(&filter.program, arch, number(arch, name), [0; 6]),
                    ALLOW,
                    "{name} on {arch:?}"
                );
            }
            // umount2: only with MNT_FORCE among its flags.
            let umount2 = number(arch, "umount2");
            assert_eq!(run(&filter.program, arch, umount2, [0, 1, 0, 0, 0, 0]), errno(13));
            assert_eq!(run(&filter.program, arch, umount2, [0, 1 | 2, 0, 0, 0, 0]), errno(13));
            assert_eq!(run(&filter.program, arch, umount2, [0, 2, 0, 0, 0, 0]), ALLOW);
            assert_eq!(run(&filter.program, arch, umount2, [0, 0, 0, 0, 0, 0]), ALLOW);
        }
    }
}

#[test]
fn a_foreign_architecture_is_killed_and_x32_refused() {
    let filter = Policy::parse(PRIVILEGED).unwrap().compile(X86_64).unwrap();
    assert_eq!(run(&filter.program, Arch::Aarch64, 63, [0; 6]), RET_KILL_PROCESS);
    let read = number(Arch::X86_64, "read");
    assert_eq!(
        run(&filter.program, Arch::X32, X32_SYSCALL_BIT | read, [0; 6]),
        errno(38)
    );
    // x86's numbers mean other calls on x86-64: 283 is kexec_load on x86, timerfd_create here.
    assert_eq!(run(&filter.program, Arch::X86_64, 283, [0; 6]), ALLOW);
    assert_eq!(run(&filter.program, Arch::X86, 283, [0; 6]), errno(38));
}

#[test]
fn interception_is_left_to_the_kernel_and_its_guards_are_kept() {
    let filter = Policy::parse(UNPRIVILEGED).unwrap().compile(X86_64).unwrap();
    let program = &filter.program;
    let nr = |name| number(Arch::X86_64, name);
    // seccomp(SECCOMP_SET_MODE_FILTER, flags, ...): a new listener or a tracer is refused.
    assert_eq!(run(program, Arch::X86_64, nr("seccomp"), [1, 8, 0, 0, 0, 0]), errno(22));
    assert_eq!(
        run(program, Arch::X86_64, nr("seccomp"), [1, 0x7ff0_0000, 0, 0, 0, 0]),
        errno(22)
    );
    assert_eq!(run(program, Arch::X86_64, nr("seccomp"), [1, 0, 0, 0, 0, 0]), ALLOW);
    // A character device's mknod goes to the kernel, which decides.
    assert_eq!(run(program, Arch::X86_64, nr("mknod"), [0, 0o20644, 0, 0, 0, 0]), ALLOW);
    assert_eq!(run(program, Arch::X86_64, nr("kexec_load"), [0; 6]), errno(38));
    // A call intercepted and also denied (a user's `security.syscalls.deny`) stays denied.
    let denied = format!("{UNPRIVILEGED}mknod errno 1\n");
    let filter = Policy::parse(&denied).unwrap().compile(X86_64).unwrap();
    assert_eq!(
        run(&filter.program, Arch::X86_64, nr("mknod"), [0, 0o20644, 0, 0, 0, 0]),
        errno(1)
    );
    // In an allowlist, an intercepted call is allowed (to the kernel), not refused.
    let allowlist = "2\nallowlist errno 1\n[all]\nread\nmknod notify [1,8192,SCMP_CMP_MASKED_EQ,61440]\n";
    let filter = Policy::parse(allowlist).unwrap().compile(X86_64).unwrap();
    assert_eq!(
        run(&filter.program, Arch::X86_64, nr("mknod"), [0, 0o20644, 0, 0, 0, 0]),
        ALLOW
    );
    assert_eq!(
        run(&filter.program, Arch::X86_64, nr("mknod"), [0, 0o10644, 0, 0, 0, 0]),
        errno(1)
    );
}

#[test]
fn comparisons_use_all_64_bits_where_the_architecture_has_them() {
    let policy = "2\nallowlist errno 1\n[all]\nread\nwrite allow [0,4294967296,SCMP_CMP_EQ]\nclose allow [0,4294967296,SCMP_CMP_NE]\ndup allow [0,4294967297,SCMP_CMP_LT]\ndup2 allow [0,4294967297,SCMP_CMP_LE]\nfsync allow [0,4294967297,SCMP_CMP_GT]\nfdatasync allow [0,4294967297,SCMP_CMP_GE]\nlseek allow [0,0x100000000,&=,0xff00000000] [1,5,==]\n";
    let policy = Policy::parse(policy).unwrap();
    assert_eq!(policy.mode, Mode::Allowlist);
    assert_eq!(policy.default_action, Action::Errno(1));
    let filter = policy.compile(X86_64).unwrap();
    let call = |name, args: [u64; 6]| run(&filter.program, Arch::X86_64, number(Arch::X86_64, name), args);
    let first = |value: u64| [value, 0, 0, 0, 0, 0];
    let refused = errno(1);
    assert_eq!(call("read", first(7)), ALLOW);
    assert_eq!(call("getpid", first(0)), refused);
    assert_eq!(call("write", first(1 << 32)), ALLOW);
    assert_eq!(call("write", first(0)), refused, "only the high half is set");
    assert_eq!(call("close", first(1 << 32)), refused);
    assert_eq!(call("close", first(1)), ALLOW);
    let v = (1u64 << 32) | 1;
    for (name, holds) in [
        ("dup", [true, false, false]),
        ("dup2", [true, true, false]),
        ("fsync", [false, false, true]),
        ("fdatasync", [false, true, true]),
    ] {
        // Below, at and above the value, where the high halves differ and where they are equal.
        for (arg, expected) in [v - 1, v, v + 1].into_iter().zip(holds) {
            assert_eq!(call(name, first(arg)) == ALLOW, expected, "{name}({arg:#x})");
        }
        let (low_only, high_more) = (first(u64::from(u32::MAX)), first(2 << 32));
        assert_eq!(
            call(name, low_only) == ALLOW,
            holds[0],
            "{name}: a large low half, smaller high"
        );
        assert_eq!(call(name, high_more) == ALLOW, holds[2], "{name}: a larger high half");
    }
    // Both conditions of a rule must hold.
    assert_eq!(call("lseek", [0x1_0000_0000, 5, 0, 0, 0, 0]), ALLOW);
    assert_eq!(
        call("lseek", [0x1_0000_00ff, 5, 0, 0, 0, 0]),
        ALLOW,
        "the mask hides the low half"
    );
    assert_eq!(call("lseek", [0x1_0000_0000, 6, 0, 0, 0, 0]), refused);
    assert_eq!(call("lseek", [0x2_0000_0000, 5, 0, 0, 0, 0]), refused);
    // On the 32-bit architecture only the low half exists.
    let x86 = |name, args| run(&filter.program, Arch::X86, number(Arch::X86, name), args);
    assert_eq!(x86("write", first(0)), ALLOW);
}

#[test]
fn sections_choose_the_architecture_and_unknown_names_are_reported() {
    let policy = "2\ndenylist\n[x86]\nchown errno 5\n[x86_64]\nfchown errno 6\n[mips]\nchmod errno 7\n[all]\nno_such_call errno 8\n";
    let filter = Policy::parse(policy).unwrap().compile(X86_64).unwrap();
    let call = |arch, name| run(&filter.program, arch, number(arch, name), [0; 6]);
    assert_eq!(call(Arch::X86, "chown"), errno(5));
    assert_eq!(call(Arch::X86_64, "chown"), ALLOW);
    assert_eq!(call(Arch::X86_64, "fchown"), errno(6));
    assert_eq!(call(Arch::X86, "fchown"), ALLOW);
    assert_eq!(call(Arch::X86_64, "chmod"), ALLOW);
    assert_eq!(filter.unknown, ["no_such_call"]);
    // A denylist rule without an action kills.
    let filter = Policy::parse("2\nblacklist\nptrace\n")
        .unwrap()
        .compile(X86_64)
        .unwrap();
    assert_eq!(
        run(&filter.program, Arch::X86_64, number(Arch::X86_64, "ptrace"), [0; 6]),
        RET_KILL_PROCESS
    );
}

#[test]
fn malformed_policies_are_refused_with_their_line() {
    let cases = [
        ("", "line 1: the policy is empty"),
        (
            "1\nkexec_load\n",
            "seccomp policy version 1 is not supported (only 2 is)",
        ),
        ("2\n", "line 2: no mode (denylist or allowlist) after the version"),
        (
            "2\ngreylist\n",
            "line 2: expected denylist or allowlist, found \"greylist\"",
        ),
        ("2\ndenylist maybe\n", "line 2: unknown default action \"maybe\""),
        (
            "2\ndenylist\n\n# a comment\nread errno\n",
            "line 5: unknown action \"errno\"",
        ),
        (
            "2\ndenylist\nread errno 1 [6,0,==]\n",
            "line 3: malformed condition [6,0,==]",
        ),
        (
            "2\ndenylist\nread errno 1 [0,0,~=]\n",
            "line 3: unknown comparison in [0,0,~=]",
        ),
        (
            "2\ndenylist\nread errno 1 [0,0,&=]\n",
            "line 3: unknown comparison in [0,0,&=]",
        ),
        (
            "2\ndenylist\nread errno 1 [0,0,==\n",
            "line 3: malformed condition \"[0,0,==\"",
        ),
        ("2\ndenylist\nre/ad\n", "line 3: \"re/ad\" is not a system call's name"),
    ];
    for (text, expected) in cases {
        assert_eq!(Policy::parse(text).unwrap_err().to_string(), expected, "{text:?}");
    }
}

#[test]
fn a_long_deny_list_reaches_both_architectures() {
    // A hundred rules make the native block far longer than a conditional jump reaches.
    let names: Vec<&str> = syscalls::x86_64::Sysno::iter()
        .map(|call| call.name())
        .filter(|name| Arch::X86.number(name).is_some())
        .take(100)
        .collect();
    assert_eq!(names.len(), 100);
    let text = format!(
        "2\ndenylist\n{}",
        names.iter().map(|n| format!("{n} errno 1\n")).collect::<String>()
    );
    let filter = Policy::parse(&text).unwrap().compile(X86_64).unwrap();
    assert!(filter.program.len() > 2 * 255, "{} instructions", filter.program.len());
    for arch in [Arch::X86_64, Arch::X86] {
        for name in [names[0], names[99]] {
            assert_eq!(
                run(&filter.program, arch, number(arch, name), [0; 6]),
                errno(1),
                "{name} on {arch:?}"
            );
        }
    }
}

#[test]
fn a_policy_too_long_for_the_kernel_is_refused() {
    let mut text = String::from("2\ndenylist\n");
    for _ in 0..1000 {
        text.push_str("read errno 1 [0,1,==]\n");
    }
    let error = Policy::parse(&text).unwrap().compile(X86_64).unwrap_err();
    assert!(matches!(error, Error::TooLong(n) if n > MAX_INSTRUCTIONS), "{error}");
}

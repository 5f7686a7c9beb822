//! What the NVIDIA mount hook decides, apart from doing it: from the hook's arguments and
//! environment and what exists on the host, either nothing (not a mount hook, no NVIDIA here), an
//! error (LXC gave no usable rootfs), or the exact `nvidia-container-cli` command to exec.
//!
//! LXC runs the hook in the container's fresh mount namespace after the rootfs is mounted and
//! before `pivot_root`, so host paths (`/dev/nvidia0`, the tools) are still the host's. With
//! `lxc.hook.version=1` (what Incus sets) the hook type is `LXC_HOOK_TYPE`; with version 0 (or no
//! version) it is the third argument.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The device whose absence means "no NVIDIA GPU here, nothing to do".
pub const NVIDIA_DEVICE: &str = "/dev/nvidia0";

/// Searched after the hook's own PATH, so the tools are found even under a minimal PATH.
const FALLBACK_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// What the hook was given.
#[derive(Debug, Default, Clone)]
pub struct Input {
    /// The arguments after the program name.
    pub args: Vec<OsString>,
    pub hook_version: Option<String>,
    pub hook_type: Option<String>,
    pub rootfs_mount: Option<OsString>,
    pub path: Option<OsString>,
}

impl Input {
    /// From this process's arguments and environment.
    pub fn from_process() -> Input {
        Input {
            args: std::env::args_os().skip(1).collect(),
            hook_version: std::env::var("LXC_HOOK_VERSION").ok(),
            hook_type: std::env::var("LXC_HOOK_TYPE").ok(),
            rootfs_mount: std::env::var_os("LXC_ROOTFS_MOUNT"),
            path: std::env::var_os("PATH"),
        }
    }
}

/// What to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Exit 0 without a word: not a mount hook, or no NVIDIA driver or tool on this host.
    Nothing,
    /// Exit non-zero with this message (LXC then does not start the container).
    Fail(String),
    /// Replace this process with `program args...`.
    Exec { program: PathBuf, args: Vec<OsString> },
}

/// Decides, looking at the host through `exists` (so tests need no real device).
pub fn decide(input: &Input, exists: impl Fn(&Path) -> bool) -> Action {
    let hook_type = match input.hook_version.as_deref() {
        None | Some("0") => input.args.get(2).and_then(|a| a.to_str()).map(str::to_owned),
        Some("1") => input.hook_type.clone(),
        Some(_) => None,
    };
    if hook_type.as_deref() != Some("mount") {
        return Action::Nothing;
    }
    let search: Vec<PathBuf> = input
        .path
        .iter()
        .flat_map(std::env::split_paths)
        .chain(std::env::split_paths(FALLBACK_PATH))
        .filter(|dir| dir.is_absolute())
        .collect();
    let find = |name: &str| search.iter().map(|dir| dir.join(name)).find(|p| exists(p));
    let Some(cli) = find("nvidia-container-cli") else {
        return Action::Nothing;
    };
    if !exists(Path::new(NVIDIA_DEVICE)) {
        return Action::Nothing;
    }
    let rootfs = match &input.rootfs_mount {
        None => return Action::Fail("LXC_ROOTFS_MOUNT is not set; is this running as an LXC hook?".into()),
        Some(r) if r.is_empty() => return Action::Fail("LXC_ROOTFS_MOUNT is empty".into()),
        Some(r) if !Path::new(r).is_absolute() || Path::new(r) == Path::new("/") => {
            return Action::Fail(format!(
                "LXC_ROOTFS_MOUNT must be an absolute path other than /, not {}",
                Path::new(r).display()
            ));
        }
        Some(r) => r.clone(),
    };
    let mut args: Vec<OsString> = [
        "configure",
        // Privileged containers have no device cgroup to set up,
        "--no-cgroups",
        // and Incus's gpu device already provides the /dev/nvidia* nodes.
        "--no-devbind",
        "--device=all",
        "--compute",
        "--utility",
        "--graphics",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    if let Some(ldconfig) = find("ldconfig.real").or_else(|| find("ldconfig")) {
        // `@`: the host's ldconfig, run on the container's library paths.
        let mut flag = OsString::from("--ldconfig=@");
        flag.push(ldconfig.as_os_str());
        args.push(flag);
    }
    args.push(rootfs);
    Action::Exec { program: cli, args }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount_hook_v1() -> Input {
        Input {
            args: vec![],
            hook_version: Some("1".into()),
            hook_type: Some("mount".into()),
            rootfs_mount: Some("/usr/lib/x86_64-linux-gnu/lxc/rootfs".into()),
            path: Some("/opt/nv/bin:/usr/bin".into()),
        }
    }

    fn host(paths: &'static [&'static str]) -> impl Fn(&Path) -> bool {
        move |p: &Path| paths.iter().any(|x| Path::new(x) == p)
    }

    const NVIDIA_HOST: &[&str] = &["/opt/nv/bin/nvidia-container-cli", "/dev/nvidia0", "/sbin/ldconfig"];

    #[test]
    fn a_mount_hook_on_an_nvidia_host_execs_the_cli_with_the_exact_arguments() {
        let action = decide(&mount_hook_v1(), host(NVIDIA_HOST));
        let expected: Vec<OsString> = [
            "configure",
            "--no-cgroups",
            "--no-devbind",
            "--device=all",
            "--compute",
            "--utility",
            "--graphics",
            "--ldconfig=@/sbin/ldconfig",
            "/usr/lib/x86_64-linux-gnu/lxc/rootfs",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        assert_eq!(
            action,
            Action::Exec {
                program: "/opt/nv/bin/nvidia-container-cli".into(),
                args: expected
            }
        );
        // ldconfig.real (Debian's and Ubuntu's real binary) wins; none at all leaves the flag out.
        let with_real = decide(
            &mount_hook_v1(),
            host(&[
                "/opt/nv/bin/nvidia-container-cli",
                "/dev/nvidia0",
                "/sbin/ldconfig",
                "/usr/sbin/ldconfig.real",
            ]),
        );
        let Action::Exec { args, .. } = with_real else { panic!() };
        assert!(args.contains(&OsString::from("--ldconfig=@/usr/sbin/ldconfig.real")));
        let without = decide(
            &mount_hook_v1(),
            host(&["/opt/nv/bin/nvidia-container-cli", "/dev/nvidia0"]),
        );
        let Action::Exec { args, .. } = without else { panic!() };
        assert!(!args.iter().any(|a| a.to_string_lossy().starts_with("--ldconfig")));
    }

    #[test]
    fn the_hook_type_comes_from_the_version_the_hook_speaks() {
        // Version 0 (or none): the third argument.
        for version in [None, Some("0".to_owned())] {
            let input = Input {
                args: vec!["c1".into(), "lxc".into(), "mount".into()],
                hook_version: version.clone(),
                hook_type: None,
                ..mount_hook_v1()
            };
            assert!(
                matches!(decide(&input, host(NVIDIA_HOST)), Action::Exec { .. }),
                "{version:?}"
            );
            let start = Input {
                args: vec!["c1".into(), "lxc".into(), "start".into()],
                ..input
            };
            assert_eq!(decide(&start, host(NVIDIA_HOST)), Action::Nothing);
        }
        // Version 1: LXC_HOOK_TYPE; arguments do not count.
        let pre_start = Input {
            hook_type: Some("pre-start".into()),
            args: vec!["c1".into(), "lxc".into(), "mount".into()],
            ..mount_hook_v1()
        };
        assert_eq!(decide(&pre_start, host(NVIDIA_HOST)), Action::Nothing);
        let no_type = Input {
            hook_type: None,
            ..mount_hook_v1()
        };
        assert_eq!(decide(&no_type, host(NVIDIA_HOST)), Action::Nothing);
        // A version it does not know: nothing rather than a guess.
        let future = Input {
            hook_version: Some("2".into()),
            ..mount_hook_v1()
        };
        assert_eq!(decide(&future, host(NVIDIA_HOST)), Action::Nothing);
        // Too few arguments for version 0.
        let short = Input {
            hook_version: Some("0".into()),
            args: vec!["c1".into()],
            ..mount_hook_v1()
        };
        assert_eq!(decide(&short, host(NVIDIA_HOST)), Action::Nothing);
    }

    #[test]
    fn no_tool_or_no_device_means_nothing_to_do() {
        assert_eq!(decide(&mount_hook_v1(), host(&["/dev/nvidia0"])), Action::Nothing);
        assert_eq!(
            decide(&mount_hook_v1(), host(&["/opt/nv/bin/nvidia-container-cli"])),
            Action::Nothing
        );
        // The fallback PATH is searched when the hook's own has no tool; relative entries never.
        let input = Input {
            path: Some("relative/bin:".into()),
            ..mount_hook_v1()
        };
        assert!(matches!(
            decide(&input, host(&["/usr/bin/nvidia-container-cli", "/dev/nvidia0", "relative/bin/nvidia-container-cli"])),
            Action::Exec { program, .. } if program == Path::new("/usr/bin/nvidia-container-cli")
        ));
        let none = Input {
            path: None,
            ..mount_hook_v1()
        };
        assert!(matches!(
            decide(&none, host(&["/bin/nvidia-container-cli", "/dev/nvidia0"])),
            Action::Exec { .. }
        ));
    }

    #[test]
    fn a_missing_or_bad_rootfs_is_a_clear_error() {
        for (rootfs, says) in [
            (None, "not set"),
            (Some(""), "empty"),
            (Some("relative/rootfs"), "absolute"),
            (Some("/"), "absolute path other than /"),
        ] {
            let input = Input {
                rootfs_mount: rootfs.map(OsString::from),
                ..mount_hook_v1()
            };
            match decide(&input, host(NVIDIA_HOST)) {
                Action::Fail(message) => assert!(message.contains(says), "{rootfs:?}: {message}"),
                other => panic!("{rootfs:?}: {other:?}"),
            }
        }
        // Without NVIDIA on the host a broken rootfs does not matter: nothing is done.
        let input = Input {
            rootfs_mount: None,
            ..mount_hook_v1()
        };
        assert_eq!(decide(&input, host(&[])), Action::Nothing);
    }
}

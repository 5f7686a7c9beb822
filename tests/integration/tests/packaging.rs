//! The sysext as the image pipeline gets it: `cargo xtask sysext` builds the tree and the image;
//! the tree holds only `usr/`, every file the install manifest promises with its mode, the
//! extension-release keys systemd-sysext checks, units that `systemd-analyze verify` accepts in
//! that tree, data files xmllint accepts; the image lists the same files.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every path below `root`, relative, directories included.
fn walk(root: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            found.insert(path.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            if path.is_dir() && !path.is_symlink() {
                pending.push(path);
            }
        }
    }
    found
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

#[test]
fn the_sysext_holds_usr_only_and_everything_it_promises() {
    let root = workspace_root();
    let out = tempfile::tempdir().unwrap();
    run(Command::new(env!("CARGO"))
        .args(["xtask", "sysext"])
        .arg(out.path())
        .current_dir(&root));
    let tree = out.path().join("kapsule");
    let top: Vec<String> = std::fs::read_dir(&tree)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(top, ["usr"], "a sysext merges only usr/ (and opt/)");

    let files = walk(&tree);
    for (path, mode) in [
        ("usr/bin/kapsule", 0o755),
        ("usr/bin/kapsule-init", 0o755),
        ("usr/lib/kapsule/kapsule-daemon", 0o755),
        ("usr/lib/kapsule/kapsule-host-exec", 0o755),
        ("usr/lib/kapsule/kapsule.conf", 0o644),
        ("usr/lib/kapsule/kapsule-mounts", 0o755),
        ("usr/lib/kapsule/kapsule-nsenter", 0o755),
        ("usr/lib/kapsule/kapsule-nvidia-hook", 0o755),
        ("usr/lib/systemd/system/kapsule-daemon.service", 0o644),
        ("usr/lib/systemd/system/kapsule-daemon.socket", 0o644),
        ("usr/lib/systemd/system/kapsule-init.service", 0o644),
        ("usr/lib/systemd/system/kapsule-host-sync.path", 0o644),
        ("usr/lib/systemd/system/incus.service.d/50-kapsule-subids.conf", 0o644),
        ("usr/lib/modules-load.d/kapsule.conf", 0o644),
        ("usr/lib/tmpfiles.d/kapsule.conf", 0o644),
        ("usr/share/dbus-1/system.d/org.kde.kapsule.conf", 0o644),
        ("usr/share/dbus-1/system-services/org.kde.kapsule.service", 0o644),
        ("usr/share/dbus-1/interfaces/org.kde.kapsule.Manager.xml", 0o644),
        ("usr/share/dbus-1/interfaces/org.kde.kapsule.Operation.xml", 0o644),
        ("usr/share/polkit-1/actions/org.kde.kapsule.policy", 0o644),
        ("usr/share/polkit-1/rules.d/50-org.kde.kapsule.rules", 0o644),
        ("usr/share/man/man1/kapsule.1", 0o644),
        ("usr/share/bash-completion/completions/kapsule", 0o644),
        ("usr/share/zsh/site-functions/_kapsule", 0o644),
        ("usr/share/fish/vendor_completions.d/kapsule.fish", 0o644),
        ("usr/lib/extension-release.d/extension-release.kapsule", 0o644),
    ] {
        let meta = std::fs::metadata(tree.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(meta.permissions().mode() & 0o7777, mode, "{path}");
    }
    // The program placed in containers runs on any image: no interpreter, no shared library.
    let file = Command::new("file")
        .arg(tree.join("usr/lib/kapsule/kapsule-host-exec"))
        .output()
        .expect("file(1) is installed (tests/env/up.sh)");
    let file = String::from_utf8_lossy(&file.stdout);
    assert!(
        file.contains("statically linked") || file.contains("static-pie linked"),
        "{file}"
    );
    // The short name resolves inside the image, and so do the links that start the socket, the
    // host-sync path and the first-boot unit with no enabling.
    for (link, target) in [
        ("usr/bin/kap", "kapsule"),
        // The original daemon's containers name its hook script in their raw.lxc.
        ("usr/lib/kapsule/nvidia-container-hook.sh", "kapsule-nvidia-hook"),
        (
            "usr/lib/systemd/system/sockets.target.wants/kapsule-daemon.socket",
            "../kapsule-daemon.socket",
        ),
        (
            "usr/lib/systemd/system/multi-user.target.wants/kapsule-init.service",
            "../kapsule-init.service",
        ),
        (
            "usr/lib/systemd/system/paths.target.wants/kapsule-host-sync.path",
            "../kapsule-host-sync.path",
        ),
    ] {
        assert_eq!(
            std::fs::read_link(tree.join(link)).unwrap(),
            Path::new(target),
            "{link}"
        );
        assert!(tree.join(link).exists(), "{link} resolves");
    }

    // What systemd-sysext checks: any OS, this architecture, the system scope, and the reload.
    let release = std::fs::read_to_string(tree.join("usr/lib/extension-release.d/extension-release.kapsule")).unwrap();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "x86-64",
        "aarch64" => "arm64",
        other => other,
    };
    let keys: BTreeSet<&str> = release.lines().collect();
    let expected: BTreeSet<String> = [
        "ID=_any".to_owned(),
        format!("ARCHITECTURE={arch}"),
        "SYSEXT_SCOPE=system".to_owned(),
        "EXTENSION_RELOAD_MANAGER=1".to_owned(),
    ]
    .into();
    assert_eq!(keys, expected.iter().map(String::as_str).collect(), "{release}");

    // The units as systemd reads them once merged: this machine's units (the targets they name)
    // with the image's tree on top, so ExecStart= is checked against the image's binaries.
    let merged = tempfile::tempdir().unwrap();
    let system_units = merged.path().join("usr/lib/systemd");
    std::fs::create_dir_all(&system_units).unwrap();
    run(Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system"])
        .arg(&system_units));
    run(Command::new("cp").arg("-a").arg(tree.join("usr")).arg(merged.path()));
    let units: Vec<PathBuf> = [
        "kapsule-daemon.service",
        "kapsule-daemon.socket",
        "kapsule-init.service",
        "kapsule-host-sync.path",
    ]
    .iter()
    .map(|u| merged.path().join("usr/lib/systemd/system").join(u))
    .collect();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", merged.path().display()))
        .args(&units)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(verify.status.success(), "systemd-analyze verify: {said}");
    // Unknown keys and the like are only warnings: none is allowed either.
    let about_ours: Vec<&str> = said.lines().filter(|l| l.contains("kapsule")).collect();
    assert!(
        about_ours.is_empty(),
        "systemd-analyze has something to say: {about_ours:?}"
    );
    for xml in [
        "usr/share/dbus-1/system.d/org.kde.kapsule.conf",
        "usr/share/polkit-1/actions/org.kde.kapsule.policy",
        "usr/share/dbus-1/interfaces/org.kde.kapsule.Manager.xml",
    ] {
        run(Command::new("xmllint").arg("--noout").arg(tree.join(xml)));
    }

    // The image holds exactly the tree.
    let image = out.path().join("kapsule.raw");
    let listing = run(Command::new("unsquashfs").args(["-l", "-d", ""]).arg(&image));
    let in_image: BTreeSet<String> = listing
        .lines()
        .filter_map(|l| l.strip_prefix('/'))
        .map(str::to_owned)
        .collect();
    assert_eq!(in_image, files, "the image and the tree differ");
}

/// The Arch Linux image (images/archlinux) needs mkosi >= 24 and pacman, which this machine may
/// lack: its build then says exactly what is missing and builds nothing, and says it is ready
/// where all is there. Its mkosi.conf gives a reason for every setting.
#[test]
fn the_arch_image_says_what_its_build_needs() {
    let root = workspace_root();
    let dir = root.join("images/archlinux");
    let on_path = |program: &str| {
        Command::new("sh")
            .args(["-c", "command -v \"$1\" >/dev/null", "sh", program])
            .status()
            .unwrap()
            .success()
    };
    let mkosi_new_enough = on_path("mkosi")
        && Command::new("mkosi")
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                let text = String::from_utf8_lossy(&o.stdout).into_owned();
                let digits: String = text
                    .chars()
                    .skip_while(|c| !c.is_ascii_digit())
                    .take_while(char::is_ascii_digit)
                    .collect();
                digits.parse::<u32>().ok()
            })
            .is_some_and(|v| v >= 24);
    let expected: Vec<&str> = [
        (!mkosi_new_enough, "mkosi >= 24"),
        (!on_path("pacman"), "pacman ("),
        (!on_path("pacman-key"), "pacman-key"),
        (!on_path("mksquashfs"), "mksquashfs"),
    ]
    .into_iter()
    .filter_map(|(missing, what)| missing.then_some(what))
    .collect();
    let out = Command::new("bash")
        .arg(dir.join("build.sh"))
        .arg("--check")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if expected.is_empty() {
        assert!(out.status.success(), "{stderr}");
    } else {
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        let listed: Vec<&str> = stderr.lines().filter(|l| l.starts_with("  - ")).collect();
        assert_eq!(listed.len(), expected.len(), "{stderr}");
        for (line, what) in listed.iter().zip(&expected) {
            assert!(line.contains(what), "{line} should name {what}");
        }
        // Asked to build, it refuses the same way and leaves nothing.
        let target = tempfile::tempdir().unwrap();
        let out = Command::new("bash")
            .arg(dir.join("build.sh"))
            .arg(target.path().join("out"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(!target.path().join("out").exists());
    }

    // Every setting of mkosi.conf has its reason in a comment right above it.
    let conf = std::fs::read_to_string(dir.join("mkosi.conf")).unwrap();
    let lines: Vec<&str> = conf.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.contains('=') && !line.starts_with('#') {
            assert!(
                i > 0 && lines[i - 1].starts_with('#'),
                "mkosi.conf line {}: `{line}` has no reason above it",
                i + 1
            );
        }
    }
    for section in ["[Distribution]", "[Output]", "[Content]"] {
        assert!(lines.contains(&section), "{section}");
    }
}

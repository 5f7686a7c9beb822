//! The NVIDIA mount hook with a fake `nvidia-container-cli` (there is no GPU here): the binary
//! itself in a throwaway mount namespace with a fake `/dev/nvidia0`, and run by a real LXC start
//! of a container created with `nvidia_drivers`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kapsule_integration_tests::{
    DaemonTest, InstanceGuard, RemoveOnDrop, daemon_test, options, unique_name, workspace_binary,
};
use zbus::Variant;

/// A fake `nvidia-container-cli` that writes its arguments, one per line, and then the rootfs LXC
/// announced, to `record`.
fn fake_cli(path: &Path, record: &Path) {
    std::fs::write(
        path,
        format!(
            "#!/bin/sh\n{{ printf '%s\\n' \"$@\"; echo \"env:$LXC_ROOTFS_MOUNT\"; }} > {}\n",
            record.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Runs the hook in a new mount namespace whose /dev is a tmpfs (with a fake NVIDIA device node
/// when `device`), with exactly `env`. Returns the exit code and stderr.
fn run_hook(device: bool, env: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let hook = workspace_binary("kapsule-nvidia-hook");
    let mut script = String::from("mount -t tmpfs tmpfs /dev && ");
    if device {
        script.push_str("mknod /dev/nvidia0 c 195 0 && ");
    }
    script.push_str("exec env -i \"$@\"");
    let mut command = Command::new("unshare");
    command.args(["--mount", "--propagation", "private", "sh", "-c", &script, "sh"]);
    for (k, v) in env {
        command.arg(format!("{k}={v}"));
    }
    command.arg(&hook).args(args);
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tier1_the_hook_in_a_throwaway_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let record = dir.path().join("record");
    fake_cli(&bin.join("nvidia-container-cli"), &record);
    // A fake ldconfig too, so the expected --ldconfig path does not depend on the machine.
    std::fs::write(bin.join("ldconfig"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(bin.join("ldconfig"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = bin.to_str().unwrap();
    let rootfs = "/usr/lib/x86_64-linux-gnu/lxc/rootfs";
    let mount_v1 = [
        ("PATH", path),
        ("LXC_HOOK_VERSION", "1"),
        ("LXC_HOOK_TYPE", "mount"),
        ("LXC_ROOTFS_MOUNT", rootfs),
    ];

    assert_eq!(run_hook(true, &mount_v1, &[]), (0, String::new()));
    let expected = format!(
        "configure\n--no-cgroups\n--no-devbind\n--device=all\n--compute\n--utility\n--graphics\n\
         --ldconfig=@{path}/ldconfig\n{rootfs}\nenv:{rootfs}\n"
    );
    assert_eq!(std::fs::read_to_string(&record).unwrap(), expected);

    // Version 0: the type is the third argument.
    std::fs::remove_file(&record).unwrap();
    let mount_v0 = [("PATH", path), ("LXC_HOOK_VERSION", "0"), ("LXC_ROOTFS_MOUNT", rootfs)];
    assert_eq!(run_hook(true, &mount_v0, &["c1", "lxc", "mount"]).0, 0);
    assert_eq!(std::fs::read_to_string(&record).unwrap(), expected);

    // Nothing to do: another hook type, no device, no tool. Silent, exit 0, no call.
    std::fs::remove_file(&record).unwrap();
    assert_eq!(run_hook(true, &mount_v0, &["c1", "lxc", "start"]), (0, String::new()));
    assert_eq!(run_hook(false, &mount_v1, &[]), (0, String::new()));
    let no_tool = [
        ("PATH", "/nonexistent"),
        ("LXC_HOOK_VERSION", "1"),
        ("LXC_HOOK_TYPE", "mount"),
        ("LXC_ROOTFS_MOUNT", rootfs),
    ];
    // (Unless the machine itself has the tool in /usr/bin and friends; this one has none.)
    assert!(!Path::new("/usr/bin/nvidia-container-cli").exists());
    assert_eq!(run_hook(true, &no_tool, &[]), (0, String::new()));
    assert!(!record.exists(), "the tool was never called");

    // No rootfs from LXC: a clear error, no call.
    let (code, stderr) = run_hook(
        true,
        &[("PATH", path), ("LXC_HOOK_VERSION", "1"), ("LXC_HOOK_TYPE", "mount")],
        &[],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("LXC_ROOTFS_MOUNT is not set"), "{stderr}");
    assert!(!record.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_lxc_start_runs_the_hook() {
    let test: &DaemonTest = &daemon_test().await;
    let incus = &test.env.incus;
    assert!(
        !Path::new("/dev/nvidia0").exists() && !Path::new("/usr/local/sbin/nvidia-container-cli").exists(),
        "this test fakes an NVIDIA host and needs a machine without one"
    );
    let name = unique_name("nvidia");
    let _guard = InstanceGuard(name.clone());
    let records = tempfile::tempdir().unwrap();
    std::fs::set_permissions(records.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let record = records.path().join("call");

    // The fakes, where the hook run by incusd finds them (incusd's PATH has /usr/local/sbin).
    let cli = RemoveOnDrop(PathBuf::from("/usr/local/sbin/nvidia-container-cli"));
    fake_cli(&cli.0, &record);
    let device = RemoveOnDrop(PathBuf::from("/dev/nvidia0"));
    let status = Command::new("mknod")
        .args(["/dev/nvidia0", "c", "195", "0"])
        .status()
        .unwrap();
    assert!(status.success());

    let seen = test
        .follow(test.manager.create_container(
            &name,
            &format!("local:{}", test.env.image),
            options(vec![("nvidia_drivers", Variant::Bool(true))]),
        ))
        .await;
    assert_eq!(seen.last().unwrap(), "Completed(true, \"\")", "{seen:?}");
    assert!(
        seen.contains(&"Message(4, \"NVIDIA userspace drivers will be injected on start\")".to_owned()),
        "{seen:?}"
    );
    let instance = incus.get_instance(&name).await.unwrap();
    let hook_line = format!("lxc.hook.mount={}", workspace_binary("kapsule-nvidia-hook").display());
    assert!(
        instance.config["raw.lxc"].lines().any(|l| l == hook_line),
        "{}",
        instance.config["raw.lxc"]
    );
    assert_eq!(instance.status, "Running");

    let recorded = std::fs::read_to_string(&record).expect("LXC ran the hook, which ran the tool");
    let lines: Vec<&str> = recorded.lines().collect();
    assert_eq!(
        &lines[..7],
        [
            "configure",
            "--no-cgroups",
            "--no-devbind",
            "--device=all",
            "--compute",
            "--utility",
            "--graphics"
        ]
    );
    let ldconfig = lines[7].strip_prefix("--ldconfig=@").expect("the host's ldconfig");
    assert!(
        Path::new(ldconfig).is_absolute() && Path::new(ldconfig).exists(),
        "{ldconfig}"
    );
    let rootfs = lines[8];
    assert_eq!(lines[9], format!("env:{rootfs}"), "the rootfs LXC mounted");
    assert!(rootfs.starts_with('/') && rootfs != "/", "{rootfs}");

    // Without the fakes the same container starts normally (the hook does nothing).
    drop(cli);
    drop(device);
    std::fs::remove_file(&record).unwrap();
    let seen = test.follow(test.manager.stop_container(&name, true)).await;
    assert_eq!(seen.last().unwrap(), "Completed(true, \"\")");
    let seen = test.follow(test.manager.start_container(&name)).await;
    assert_eq!(seen.last().unwrap(), "Completed(true, \"\")", "{seen:?}");
    assert!(
        seen.contains(&"Message(4, \"NVIDIA userspace drivers are injected on start\")".to_owned()),
        "{seen:?}"
    );
    assert_eq!(incus.get_instance(&name).await.unwrap().status, "Running");
    assert!(!record.exists());
}

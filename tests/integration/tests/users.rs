//! User setup through the daemon against real containers: the account, the home mount, custom
//! mounts made on the host as the user, sudo, the minimal host mounts, the marker; done once;
//! only root sets up someone else; images without useradd work too.

use kapsule_integration_tests::{
    DaemonTest, InstanceGuard, RemoveOnDrop, daemon_test, options, other_user, sh, test_user, unique_name,
};
use zbus::Variant as Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_is_set_up_once_with_home_mounts_and_sudo() {
    let test: &DaemonTest = &daemon_test().await;
    let incus = &test.env.incus;
    let user = test_user();
    let name = unique_name("users");
    let _guard = InstanceGuard(name.clone());
    let mount = format!("kt-mount-{name}");
    let mount_dir = user.home.join(&mount);
    let _cleanup = RemoveOnDrop(mount_dir.clone());
    let outside = std::path::PathBuf::from(format!("/tmp/kt-outside-{name}"));
    let _cleanup2 = RemoveOnDrop(outside.clone());
    test.create(
        &name,
        options(vec![(
            "custom_mounts",
            Value::from(vec![format!("~/{mount}"), outside.display().to_string()]),
        )]),
    )
    .await;
    // No useradd or groupadd in the image: the setup must not need them.
    let (code, out) = sh(incus, &name, "rm -f /usr/sbin/useradd /usr/sbin/groupadd").await;
    assert_eq!(code, 0, "{out}");
    assert!(!test.manager.is_user_setup(&name, user.uid).await.unwrap());

    let home = user.home.to_str().unwrap();
    let seen = test
        .follow(test.manager.setup_user(&name, user.uid, user.gid, &user.name, home))
        .await;
    assert_eq!(seen.last().unwrap(), "Completed(true, \"\")", "{seen:?}");
    assert!(
        seen.contains(&format!("Message(1, \"User '{}' configured\")", user.name)),
        "{seen:?}"
    );
    assert!(test.manager.is_user_setup(&name, user.uid).await.unwrap());

    // The account, with the host's uid, gid and the home below /home.
    let (code, out) = sh(incus, &name, &format!("getent passwd {}", user.name)).await;
    assert_eq!(code, 0, "{out}");
    let fields: Vec<&str> = out.trim().split(':').collect();
    assert_eq!(fields[2], user.uid.to_string());
    assert_eq!(fields[3], user.gid.to_string());
    assert_eq!(fields[5], format!("/home/{}", user.name));
    let (code, out) = sh(incus, &name, &format!("getent group {}", user.gid)).await;
    assert_eq!(code, 0, "{out}");

    // The home is the host's: a file written on one side is seen on the other.
    let marker = user.write_file(&format!("{mount}/../kt-home-{name}"), "from the host");
    let _marker = RemoveOnDrop(marker);
    let (code, out) = sh(incus, &name, &format!("cat /home/{}/kt-home-{name}", user.name)).await;
    assert_eq!((code, out.as_str()), (0, "from the host"));
    let (code, out) = sh(
        incus,
        &name,
        &format!(
            "su {} -c 'echo from the container > /home/{}/kt-back-{name}'",
            user.name, user.name
        ),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let back = user.home.join(format!("kt-back-{name}"));
    let _back = RemoveOnDrop(back.clone());
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "from the container\n");

    // The custom mounts were made on the host as the user. One in the home is seen through the
    // home mount; one elsewhere is a mount of its own at the same path.
    use std::os::unix::fs::MetadataExt;
    for dir in [&mount_dir, &outside] {
        let meta = std::fs::metadata(dir).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid), "{}", dir.display());
    }
    std::fs::write(outside.join("seen"), "yes").unwrap();
    let (code, out) = sh(
        incus,
        &name,
        &format!("mountpoint -q {0} && cat {0}/seen", outside.display()),
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "yes"), "the custom mount is a mount point");
    let (code, out) = sh(incus, &name, &format!("test -d /home/{}/{mount}", user.name)).await;
    assert_eq!(code, 0, "{out}");

    // Passwordless sudo.
    let (code, out) = sh(incus, &name, &format!("su {} -c 'sudo -n id -u'", user.name)).await;
    assert_eq!((code, out.trim()), (0, "0"), "{out}");
    let (_, out) = sh(incus, &name, &format!("stat -c %a:%U /etc/sudoers.d/{}", user.name)).await;
    assert_eq!(out.trim(), "440:root");

    // A second setup does nothing.
    let passwd_before = sh(incus, &name, "cat /etc/passwd").await.1;
    let seen = test
        .follow(test.manager.setup_user(&name, user.uid, user.gid, &user.name, home))
        .await;
    assert!(
        seen.contains(&format!("Message(1, \"User '{}' was set up already\")", user.name)),
        "{seen:?}"
    );
    assert_eq!(sh(incus, &name, "cat /etc/passwd").await.1, passwd_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_home_mount_or_host_rootfs_the_container_keeps_its_own() {
    let test: &DaemonTest = &daemon_test().await;
    let incus = &test.env.incus;
    let user = test_user();
    let name = unique_name("minimal");
    let _guard = InstanceGuard(name.clone());
    test.create(
        &name,
        options(vec![
            ("mount_home", Value::Bool(false)),
            ("host_rootfs", Value::Bool(false)),
        ]),
    )
    .await;
    // Set up while stopped: the setup starts it.
    let seen = test.follow(test.manager.stop_container(&name, true)).await;
    assert_eq!(seen.last().unwrap(), "Completed(true, \"\")");
    let home = user.home.to_str().unwrap();
    let seen = test
        .follow(test.manager.setup_user(&name, user.uid, user.gid, &user.name, home))
        .await;
    assert_eq!(seen.last().unwrap(), "Completed(true, \"\")", "{seen:?}");
    assert_eq!(incus.get_instance(&name).await.unwrap().status, "Running");

    let instance = incus.get_instance(&name).await.unwrap();
    assert!(
        !instance.devices.contains_key(&format!("kapsule-home-{}", user.name)),
        "no home mount"
    );
    let hostrun = &instance.devices[&format!("kapsule-hostrun-{}", user.uid)];
    assert_eq!(hostrun["source"], format!("/run/user/{}", user.uid));
    assert!(instance.devices.contains_key("kapsule-x11"));
    // Its own home, from the image's /etc/skel, owned by the user.
    let (code, out) = sh(
        incus,
        &name,
        &format!("stat -c %u /home/{0} /home/{0}/.bashrc", user.name),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.lines().all(|l| l == user.uid.to_string()), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_user_takes_no_ones_word_for_an_identity() {
    let test: &DaemonTest = &daemon_test().await;
    let user = test_user();
    let name = unique_name("ident");
    let _guard = InstanceGuard(name.clone());
    test.create(&name, Default::default()).await;
    let home = user.home.to_str().unwrap();

    // Values that are not the host's account of that uid.
    for (uid, gid, username, home) in [
        (user.uid, user.gid + 1, user.name.as_str(), home),
        (user.uid, user.gid, "someone", home),
        (user.uid, user.gid, user.name.as_str(), "/etc"),
        (3_999_999_999, 1, "ghost", "/home/ghost"),
    ] {
        let e = test
            .manager
            .setup_user(&name, uid, gid, username, home)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, zbus::Error::MethodError(n, _, _) if n.as_str() == "org.kde.kapsule.Error.InvalidArgument"),
            "{uid} {gid} {username} {home}: {e}"
        );
    }
    // A plain user asking for root's setup is refused; nothing changes.
    let out = other_user()
        .call_manager(
            &test.bus,
            &[],
            "SetupUser",
            "suuss",
            &[&name, "0", "0", "root", "/root"],
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("You are not allowed to manage Kapsule containers"),
        "{stderr}"
    );
    assert!(!test.manager.is_user_setup(&name, 0).await.unwrap());
    let e = test
        .manager
        .setup_user("kt-no-such-container", user.uid, user.gid, &user.name, home)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
}

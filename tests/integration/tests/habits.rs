//! What distrobox users ask of a create: packages and hooks applied once, in distrobox's order,
//! each step's output on the operation (a failing step fails the create and leaves nothing; a
//! reset applies them again); and a separate home, so the container's dotfiles never touch the
//! host home. Against real containers, the packages from a `file:` repository of the test's own
//! that the container reaches through its view of the host (no network).

use std::process::Output;

use kapsule_integration_tests::apt::{PACKAGE, repository};
use kapsule_integration_tests::{InstanceGuard, RemoveOnDrop, daemon_test, options, sh, test_user, unique_name};
use zbus::Variant as Value;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packages_and_hooks_run_once_in_order_and_a_failing_step_leaves_no_container() {
    let test = &daemon_test().await;
    let incus = &test.env.incus;
    // Where the container sees it: the host's / is at /.kapsule/host.
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let repo = repository(dir.path(), "1.0");
    let source = format!("deb [trusted=yes] file:/.kapsule/host{} ./", repo.display());
    let name = unique_name("hooks");
    let _guard = InstanceGuard(name.clone());
    let pre = vec![
        // The image's own sources point at a mirror this machine cannot reach.
        format!(
            "rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*; echo '{source}' > /etc/apt/sources.list.d/kt.list"
        ),
        "echo pre-init says hello; echo pre > /root/kt-order".to_owned(),
    ];
    let after = vec![format!(
        "cat /usr/share/{PACKAGE}/version >> /root/kt-order; echo >> /root/kt-order; echo post >> /root/kt-order"
    )];
    let steps = options(vec![
        ("pre_init_hooks", Value::from(pre.clone())),
        ("additional_packages", Value::from(vec![PACKAGE])),
        ("init_hooks", Value::from(after.clone())),
    ]);
    let seen = test
        .create_from(&name, &format!("local:{}", test.env.image), steps)
        .await;
    let said = seen.join("\n");
    for expected in [
        "Pre-init hook 1 of 2: rm -f /etc/apt/sources.list",
        "Pre-init hook 2 of 2: echo pre-init says hello",
        "pre-init says hello",
        &format!("Installing {PACKAGE}"),
        &format!("Installing with apt: {PACKAGE}"),
        "Init hook 1 of 1: cat /usr/share/",
    ] {
        assert!(said.contains(expected), "{expected:?} not said:\n{said}");
    }
    let order = |said: &str, a: &str, b: &str| said.find(a).unwrap() < said.find(b).unwrap();
    assert!(order(&said, "Pre-init hook 2 of 2", "Installing with apt"), "{said}");
    assert!(order(&said, "Installing with apt", "Init hook 1 of 1"), "{said}");
    let (code, out) = sh(incus, &name, "cat /root/kt-order").await;
    assert_eq!((code, out.as_str()), (0, "pre\n1.0\npost\n"));

    // Recorded, so the details show them and a reset applies them again to the fresh files.
    let details = test.manager.get_container_details(&name).await.unwrap();
    assert_eq!(details.additional_packages, [PACKAGE]);
    assert_eq!((details.pre_init_hooks, details.init_hooks), (pre, after));
    let (code, out) = sh(incus, &name, "echo changed > /root/kt-order").await;
    assert_eq!(code, 0, "{out}");
    let seen = test.follow(test.manager.reset_container(&name, "")).await;
    assert_eq!(seen.last().unwrap(), "Completed(true, \"\")", "{seen:?}");
    let (code, out) = sh(incus, &name, "cat /root/kt-order").await;
    assert_eq!(
        (code, out.as_str()),
        (0, "pre\n1.0\npost\n"),
        "the reset ran them again"
    );

    // A step that fails: the create fails with its output and exit code, and nothing is left.
    let broken = unique_name("hooks-bad");
    let _broken_guard = InstanceGuard(broken.clone());
    let failing = options(vec![(
        "init_hooks",
        Value::from(vec!["echo about to fail >&2; exit 7", "touch /never"]),
    )]);
    let seen = test
        .follow(
            test.manager
                .create_container(&broken, &format!("local:{}", test.env.image), failing),
        )
        .await;
    let last = seen.last().unwrap();
    assert!(
        last.starts_with("Completed(false")
            && last.contains("Init hook 1 of 2: echo about to fail >&2; exit 7 failed (exit code 7): about to fail"),
        "{seen:?}"
    );
    assert!(!seen.iter().any(|s| s.contains("Init hook 2 of 2")), "{seen:?}");
    assert!(
        incus.get_instance(&broken).await.unwrap_err().is_not_found(),
        "the container was removed"
    );

    // Bad packages are refused before any work, with a named error.
    let refused = test
        .manager
        .create_container(
            &broken,
            "",
            options(vec![(
                "additional_packages",
                Value::from(vec!["-oDebug::pkgProblemResolver=1"]),
            )]),
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("must not start with '-'"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_home_takes_the_dotfiles_and_custom_mounts_still_reach_the_host() {
    let test = &daemon_test().await;
    let user = test_user();
    let name = unique_name("home");
    let _guard = InstanceGuard(name.clone());
    let home_dir = format!("kt-home-{name}");
    let src_dir = format!("kt-src-{name}");
    let separate = user.home.join(&home_dir);
    let _cleanup = (
        RemoveOnDrop(separate.clone()),
        RemoveOnDrop(user.home.join(&src_dir)),
        RemoveOnDrop(user.home.join(".kt-dotfile")),
    );
    user.write_file(&format!("{src_dir}/marker"), "from the host");
    let image = format!("local:{}", test.env.image);
    // As the user, from their shell: `--home ~/x` (the shell leaves a quoted ~ for Kapsule).
    let out = user
        .kapsule(&test.bus)
        .args(["create", &name, "--image", &image, "--no-menu-entry"])
        .args([
            "--home",
            &format!("~/{home_dir}"),
            "--custom-mounts",
            &format!("~/{src_dir}"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = user
        .kapsule(&test.bus)
        .args(["enter", &name, "--", "sh", "-c"])
        .arg("echo inside > ~/.kt-dotfile && echo \"$HOME\" && cat ~/\"$1\"/marker")
        .args(["sh", &src_dir])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("/home/{}\nfrom the host", user.name),
        "the home path is the usual one; the custom mount is the host's"
    );
    assert_eq!(
        std::fs::read_to_string(separate.join(".kt-dotfile")).unwrap(),
        "inside\n",
        "the dotfile is in the separate home"
    );
    assert!(
        !user.home.join(".kt-dotfile").exists(),
        "the host home never saw the dotfile"
    );
    let owner = std::fs::metadata(&separate).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&owner),
        user.uid,
        "made as the user"
    );
    let details = test.manager.get_container_details(&name).await.unwrap();
    assert_eq!(details.home, format!("~/{home_dir}"));
    let out = user.kapsule(&test.bus).args(["info", &name]).output().unwrap();
    assert!(
        text(&out).contains(&format!("~/{home_dir} on the host (a separate home)")),
        "{}",
        text(&out)
    );

    // A home the user may not make, and a home without the home mount, are refused before any
    // work.
    let other = unique_name("home-bad");
    let out = user
        .kapsule(&test.bus)
        .args([
            "create",
            &other,
            "--image",
            &image,
            "--no-menu-entry",
            "--home",
            "/root/kt-x",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("You cannot share /root/kt-x"), "{}", text(&out));
    let out = user
        .kapsule(&test.bus)
        .args([
            "create",
            &other,
            "--image",
            &image,
            "--no-menu-entry",
            "--home",
            "/tmp/x",
        ])
        .arg("--no-mount-home")
        .output()
        .unwrap();
    assert!(
        text(&out).contains("Option 'home' requires 'mount_home' to be true"),
        "{}",
        text(&out)
    );
    assert!(test.env.incus.get_instance(&other).await.unwrap_err().is_not_found());
}

//! `kapsule assemble` as a distrobox user runs it: a `distrobox.ini` in the current directory
//! with two containers (packages from the test's own repository, hooks, a volume, an exported
//! app, one left stopped) is made; run again it changes nothing (Incus sees no operation and no
//! change on them); a manifest with a key Kapsule has no meaning for is refused with its line and
//! nothing is made; `assemble rm` removes both, with the exported app.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use kapsule_incus::EventKind;
use kapsule_integration_tests::apt::{PACKAGE, repository};
use kapsule_integration_tests::{DaemonTest, InstanceGuard, TestUser, daemon_test, sh, test_user, unique_name};

/// A directory of the user's in /tmp (the containers see /tmp through the host's `/`).
fn users_dir(user: &TestUser, prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp").unwrap();
    std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
    dir
}

/// `kapsule ARGS` as the user, in `cwd`, with `data` as their XDG_DATA_HOME.
async fn kapsule(test: &DaemonTest, user: &TestUser, cwd: &Path, data: &Path, args: &[&str]) -> Output {
    let mut command = user.kapsule(&test.bus);
    command
        .args(args)
        .env("XDG_DATA_HOME", data)
        .current_dir(cwd)
        .stdin(Stdio::null());
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_is_made_once_refused_whole_when_wrong_and_removed() {
    let test = &daemon_test().await;
    let incus = &test.env.incus;
    let user = test_user();
    let (a, b, c) = (unique_name("asm-a"), unique_name("asm-b"), unique_name("asm-c"));
    let _guards = [
        InstanceGuard(a.clone()),
        InstanceGuard(b.clone()),
        InstanceGuard(c.clone()),
    ];
    let work = users_dir(&user, "kt-assemble");
    let data = users_dir(&user, "kt-data-home");
    let volume = users_dir(&user, "kt-volume");
    std::fs::write(volume.path().join("marker"), "shared").unwrap();
    let packages = tempfile::tempdir_in("/tmp").unwrap();
    let repo = repository(packages.path(), "1.0");
    let image = format!("local:{}", test.env.image);
    let manifest = format!(
        r#"# made by Kapsule's assemble test
[{a}]
image={image}
pre_init_hooks=rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*; echo 'deb [trusted=yes] file:/.kapsule/host{repo} ./' > /etc/apt/sources.list.d/kt.list
additional_packages="{PACKAGE}"
init_hooks=mkdir -p /usr/share/applications && printf '[Desktop Entry]\nType=Application\nName=KT Assembled\nExec=/bin/true\n' > /usr/share/applications/kt-asm.desktop
volume={volume}
exported_apps=kt-asm
entry=false
init=false

[{b}] # left stopped
image={image}
init_hooks="touch /b-made"
start_now=false
entry=false
"#,
        repo = repo.display(),
        volume = volume.path().display(),
    );
    std::fs::write(work.path().join("distrobox.ini"), manifest).unwrap();

    let out = kapsule(test, &user, work.path(), data.path(), &["assemble", "create"]).await;
    assert!(out.status.success(), "{}", said(&out));
    assert!(
        said(&out).contains("line 10: init=false does nothing"),
        "a distrobox key without effect is a note: {}",
        said(&out)
    );
    let (code, version) = sh(incus, &a, &format!("cat /usr/share/{PACKAGE}/version")).await;
    assert_eq!((code, version.as_str()), (0, "1.0"));
    let (code, marker) = sh(incus, &a, &format!("cat {}/marker", volume.path().display())).await;
    assert_eq!((code, marker.as_str()), (0, "shared"), "the volume is the host's");
    let exported = data.path().join(format!("applications/kapsule.{a}.kt-asm.desktop"));
    assert!(exported.exists(), "the app is in the menu: {}", said(&out));
    assert!(
        !data.path().join(format!("applications/kapsule.{a}.desktop")).exists(),
        "entry=false: no terminal entry"
    );
    assert_eq!(
        incus.get_instance(&b).await.unwrap().status,
        "Stopped",
        "start_now=false"
    );
    let details = test.manager.get_container_details(&b).await.unwrap();
    assert_eq!(details.init_hooks, ["touch /b-made"]);

    // Again: nothing happens to either container in Incus.
    let mut events = incus
        .events(&[EventKind::Operation, EventKind::Lifecycle])
        .await
        .unwrap();
    let out = kapsule(test, &user, work.path(), data.path(), &["assemble", "create"]).await;
    assert!(out.status.success(), "{}", said(&out));
    for name in [&a, &b] {
        assert!(
            said(&out).contains(&format!("'{name}' exists; left as it is")),
            "{}",
            said(&out)
        );
    }
    let touched = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            let event = events.next().await.expect("Incus keeps the event stream open").unwrap();
            let text = event.metadata.to_string();
            if text.contains(a.as_str()) || text.contains(b.as_str()) {
                return text;
            }
        }
    })
    .await;
    assert!(touched.is_err(), "the second run did something in Incus: {touched:?}");

    // What --replace would do, said and not done.
    let out = kapsule(
        test,
        &user,
        work.path(),
        data.path(),
        &["assemble", "create", "--replace", "--dry-run", "--name", &b],
    )
    .await;
    assert!(out.status.success(), "{}", said(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "would remove '{b}' (with its exports) and create '{b}' from {image} with init_hooks=[\"touch /b-made\"]; stop it\n"
        )
    );
    assert_eq!(incus.get_instance(&b).await.unwrap().status, "Stopped");

    // A key with no meaning in Kapsule: the whole manifest is refused, nothing is made.
    let bad = work.path().join("bad.ini");
    std::fs::write(&bad, format!("[{c}]\nimage={image}\nhostname=box\n")).unwrap();
    let out = kapsule(
        test,
        &user,
        work.path(),
        data.path(),
        &["assemble", "create", "--file", bad.to_str().unwrap()],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        said(&out).contains("bad.ini: line 3: 'hostname' means nothing to Kapsule"),
        "{}",
        said(&out)
    );
    assert!(incus.get_instance(&c).await.unwrap_err().is_not_found());

    let out = kapsule(test, &user, work.path(), data.path(), &["assemble", "rm"]).await;
    assert!(out.status.success(), "{}", said(&out));
    for name in [&a, &b] {
        assert!(incus.get_instance(name).await.unwrap_err().is_not_found(), "{name}");
    }
    assert!(!exported.exists(), "the exported app went with its container");
}

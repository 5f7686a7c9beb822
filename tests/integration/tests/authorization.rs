//! Authorization with a real polkitd (one per test bus, reading the shipped actions and rules and
//! the tests' rule, `tests/env/polkit/40-kapsule-tests.rules`): every state-changing Manager
//! method and Operation.Cancel against three callers, root (the daemon tests' own client: every
//! other test), `kapsule-tester` (an administrator who authenticated) and `kapsule-other` (allowed
//! to enter their own containers only), on a container of each. A refused call is
//! `NotAuthorized` with a clear message and leaves Incus exactly as it was.

use std::process::Output;

use kapsule_incus::models::ConfigMap;
use kapsule_integration_tests::{
    DaemonTest, InstanceGuard, TestUser, daemon_test, incus_state, other_user, test_user, unique_name,
};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `busctl call` of a Manager method as `user`.
async fn call(test: &DaemonTest, user: &TestUser, method: &str, signature: &str, args: &[&str]) -> Output {
    let mut command = user.call_manager(&test.bus, &[], method, signature, args);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

/// `kapsule args...` as `user`.
async fn kapsule(test: &DaemonTest, user: &TestUser, args: &[&str]) -> Output {
    let mut command = user.kapsule(&test.bus);
    command.args(args).current_dir("/");
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn refused(what: &str, out: &Output, message: &str) {
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{what} was allowed: {}", text(&out.stdout));
    assert!(stderr.contains(message), "{what}: {stderr}");
}

fn allowed(what: &str, out: &Output) -> String {
    assert!(out.status.success(), "{what} was refused: {}", text(&out.stderr));
    text(&out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_authorized_by_polkit_for_the_caller() {
    let test = daemon_test().await;
    let incus = &test.env.incus;
    let (admin, plain) = (test_user(), other_user());
    let image = format!("local:{}", test.env.image);

    // The administrator's container, made by them; the plain user's, made by root for them (they
    // may not create containers).
    let mine = unique_name("auth-adm");
    let theirs = unique_name("auth-usr");
    let _guards = (InstanceGuard(mine.clone()), InstanceGuard(theirs.clone()));
    allowed(
        "the administrator creating a container",
        &kapsule(&test, &admin, &["create", &mine, "--image", &image]).await,
    );
    assert_eq!(
        incus.get_instance(&mine).await.unwrap().config["user.kapsule.owner"],
        admin.uid.to_string(),
        "the creator is recorded as the owner"
    );
    test.create(&theirs, Default::default()).await;
    incus
        .patch_instance_config(
            &theirs,
            &ConfigMap::from([("user.kapsule.owner".to_owned(), plain.uid.to_string())]),
        )
        .await
        .unwrap();

    // An image of the test's own, for the image rows (never the shared test image).
    let tiny = unique_name("auth-img");
    kapsule_integration_tests::import_tiny_image(incus, &tiny).await;
    let _image = kapsule_integration_tests::ImageGuard(tiny.clone());

    // Everything that changes something, by the plain user: refused, and Incus is untouched.
    let new_name = unique_name("auth-new");
    let watched = [
        mine.as_str(),
        theirs.as_str(),
        new_name.as_str(),
        tiny.as_str(),
        &test.env.image,
    ];
    let before = incus_state(incus, &watched).await;
    let (uid, gid) = (plain.uid.to_string(), plain.gid.to_string());
    let home = plain.home.to_string_lossy().into_owned();
    let _new_guard = InstanceGuard(new_name.clone());
    let images_dir = tempfile::tempdir().unwrap();
    let images_path = images_dir.path().to_string_lossy().into_owned();
    let manage = "You are not allowed to manage Kapsule containers";
    let manage_images = "You are not allowed to manage Kapsule images";
    let refusals: Vec<(&str, &str, Vec<&str>, &str)> = vec![
        ("CreateContainer", "ssa{sv}", vec![&new_name, &image, "0"], manage),
        ("CreateContainer", "ssa{sv}", vec![&new_name, "", "0"], manage),
        ("DeleteContainer", "sb", vec![&mine, "true"], manage),
        ("DeleteContainer", "sb", vec![&theirs, "true"], manage),
        ("StartContainer", "s", vec![&mine], manage),
        ("StopContainer", "sb", vec![&theirs, "true"], manage),
        (
            "SetupUser",
            "suuss",
            vec![&mine, &uid, &gid, &plain.name, &home],
            manage,
        ),
        ("SetupUser", "suuss", vec![&theirs, "0", "0", "root", "/root"], manage),
        ("PrepareEnter", "sass", vec![&mine, "0", ""], manage),
        ("ImportImage", "ss", vec![&images_path, "kt-auth-image"], manage_images),
        ("DeleteImage", "s", vec![&tiny], manage_images),
        ("RefreshImages", "s", vec![""], manage_images),
    ];
    assert!(refusals.len() >= 12);
    for (method, signature, args, message) in &refusals {
        let out = call(&test, &plain, method, signature, args).await;
        refused(&format!("{method}{args:?} by {}", plain.name), &out, message);
    }
    let out = kapsule(&test, &plain, &["enter", &mine, "--", "true"]).await;
    refused("entering the administrator's container", &out, manage);
    let out = kapsule(&test, &plain, &["rm", "--force", &theirs]).await;
    refused("removing their own container", &out, manage);
    assert_eq!(
        incus_state(incus, &watched).await,
        before,
        "refused calls changed Incus"
    );

    // Reading needs no rights.
    let out = call(&test, &plain, "ListContainers", "", &[]).await;
    let list = allowed("ListContainers", &out);
    assert!(list.contains(&mine) && list.contains(&theirs), "{list}");
    for (method, signature, args) in [
        ("GetContainerInfo", "s", vec![mine.as_str()]),
        ("IsUserSetup", "su", vec![mine.as_str(), "0"]),
        ("ListImages", "", vec![]),
        ("GetConfig", "", vec![]),
        ("GetCreateSchema", "", vec![]),
        ("ListOperations", "", vec![]),
    ] {
        allowed(method, &call(&test, &plain, method, signature, &args).await);
    }

    // Their own container is theirs to enter.
    let out = call(&test, &plain, "PrepareEnter", "sass", &[&theirs, "0", ""]).await;
    let prepared = allowed("PrepareEnter of their own container", &out);
    assert!(prepared.starts_with("(bsas) true"), "{prepared}");
    let out = kapsule(&test, &plain, &["enter", &theirs, "--", "id", "-un"]).await;
    assert_eq!(
        allowed("entering their own container", &out),
        format!("{}\n", plain.name)
    );

    // The administrator may enter anyone's container, and manage them.
    let out = kapsule(&test, &admin, &["enter", &theirs, "--", "id", "-un"]).await;
    assert_eq!(allowed("the administrator entering", &out), format!("{}\n", admin.name));
    allowed(
        "the administrator refreshing images",
        &call(&test, &admin, "RefreshImages", "s", &[""]).await,
    );
    allowed(
        "the administrator stopping their container",
        &kapsule(&test, &admin, &["stop", &mine]).await,
    );

    // An operation root started is not the plain user's to cancel.
    let path = test.manager.stop_container(&theirs, false).await.unwrap();
    let mut cancel = plain.command("busctl");
    cancel.arg(format!("--address={}", test.bus.address)).args([
        "call",
        "org.kde.kapsule",
        path.as_str(),
        "org.kde.kapsule.Operation",
        "Cancel",
    ]);
    let out = tokio::task::spawn_blocking(move || cancel.output().unwrap())
        .await
        .unwrap();
    refused("cancelling root's operation", &out, manage);
}

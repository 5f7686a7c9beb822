//! Hostile input: a corpus of bad requests, sent the way anyone on the machine could send them
//! (`busctl` on the bus and the `kapsule` CLI, as the test administrator, who may do everything,
//! so what answers is the input checking and not polkit). Every one must come back as a named
//! error with a message that says what is wrong; afterwards the daemon process still runs and
//! answers, and Incus holds exactly what it held before.

use std::process::Output;

use kapsule_incus::models::ConfigMap;
use kapsule_integration_tests::{
    InstanceGuard, PrivateBus, TestUser, create_stopped_instance, daemon_process, env, incus_state, other_user,
    test_user, unique_name,
};

/// One bad request on the bus: what it is, the call, the error it must get and a piece of the
/// message a user must see.
struct Case {
    what: String,
    method: &'static str,
    signature: &'static str,
    args: Vec<String>,
    error: &'static str,
    message: String,
}

fn case(
    what: impl Into<String>,
    method: &'static str,
    signature: &'static str,
    args: &[&str],
    error: &'static str,
    message: impl Into<String>,
) -> Case {
    Case {
        what: what.into(),
        method,
        signature,
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        error,
        message: message.into(),
    }
}

/// The error name and message of a failed `busctl call`, from its debug log (busctl itself prints
/// only the message).
fn bus_error(out: &Output) -> Option<(String, String)> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().find(|l| l.starts_with("Got message type=error"))?;
    let name = line.split(" error-name=").nth(1)?.split(' ').next()?.to_owned();
    let message = line.split(" error-message=").nth(1)?.to_owned();
    Some((name, message))
}

async fn busctl(bus: &PrivateBus, user: &TestUser, case: &Case) -> Output {
    let mut command = user.call_manager(bus, &[], case.method, case.signature, &[]);
    command.args(&case.args).env("SYSTEMD_LOG_LEVEL", "debug");
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

async fn kapsule(bus: &PrivateBus, user: &TestUser, args: &[&str]) -> Output {
    let mut command = user.kapsule(bus);
    command.args(args);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_named_error_and_changes_nothing() {
    let env = env().await;
    let incus = &env.incus;
    let bus = PrivateBus::start();
    let (mut daemon, _client, manager) = daemon_process(&bus).await;
    let admin = test_user();
    let other = other_user();

    // A stopped Kapsule container of the administrator's, and an Incus instance that is not a
    // Kapsule container (the daemon must never touch it).
    let mine = unique_name("hostile");
    let foreign = unique_name("hostile-incus");
    let _guards = (InstanceGuard(mine.clone()), InstanceGuard(foreign.clone()));
    for name in [&mine, &foreign] {
        create_stopped_instance(&env, name).await;
    }
    incus
        .patch_instance_config(
            &mine,
            &ConfigMap::from([("user.kapsule.owner".to_owned(), admin.uid.to_string())]),
        )
        .await
        .unwrap();

    let new = unique_name("hostile-new");
    let image = format!("local:{}", env.image);
    let (uid, gid) = (admin.uid.to_string(), admin.gid.to_string());
    let home = admin.home.to_string_lossy().into_owned();
    let other_home = other.home.to_string_lossy().into_owned();
    let long_name = "a".repeat(64);
    let huge_name = "a".repeat(100_000);
    let long_image = format!("images:{}", "a".repeat(300));
    let long_path = format!("/{}", "p".repeat(5000));
    let many_mounts: Vec<String> = (0..65).map(|i| format!("/tmp/kt-m{i}")).collect();
    let many_args: Vec<String> = std::iter::repeat_n("x".to_owned(), 5000).collect();
    let fingerprint_alias = "ab".repeat(32);
    let empty_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(empty_dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let empty_dir = empty_dir.path().to_string_lossy().into_owned();
    let img_alias = unique_name("hostile-img");

    let bad_name = "Invalid container name";
    let create = |what: &str, name: &str, image: &str, options: &[&str], error, message: &str| {
        let mut args = vec![name, image];
        args.extend(options);
        case(what, "CreateContainer", "ssa{sv}", &args, error, message)
    };
    // One create option in busctl's notation: `1 <key> <signature> <value...>`.
    let opt = |key: &str, value: &[&str]| {
        let mut v = vec!["1", key];
        v.extend(value);
        v.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let several = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let mut cases: Vec<Case> = Vec::new();

    // Container names, through every method that takes one.
    for (what, name, message) in [
        ("empty name", "", "1 to 63 characters"),
        ("digit first", "1abc", "must not start with a digit"),
        ("dash first", "-abc", "must not start with a digit or '-'"),
        ("dash last", "abc-", "must not end with '-'"),
        ("64 characters", long_name.as_str(), "1 to 63 characters"),
        ("100000 characters", huge_name.as_str(), "1 to 63 characters"),
        ("space", "a b", "only letters, digits and '-'"),
        ("path", "a/../b", "only letters, digits and '-'"),
        ("underscore", "ab_c", "only letters, digits and '-'"),
        ("non-ASCII", "kapsülé", "only letters, digits and '-'"),
        ("shell", "a;rm -rf /", "only letters, digits and '-'"),
        ("newline", "a\nb", "only letters, digits and '-'"),
    ] {
        cases.push(create(
            &format!("create: {what}"),
            name,
            &image,
            &["0"],
            "InvalidArgument",
            message,
        ));
    }
    for (method, signature, args) in [
        ("DeleteContainer", "sb", vec!["../instances", "true"]),
        ("StartContainer", "s", vec!["UPPER_case"]),
        ("StopContainer", "sb", vec![long_name.as_str(), "true"]),
        ("GetContainerInfo", "s", vec![""]),
        ("IsUserSetup", "su", vec!["bad name", "0"]),
        ("SetupUser", "suuss", vec!["x/y", &uid, &gid, &admin.name, &home]),
    ] {
        cases.push(case(
            format!("{method}: bad name"),
            method,
            signature,
            &args,
            "InvalidArgument",
            bad_name,
        ));
    }
    // The daemon manages Kapsule containers only: another tool's instance is answered as one
    // that does not exist (nobody learns what else Incus holds).
    let not_kapsule = format!("Container '{foreign}' does not exist");
    for (method, signature, args) in [
        ("DeleteContainer", "sb", vec![foreign.as_str(), "true"]),
        ("StartContainer", "s", vec![foreign.as_str()]),
        ("StopContainer", "sb", vec![foreign.as_str(), "true"]),
        ("GetContainerInfo", "s", vec![foreign.as_str()]),
        ("IsUserSetup", "su", vec![foreign.as_str(), "0"]),
        (
            "SetupUser",
            "suuss",
            vec![foreign.as_str(), &uid, &gid, &admin.name, &home],
        ),
    ] {
        cases.push(case(
            format!("{method}: an Incus instance"),
            method,
            signature,
            &args,
            "NotFound",
            &not_kapsule,
        ));
    }
    cases.push(case(
        "delete: no such container",
        "DeleteContainer",
        "sb",
        &["kt-no-such-container", "true"],
        "NotFound",
        "does not exist",
    ));
    cases.push(create(
        "create: exists",
        &mine,
        &image,
        &["0"],
        "AlreadyExists",
        "already exists",
    ));

    // Image strings.
    for (what, image, message) in [
        (
            "unknown remote",
            "bogus:x",
            "Unknown image remote 'bogus'. Known remotes: local, images, ubuntu",
        ),
        ("no alias", "local:", "there is no alias"),
        ("no remote", ":x", "there is no remote before ':'"),
        ("dot-dot", "images:../../1.0/instances", "no empty, '.' or '..' part"),
        ("space", "a b", "' ' is not allowed"),
        ("query", "images:a?b#c", "'?' is not allowed"),
        ("percent", "images:a%2fb", "'%' is not allowed"),
        ("too long", long_image.as_str(), "longer than 256"),
        ("local with slash", "local:a/b", "a local alias has no '/'"),
        ("two colons", "images:a:b", "':' is not allowed"),
        ("control character", "images:a\tb", "is not allowed"),
    ] {
        cases.push(create(
            &format!("image: {what}"),
            &new,
            image,
            &["0"],
            "InvalidArgument",
            message,
        ));
    }
    cases.push(create(
        "image: no such local image",
        &new,
        "local:kt-no-such-image",
        &["0"],
        "NotFound",
        "No local image",
    ));

    // Create options: keys, variant types, paths, sizes, requirements.
    let mounts = |paths: &[&str]| {
        let count = paths.len().to_string();
        let mut v = opt("custom_mounts", &["as", &count]);
        v.extend(paths.iter().map(|p| (*p).to_owned()));
        v
    };
    let many_refs: Vec<&str> = many_mounts.iter().map(String::as_str).collect();
    let option_cases: Vec<(&str, Vec<String>, &str, String)> = vec![
        (
            "unknown key",
            opt("nosuch", &["b", "true"]),
            "InvalidArgument",
            "Unknown options: nosuch".into(),
        ),
        (
            "string for a boolean",
            opt("gpu", &["s", "yes"]),
            "InvalidArgument",
            "'gpu' must be a boolean".into(),
        ),
        (
            "number for a boolean",
            opt("mount_home", &["u", "1"]),
            "InvalidArgument",
            "must be a boolean".into(),
        ),
        (
            "variant in a variant",
            opt("gpu", &["v", "s", "x"]),
            "InvalidArgument",
            "must be a boolean".into(),
        ),
        (
            "string for paths",
            opt("custom_mounts", &["s", "/tmp"]),
            "InvalidArgument",
            "an array of strings".into(),
        ),
        (
            "numbers for paths",
            opt("custom_mounts", &["ai", "2", "1", "5"]),
            "InvalidArgument",
            "an array of strings".into(),
        ),
        (
            "relative mount",
            mounts(&["rel/path"]),
            "InvalidArgument",
            "must be absolute or start with ~/".into(),
        ),
        (
            "dot-dot mount",
            mounts(&["/home/../etc"]),
            "InvalidArgument",
            "must not contain '..'".into(),
        ),
        (
            "other user's ~",
            mounts(&["~root/x"]),
            "InvalidArgument",
            "must be absolute or start with ~/".into(),
        ),
        (
            "newline in a mount",
            mounts(&["/tmp/a\nb"]),
            "InvalidArgument",
            "NUL or newline".into(),
        ),
        (
            "65 mounts",
            mounts(&many_refs),
            "InvalidArgument",
            "at most 64 entries".into(),
        ),
        (
            "5000-byte mount",
            mounts(&[&long_path]),
            "InvalidArgument",
            "is too long".into(),
        ),
        (
            "/etc mounted",
            mounts(&["/etc"]),
            "NotAuthorized",
            "You cannot share /etc with a container".into(),
        ),
        (
            "another user's home mounted",
            mounts(&[&other_home]),
            "NotAuthorized",
            format!("You cannot share {other_home} with a container"),
        ),
        (
            "inside /root",
            mounts(&["/root/kt-x"]),
            "NotAuthorized",
            "You cannot share /root/kt-x".into(),
        ),
        (
            "a file mounted",
            mounts(&["/etc/hostname"]),
            "InvalidArgument",
            "not a directory".into(),
        ),
        (
            "dbus_mux without session_mode",
            several(&["2", "dbus_mux", "b", "true", "session_mode", "b", "false"]),
            "InvalidArgument",
            "requires 'session_mode' to be true".into(),
        ),
        (
            "dbus_mux without the host rootfs",
            several(&["2", "dbus_mux", "b", "true", "host_rootfs", "b", "false"]),
            "InvalidArgument",
            "requires host_rootfs".into(),
        ),
        (
            "nvidia without gpu",
            several(&["2", "nvidia_drivers", "b", "true", "gpu", "b", "false"]),
            "InvalidArgument",
            "requires 'gpu' to be true".into(),
        ),
    ];
    for (what, options, error, message) in &option_cases {
        let options: Vec<&str> = options.iter().map(String::as_str).collect();
        cases.push(create(
            &format!("options: {what}"),
            &new,
            &image,
            &options,
            error,
            message,
        ));
    }

    // Wrong signatures: the bus library refuses them before the daemon's code runs.
    cases.push(case(
        "create without options",
        "CreateContainer",
        "ss",
        &[&new, &image],
        "org.freedesktop.DBus.Error.InvalidArgs",
        "",
    ));
    cases.push(case(
        "delete with a string for force",
        "DeleteContainer",
        "ss",
        &[&mine, "yes"],
        "org.freedesktop.DBus.Error.InvalidArgs",
        "",
    ));

    // SetupUser believes nothing it is sent: the values must be the host's own account.
    for (what, args, error, message) in [
        (
            "someone else's home",
            vec![mine.as_str(), &uid, &gid, &admin.name, "/etc"],
            "InvalidArgument",
            "with home",
        ),
        (
            "another name",
            vec![mine.as_str(), &uid, &gid, "root", &home],
            "InvalidArgument",
            "not root:",
        ),
        (
            "group 0",
            vec![mine.as_str(), &uid, "0", &admin.name, &home],
            "InvalidArgument",
            "not ",
        ),
        (
            "no such uid",
            vec![mine.as_str(), "4000000000", "0", "x", "/x"],
            "InvalidArgument",
            "There is no user 4000000000",
        ),
    ] {
        cases.push(case(
            format!("SetupUser: {what}"),
            "SetupUser",
            "suuss",
            &args,
            error,
            message,
        ));
    }

    // Enter: environment, options, sizes, descriptors.
    let enter =
        |what: &str, name: &str, command: Vec<String>, cwd: &str, env: &[&str], options: &[&str], message: &str| {
            let mut args: Vec<String> = vec![name.to_owned()];
            args.push(command.len().to_string());
            args.extend(command);
            args.push(cwd.to_owned());
            args.extend(env.iter().map(|s| (*s).to_owned()));
            args.push("0".to_owned());
            args.extend(options.iter().map(|s| (*s).to_owned()));
            Case {
                what: format!("Enter: {what}"),
                method: "Enter",
                signature: "sassa{ss}a{sh}a{sv}",
                args,
                error: "InvalidArgument",
                message: message.to_owned(),
            }
        };
    let terminal = ["1", "terminal", "b", "true"];
    cases.push(enter(
        "'=' in a variable",
        &mine,
        vec![],
        "/",
        &["1", "A=B", "x"],
        &terminal,
        "Invalid environment variable name 'A=B'",
    ));
    cases.push(enter(
        "empty variable",
        &mine,
        vec![],
        "/",
        &["1", "", "x"],
        &terminal,
        "Invalid environment variable name ''",
    ));
    cases.push(enter(
        "unknown option",
        &mine,
        vec![],
        "/",
        &["0"],
        &["1", "tty", "b", "true"],
        "Unknown option 'tty'",
    ));
    cases.push(enter(
        "rows as a string",
        &mine,
        vec![],
        "/",
        &["0"],
        &["2", "terminal", "b", "true", "rows", "s", "24"],
        "'rows' must be a number",
    ));
    cases.push(enter(
        "zero columns",
        &mine,
        vec![],
        "/",
        &["0"],
        &["2", "terminal", "b", "true", "columns", "u", "0"],
        "'columns' must be a number",
    ));
    cases.push(enter(
        "terminal as a string",
        &mine,
        vec![],
        "/",
        &["0"],
        &["1", "terminal", "s", "yes"],
        "'terminal' must be a boolean",
    ));
    cases.push(enter(
        "relative directory",
        &mine,
        vec![],
        "rel",
        &["0"],
        &terminal,
        "is not absolute",
    ));
    cases.push(enter(
        "5000 arguments",
        &mine,
        many_args.clone(),
        "/",
        &["0"],
        &terminal,
        "Too large: the command",
    ));
    cases.push(enter(
        "no descriptors, no terminal",
        &mine,
        vec![],
        "/",
        &["0"],
        &["0"],
        "No 'stdin' descriptor",
    ));
    cases.push(enter(
        "bad container name",
        "bad name!",
        vec![],
        "/",
        &["0"],
        &terminal,
        bad_name,
    ));
    let mut into_foreign = enter(
        "an Incus instance",
        &foreign,
        vec![],
        "/",
        &["0"],
        &terminal,
        &not_kapsule,
    );
    into_foreign.error = "NotFound";
    cases.push(into_foreign);

    // Images: paths resolved as the caller, aliases, identifiers, refresh filters.
    for (what, method, signature, args, error, message) in [
        (
            "relative path",
            "ImportImage",
            "ss",
            vec!["images/x", img_alias.as_str()],
            "InvalidArgument",
            "is not absolute",
        ),
        (
            "missing directory",
            "ImportImage",
            "ss",
            vec!["/kt-no-such-dir", &img_alias],
            "NotFound",
            "does not exist",
        ),
        (
            "unreadable directory",
            "ImportImage",
            "ss",
            vec!["/root", &img_alias],
            "NotAuthorized",
            "You cannot read /root",
        ),
        (
            "a file",
            "ImportImage",
            "ss",
            vec!["/etc/hostname", &img_alias],
            "InvalidArgument",
            "is a file",
        ),
        (
            "no image files",
            "ImportImage",
            "ss",
            vec![&empty_dir, &img_alias],
            "NotFound",
            "Missing metadata file",
        ),
        (
            "alias with a slash",
            "ImportImage",
            "ss",
            vec![&empty_dir, "a/b"],
            "InvalidArgument",
            "'/' is not allowed",
        ),
        (
            "empty alias",
            "ImportImage",
            "ss",
            vec![&empty_dir, ""],
            "InvalidArgument",
            "there is no alias",
        ),
        (
            "fingerprint alias",
            "ImportImage",
            "ss",
            vec![&empty_dir, &fingerprint_alias],
            "InvalidArgument",
            "looks like a fingerprint",
        ),
        (
            "empty identifier",
            "DeleteImage",
            "s",
            vec![""],
            "InvalidArgument",
            "there is no alias",
        ),
        (
            "path identifier",
            "DeleteImage",
            "s",
            vec!["../x"],
            "InvalidArgument",
            "'/' is not allowed",
        ),
        (
            "no such image",
            "DeleteImage",
            "s",
            vec!["kt-no-such-image"],
            "NotFound",
            "No local image",
        ),
        (
            "unknown remote",
            "RefreshImages",
            "s",
            vec!["bogus:x"],
            "InvalidArgument",
            "Known remotes: local, images, ubuntu",
        ),
        (
            "no alias",
            "RefreshImages",
            "s",
            vec!["images:"],
            "InvalidArgument",
            "there is no alias",
        ),
    ] {
        cases.push(case(
            format!("{method}: {what}"),
            method,
            signature,
            &args,
            error,
            message,
        ));
    }

    assert!(cases.len() >= 50, "the corpus has {} cases", cases.len());
    let watched = [
        mine.as_str(),
        foreign.as_str(),
        new.as_str(),
        img_alias.as_str(),
        &env.image,
    ];
    let before = incus_state(incus, &watched).await;

    let mut failures = Vec::new();
    for case in &cases {
        let out = busctl(&bus, &admin, case).await;
        let expected = if case.error.contains('.') {
            case.error.to_owned()
        } else {
            format!("org.kde.kapsule.Error.{}", case.error)
        };
        match bus_error(&out) {
            Some((name, message)) if name == expected && message.contains(&case.message) && !message.is_empty() => {}
            got => failures.push(format!(
                "{}: expected {expected} with '{}', got {got:?} (exit {:?}, stdout {})",
                case.what,
                case.message,
                out.status.code(),
                String::from_utf8_lossy(&out.stdout)
            )),
        }
    }

    // The CLI shows the daemon's message and exits non-zero.
    let cli_cases: Vec<(Vec<&str>, String)> = vec![
        (vec!["create", "bad name!"], bad_name.into()),
        (
            vec!["create", &new, "--image", "bogus:x"],
            "Known remotes: local, images, ubuntu".into(),
        ),
        (
            vec!["create", &new, "--image", "local:a/b"],
            "a local alias has no '/'".into(),
        ),
        (
            vec!["create", &new, "--image", &image, "--custom-mounts", "/etc"],
            "You cannot share /etc".into(),
        ),
        (
            vec!["create", &new, "--image", &image, "--custom-mounts", &other_home],
            format!("You cannot share {other_home}"),
        ),
        (
            vec!["create", &new, "--image", &image, "--custom-mounts", "/a/../etc"],
            "must not contain '..'".into(),
        ),
        (vec!["enter", "bad name!", "--", "true"], bad_name.into()),
        (vec!["enter", &foreign, "--", "true"], not_kapsule.clone()),
        (vec!["start", &foreign], not_kapsule.clone()),
        (vec!["rm", "--force", &foreign], not_kapsule.clone()),
        (vec!["rm", "kt-no-such-container"], "does not exist".into()),
        (
            vec!["image", "import", "/root", "--alias", &img_alias],
            "You cannot read /root".into(),
        ),
        (vec!["image", "rm", "../x"], "'/' is not allowed".into()),
        (
            vec!["image", "refresh", "bogus:x"],
            "Unknown image remote 'bogus'".into(),
        ),
    ];
    for (args, message) in &cli_cases {
        let out = kapsule(&bus, &admin, args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(1) || !stderr.contains(message.as_str()) || !stderr.starts_with("error: ") {
            failures.push(format!(
                "kapsule {args:?}: exit {:?}, stderr {stderr}",
                out.status.code()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len() + cli_cases.len(),
        failures.join("\n")
    );

    // The daemon is still there and answering, and nothing changed in Incus.
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon exited");
    assert!(manager.version().await.is_ok(), "the daemon no longer answers");
    assert_eq!(incus_state(incus, &watched).await, before, "bad input changed Incus");
    assert!(
        incus.get_instance(&new).await.unwrap_err().is_not_found(),
        "{new} was created"
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
}

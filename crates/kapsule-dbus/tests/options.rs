//! The create-option schema: its wire JSON, and validation of client and image options.

use std::collections::{BTreeMap, HashMap};

use kapsule_dbus::options::{self, CreateOptions, OptionValue, OptionsError};
use zbus::DBusError;
use zbus::{OwnedVariant as OwnedValue, Variant as Value};

fn owned(v: Value<'_>) -> OwnedValue {
    OwnedValue::try_from(v).unwrap()
}

fn dbus(pairs: Vec<(&str, Value<'_>)>) -> HashMap<String, OwnedValue> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), owned(v))).collect()
}

fn resolve_client(pairs: Vec<(&str, Value<'_>)>) -> Result<CreateOptions, OptionsError> {
    let client = options::from_dbus(&dbus(pairs))?;
    options::resolve(&BTreeMap::new(), &client)
}

#[test]
fn schema_json_has_the_original_shape_and_order() {
    let expected = concat!(
        r#"{"version":1,"sections":["#,
        r#"{"id":"dbus","title":"D-Bus Integration","options":["#,
        r#"{"key":"session_mode","type":"boolean","title":"Session Mode","description":"Container gets its own D-Bus session bus","default":false},"#,
        r#"{"key":"dbus_mux","type":"boolean","title":"D-Bus Multiplexer","description":"Enable D-Bus multiplexer for hybrid host/container access (implies Session Mode)","default":false,"requires":{"session_mode":true}}]},"#,
        r#"{"id":"mounts","title":"Host Mounts","options":["#,
        r#"{"key":"host_rootfs","type":"boolean","title":"Mount Host Filesystem","description":"Mount entire host rootfs at /.kapsule/host","default":true},"#,
        r#"{"key":"mount_home","type":"boolean","title":"Mount Home Directory","description":"Mount the user's home directory in the container","default":true},"#,
        r#"{"key":"home","type":"string","title":"Separate Home","description":"Host directory used as the user's home in the container, so its dotfiles stay apart from the host home","default":"","format":"directory-path","requires":{"mount_home":true}},"#,
        r#"{"key":"custom_mounts","type":"array","title":"Additional Mounts","description":"Extra host directories to mount in the container","default":[],"items":{"type":"string","format":"directory-path"}}]},"#,
        r#"{"id":"gpu","title":"GPU","options":["#,
        r#"{"key":"gpu","type":"boolean","title":"GPU Passthrough","description":"Pass through GPU devices to the container","default":true},"#,
        r#"{"key":"nvidia_drivers","type":"boolean","title":"NVIDIA Driver Injection","description":"Inject host NVIDIA userspace drivers on each start","default":false,"requires":{"gpu":true}}]},"#,
        r#"{"id":"setup","title":"Setup at Creation","options":["#,
        r#"{"key":"pre_init_hooks","type":"array","title":"Commands Before Packages","description":"Commands run as root in the container at creation, before the packages are installed","default":[],"items":{"type":"string","format":"shell-command"}},"#,
        r#"{"key":"additional_packages","type":"array","title":"Additional Packages","description":"Packages installed by the container's package manager at creation","default":[],"items":{"type":"string","format":"package-name"}},"#,
        r#"{"key":"init_hooks","type":"array","title":"Commands After Packages","description":"Commands run as root in the container at creation, after the packages are installed","default":[],"items":{"type":"string","format":"shell-command"}}]},"#,
        r#"{"id":"lifetime","title":"Lifetime","options":["#,
        r#"{"key":"ephemeral","type":"boolean","title":"Ephemeral","description":"Remove the container when the last session in it ends","default":false}]},"#,
        r#"{"id":"security","title":"Security","options":["#,
        r#"{"key":"unprivileged","type":"boolean","title":"Unprivileged","description":"Run the container in a user namespace: root in it is not root on the host, and its owner needs no administrator to use it","default":false}]}]}"#,
    );
    assert_eq!(options::schema_json(), expected);
}

#[test]
fn defaults_when_nothing_is_given() {
    let o = resolve_client(vec![]).unwrap();
    assert_eq!(
        o,
        CreateOptions {
            session_mode: false,
            dbus_mux: false,
            host_rootfs: true,
            mount_home: true,
            custom_mounts: vec![],
            gpu: true,
            nvidia_drivers: false,
            home: String::new(),
            pre_init_hooks: vec![],
            additional_packages: vec![],
            init_hooks: vec![],
            ephemeral: false,
            unprivileged: false,
        }
    );
}

#[test]
fn client_values_nested_variants_and_paths() {
    let mounts = Value::from(vec!["/srv/data", "~/proj"]);
    let o = resolve_client(vec![
        (
            "mount_home",
            Value::Variant(Box::new(Value::Variant(Box::new(Value::Bool(false))))),
        ),
        ("custom_mounts", mounts),
        ("gpu", Value::Bool(false)),
    ])
    .unwrap();
    assert!(!o.mount_home && !o.gpu);
    assert_eq!(o.custom_mounts, ["/srv/data", "~/proj"]);
}

#[test]
fn unknown_keys_are_listed_sorted_with_the_known_ones() {
    let e = resolve_client(vec![("zeta", Value::Bool(true)), ("alpha", Value::Bool(true))]).unwrap_err();
    assert_eq!(e, OptionsError::UnknownKeys(vec!["alpha".into(), "zeta".into()]));
    assert!(
        e.to_string()
            .starts_with("Unknown options: alpha, zeta (known options: session_mode, dbus_mux,")
    );
}

#[test]
fn wrong_variant_types_are_refused() {
    let e = resolve_client(vec![("gpu", Value::from("yes"))]).unwrap_err();
    assert_eq!(e.to_string(), "Option 'gpu' must be a boolean, got D-Bus type 's'");
    let e = resolve_client(vec![("custom_mounts", Value::from(vec![1u32, 2]))]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Option 'custom_mounts' must be an array of strings, got D-Bus type 'au'"
    );
    let e = resolve_client(vec![("custom_mounts", Value::from("/srv"))]).unwrap_err();
    assert!(matches!(e, OptionsError::WrongType { .. }));
}

#[test]
fn requirements_are_implied_when_unset_and_refused_when_contradicted() {
    let o = resolve_client(vec![("dbus_mux", Value::Bool(true))]).unwrap();
    assert!(o.dbus_mux && o.session_mode, "dbus_mux implies session_mode");
    let e = resolve_client(vec![
        ("dbus_mux", Value::Bool(true)),
        ("session_mode", Value::Bool(false)),
    ])
    .unwrap_err();
    assert_eq!(e.to_string(), "Option 'dbus_mux' requires 'session_mode' to be true");
    let e = resolve_client(vec![("nvidia_drivers", Value::Bool(true)), ("gpu", Value::Bool(false))]).unwrap_err();
    assert_eq!(e.to_string(), "Option 'nvidia_drivers' requires 'gpu' to be true");
    let o = resolve_client(vec![("nvidia_drivers", Value::Bool(true))]).unwrap();
    assert!(o.nvidia_drivers && o.gpu);
    let e = resolve_client(vec![
        ("dbus_mux", Value::Bool(true)),
        ("host_rootfs", Value::Bool(false)),
    ])
    .unwrap_err();
    assert!(matches!(e, OptionsError::Incompatible(_)), "{e}");
    // The NVIDIA hook runs as the host's root on the container's files: not for an unprivileged
    // container, whose root owns them.
    let e = resolve_client(vec![
        ("unprivileged", Value::Bool(true)),
        ("nvidia_drivers", Value::Bool(true)),
    ])
    .unwrap_err();
    assert!(
        matches!(e, OptionsError::Incompatible(why) if why.contains("not offered for unprivileged")),
        "{e}"
    );
    let o = resolve_client(vec![("unprivileged", Value::Bool(true))]).unwrap();
    assert!(
        o.unprivileged && o.gpu && !o.nvidia_drivers,
        "the GPU itself is passed through"
    );
}

#[test]
fn bad_mount_paths_are_refused() {
    for (path, reason) in [
        ("relative/dir", "must be absolute or start with ~/"),
        ("~other/dir", "must be absolute or start with ~/"),
        ("/srv/../etc", "must not contain '..'"),
        ("~/..", "must not contain '..'"),
        ("/srv/a\0b", "contains a NUL or newline character"),
        ("", "must be absolute or start with ~/"),
    ] {
        let e = resolve_client(vec![("custom_mounts", Value::from(vec![path]))]).unwrap_err();
        assert!(
            matches!(&e, OptionsError::BadPath { reason: r, .. } if *r == reason),
            "{path:?}: {e}"
        );
    }
    let many: Vec<String> = (0..=options::MAX_CUSTOM_MOUNTS).map(|i| format!("/srv/{i}")).collect();
    let e = resolve_client(vec![("custom_mounts", Value::from(many))]).unwrap_err();
    assert!(matches!(e, OptionsError::TooMany { .. }));
}

#[test]
fn a_separate_home_needs_the_home_mount_and_a_good_path() {
    let o = resolve_client(vec![("home", Value::from("~/boxes/dev"))]).unwrap();
    assert_eq!(o.home, "~/boxes/dev");
    assert!(o.mount_home);
    let e = resolve_client(vec![
        ("home", Value::from("/srv/h")),
        ("mount_home", Value::Bool(false)),
    ])
    .unwrap_err();
    assert_eq!(e.to_string(), "Option 'home' requires 'mount_home' to be true");
    let o = resolve_client(vec![("home", Value::from("")), ("mount_home", Value::Bool(false))]).unwrap();
    assert!(o.home.is_empty() && !o.mount_home, "an empty home is no home");
    for path in ["rel/dir", "/srv/../etc"] {
        let e = resolve_client(vec![("home", Value::from(path))]).unwrap_err();
        assert!(matches!(e, OptionsError::BadPath { .. }), "{path}: {e}");
    }
    let e = resolve_client(vec![("home", Value::from(vec!["/a"]))]).unwrap_err();
    assert_eq!(e.to_string(), "Option 'home' must be a string, got D-Bus type 'as'");
}

#[test]
fn packages_and_hooks_are_checked_and_kept_in_order() {
    let o = resolve_client(vec![
        (
            "additional_packages",
            Value::from(vec!["git", "g++", "python3.11", "lib:i386"]),
        ),
        (
            "pre_init_hooks",
            Value::from(vec!["echo one", "echo 'two'\necho three"]),
        ),
        ("init_hooks", Value::from(vec!["touch /done"])),
    ])
    .unwrap();
    assert_eq!(o.additional_packages, ["git", "g++", "python3.11", "lib:i386"]);
    assert_eq!(o.pre_init_hooks, ["echo one", "echo 'two'\necho three"]);
    assert_eq!(o.init_hooks, ["touch /done"]);
    for (name, why) in [
        ("-oAPT::x=y", "must not start with '-'"),
        ("a b", "may hold only"),
        ("$(reboot)", "may hold only"),
        ("", "must be 1 to 255"),
    ] {
        let e = resolve_client(vec![("additional_packages", Value::from(vec![name]))]).unwrap_err();
        assert!(
            matches!(&e, OptionsError::BadEntry { reason, .. } if reason.starts_with(why)),
            "{name:?}: {e}"
        );
    }
    let e = resolve_client(vec![("init_hooks", Value::from(vec!["  "]))]).unwrap_err();
    assert_eq!(e.to_string(), "Option 'init_hooks': command '  ' is empty");
    let many: Vec<String> = (0..=options::MAX_HOOKS).map(|i| format!("echo {i}")).collect();
    assert!(matches!(
        resolve_client(vec![("init_hooks", Value::from(many))]),
        Err(OptionsError::TooMany { .. })
    ));
    let (image, _) = options::from_json_defaults(r#"{"additional_packages": ["vim"], "home": "~/h"}"#).unwrap();
    let o = options::resolve(&image, &BTreeMap::new()).unwrap();
    assert_eq!(
        (o.additional_packages, o.home),
        (vec!["vim".to_owned()], "~/h".to_owned())
    );
    assert!(options::from_json_defaults(r#"{"init_hooks": "echo"}"#).is_err());
}

#[test]
fn image_defaults_sit_between_schema_and_client() {
    let (image, ignored) =
        options::from_json_defaults(r#"{"mount_home": false, "custom_mounts": ["~/kde"], "future_option": 3}"#)
            .unwrap();
    assert_eq!(ignored, ["future_option"], "unknown image keys are reported, not fatal");
    let o = options::resolve(&image, &BTreeMap::new()).unwrap();
    assert!(!o.mount_home);
    assert_eq!(o.custom_mounts, ["~/kde"]);
    let client = options::from_dbus(&dbus(vec![("mount_home", Value::Bool(true))])).unwrap();
    assert!(
        options::resolve(&image, &client).unwrap().mount_home,
        "the client wins over the image"
    );

    // A requirement contradicted by the image counts as explicit too.
    let (image, _) = options::from_json_defaults(r#"{"gpu": false}"#).unwrap();
    let client: BTreeMap<String, OptionValue> = [("nvidia_drivers".to_owned(), OptionValue::Bool(true))].into();
    assert!(matches!(
        options::resolve(&image, &client),
        Err(OptionsError::Conflict { .. })
    ));
}

#[test]
fn bad_image_defaults_are_refused() {
    assert!(matches!(
        options::from_json_defaults("[1]"),
        Err(OptionsError::BadDefaults(_))
    ));
    assert!(matches!(
        options::from_json_defaults("{"),
        Err(OptionsError::BadDefaults(_))
    ));
    let e = options::from_json_defaults(r#"{"gpu": "no"}"#).unwrap_err();
    assert_eq!(e.to_string(), r#"Option 'gpu' must be a boolean, got JSON "no""#);
    assert!(options::from_json_defaults(r#"{"custom_mounts": ["../x"]}"#).is_err());
}

#[test]
fn option_errors_are_invalid_argument_on_the_bus() {
    let e: kapsule_dbus::Error = OptionsError::Incompatible("nope").into();
    assert_eq!(e.name().as_str(), "org.kde.kapsule.Error.InvalidArgument");
}

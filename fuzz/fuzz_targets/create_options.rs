//! The create-option parser, through both doors options come in by: a client's `a{sv}` decoded
//! from D-Bus wire bytes exactly as the daemon receives it, and an image's JSON defaults. Whatever
//! passes must resolve into options that keep every rule of the schema.
#![no_main]

use std::collections::{BTreeMap, HashMap};

use kapsule_dbus::options::{self, MAX_CUSTOM_MOUNTS, MAX_HOOKS, MAX_PACKAGES, MAX_PATH_LEN, OptionValue};
use libfuzzer_sys::fuzz_target;
use zbus::wire::LE;
use zbus::wire::serialized::{Context, Data};

fn parse(door: u8, bytes: &[u8]) -> Option<BTreeMap<String, OptionValue>> {
    if door & 1 == 0 {
        let data = Data::new(bytes, Context::new(LE, 0));
        let (map, _) = data.deserialize::<HashMap<String, zbus::OwnedVariant>>().ok()?;
        options::from_dbus(&map).map_err(|e| e.to_string()).ok()
    } else {
        let text = std::str::from_utf8(bytes).ok()?;
        options::from_json_defaults(text)
            .map(|(o, _)| o)
            .map_err(|e| e.to_string())
            .ok()
    }
}

fuzz_target!(|bytes: &[u8]| {
    let Some((&door, rest)) = bytes.split_first() else {
        return;
    };
    let Some(parsed) = parse(door, rest) else {
        return;
    };
    // The same values as image defaults under no client values, and as client values.
    for (image, client) in [(&parsed, &BTreeMap::new()), (&BTreeMap::new(), &parsed)] {
        let Ok(o) = options::resolve(image, client) else {
            continue;
        };
        assert!(!o.dbus_mux || (o.session_mode && o.host_rootfs), "{o:?}");
        assert!(!o.nvidia_drivers || o.gpu, "{o:?}");
        assert!(o.custom_mounts.len() <= MAX_CUSTOM_MOUNTS);
        assert!(o.home.is_empty() || o.mount_home, "{o:?}");
        assert!(o.additional_packages.len() <= MAX_PACKAGES);
        for package in &o.additional_packages {
            assert!(!package.is_empty() && !package.starts_with('-'), "{package:?}");
            assert!(
                !package.contains(|c: char| c.is_whitespace() || c == '\0' || c == '\''),
                "{package:?}"
            );
        }
        assert!(o.init_hooks.len() <= MAX_HOOKS && o.pre_init_hooks.len() <= MAX_HOOKS);
        for hook in o.init_hooks.iter().chain(&o.pre_init_hooks) {
            assert!(!hook.contains('\0') && !hook.trim().is_empty(), "{hook:?}");
        }
        let home = (!o.home.is_empty()).then_some(&o.home);
        for path in o.custom_mounts.iter().chain(home) {
            assert!(path.len() <= MAX_PATH_LEN);
            assert!(path.starts_with('/') || path.starts_with("~/"), "{path:?}");
            assert!(!path.split('/').any(|c| c == ".."), "{path:?}");
            assert!(!path.contains(['\0', '\n']), "{path:?}");
        }
    }
});

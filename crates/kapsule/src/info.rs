//! `kapsule info NAME`: one container in full, from `GetContainerDetails` and, for what the user
//! exported from it, their own export record.

use comfy_table::{Table, presets::NOTHING};
use kapsule_dbus::ContainerDetails;

use crate::cli::Format;

/// What the user exported from `name`: `(kind, what)` pairs, from their record (none when it
/// cannot be read: that is theirs to see with `kapsule export --list`).
fn exports(name: &str) -> Vec<(String, String)> {
    let Ok(places) = kapsule_export::Places::from_env() else {
        return Vec::new();
    };
    let Ok(record) = kapsule_export::Record::load(&places, name) else {
        return Vec::new();
    };
    record
        .exports
        .iter()
        .map(|e| (e.kind.label().to_owned(), e.source.clone()))
        .collect()
}

/// The text `kapsule info` prints for `details`.
pub(crate) fn render(details: &ContainerDetails, format: Format) -> String {
    let exports = exports(&details.name);
    match format {
        Format::Json => json(details, &exports).to_string(),
        Format::Table => {
            let mut table = Table::new();
            table.load_style(NOTHING);
            for (key, value) in rows(details, &exports) {
                table.add_row([format!("{key}:"), value]);
            }
            table.to_string()
        }
    }
}

/// The JSON object: `list --format json`'s keys, then the rest under the D-Bus keys; a value the
/// daemon left out is `null`.
fn json(d: &ContainerDetails, exports: &[(String, String)]) -> serde_json::Value {
    let snapshots: Vec<serde_json::Value> = d
        .snapshots
        .iter()
        .map(|s| serde_json::json!({"name": s.name, "created": s.created, "automatic": s.automatic}))
        .collect();
    let exports: Vec<serde_json::Value> = exports
        .iter()
        .map(|(kind, source)| serde_json::json!({"kind": kind, "source": source}))
        .collect();
    serde_json::json!({
        "name": d.name,
        "status": d.status,
        "image": d.image,
        "created": d.created,
        "mode": d.mode,
        "image_source": d.image_source,
        "image_fingerprint": d.image_fingerprint,
        "last_used": d.last_used,
        "owner": d.owner,
        "owner_name": d.owner_name,
        "users": d.users,
        "session_mode": d.session_mode,
        "dbus_mux": d.dbus_mux,
        "host_rootfs": d.host_rootfs,
        "mount_home": d.mount_home,
        "home": d.home,
        "custom_mounts": d.custom_mounts,
        "gpu": d.gpu,
        "nvidia_drivers": d.nvidia_drivers,
        "pre_init_hooks": d.pre_init_hooks,
        "additional_packages": d.additional_packages,
        "init_hooks": d.init_hooks,
        "ephemeral": d.ephemeral,
        "unprivileged": d.unprivileged,
        "snapshots": snapshots,
        "disk_usage": d.disk_usage,
        "exports": exports,
    })
}

/// The table's rows, in the order a user reads them: what it is, whose, what it sees of the
/// host, what was done to it, what it holds.
fn rows(d: &ContainerDetails, exports: &[(String, String)]) -> Vec<(&'static str, String)> {
    let mut rows = vec![("Name", d.name.clone()), ("Status", d.status.clone())];
    if d.ephemeral {
        rows.push((
            "Lifetime",
            "ephemeral: removed when the last session in it ends".to_owned(),
        ));
    }
    let mut image = d.image.clone();
    if let Some(source) = &d.image_source {
        image.push_str(&format!(" (from {source})"));
    }
    if let Some(fingerprint) = &d.image_fingerprint {
        image.push_str(&format!(", image {}", fingerprint.get(..12).unwrap_or(fingerprint)));
    }
    rows.push(("Image", image));
    rows.push(("Created", when(&d.created)));
    rows.push((
        "Last started",
        d.last_used.as_deref().map_or_else(|| "never".to_owned(), when),
    ));
    rows.push((
        "Owner",
        match (d.owner, &d.owner_name) {
            (Some(uid), Some(name)) => format!("{name} (uid {uid})"),
            (Some(uid), None) => format!("uid {uid}"),
            (None, _) => "not recorded (made by an older Kapsule)".to_owned(),
        },
    ));
    let users: Vec<String> = d.users.iter().map(|u| format!("uid {u}")).collect();
    rows.push(("Users set up", or_none(&users.join(", "))));
    rows.push((
        "Root in it",
        if d.unprivileged {
            "not root on the host (unprivileged: a user namespace)"
        } else {
            "root on the host (privileged)"
        }
        .to_owned(),
    ));
    let mode = match d.mode.as_str() {
        "Session" => "its own D-Bus session bus",
        "DbusMux" => "its own D-Bus session bus, host services through the multiplexer",
        _ => "the host's D-Bus session bus",
    };
    rows.push(("D-Bus", mode.to_owned()));
    let home = if !d.mount_home {
        "its own, inside the container".to_owned()
    } else if d.home.is_empty() {
        "your host home".to_owned()
    } else {
        format!("{} on the host (a separate home)", d.home)
    };
    rows.push(("Home", home));
    rows.push((
        "Host files",
        if d.host_rootfs {
            "the host's / at /.kapsule/host".to_owned()
        } else {
            "not shared".to_owned()
        },
    ));
    rows.push(("Custom mounts", or_none(&d.custom_mounts.join(", "))));
    let gpu = match (d.gpu, d.nvidia_drivers) {
        (true, true) => "passed through, with the host's NVIDIA drivers",
        (true, false) => "passed through",
        (false, _) => "none",
    };
    rows.push(("GPU", gpu.to_owned()));
    if !d.pre_init_hooks.is_empty() {
        rows.push(("Pre-init hooks", d.pre_init_hooks.join("\n")));
    }
    if !d.additional_packages.is_empty() {
        rows.push(("Packages added", d.additional_packages.join(" ")));
    }
    if !d.init_hooks.is_empty() {
        rows.push(("Init hooks", d.init_hooks.join("\n")));
    }
    let exported: Vec<String> = exports
        .iter()
        .map(|(kind, source)| format!("{kind} {source}"))
        .collect();
    rows.push(("Exports", or_none(&exported.join("\n"))));
    let snapshots: Vec<String> = d
        .snapshots
        .iter()
        .map(|s| {
            let by = if s.automatic { ", by kapsule" } else { "" };
            format!("{} ({}{by})", s.name, when(&s.created))
        })
        .collect();
    rows.push(("Snapshots", or_none(&snapshots.join("\n"))));
    rows.push((
        "Disk use",
        d.disk_usage
            .map_or_else(|| "not counted by its storage pool".to_owned(), size),
    ));
    rows
}

fn or_none(text: &str) -> String {
    if text.is_empty() {
        "none".to_owned()
    } else {
        text.to_owned()
    }
}

/// `2026-12-05T03:12:29.123456+00:00` as `2026-12-05 03:12`.
fn when(iso: &str) -> String {
    iso.get(..16).unwrap_or(iso).replace('T', " ")
}

fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_say_what_a_user_needs() {
        let details = ContainerDetails {
            name: "dev".into(),
            status: "Running".into(),
            image: "Debian 12".into(),
            created: "2026-12-05T03:12:29.123456+00:00".into(),
            mode: "Default".into(),
            image_source: Some("images:debian/12".into()),
            owner: Some(1000),
            owner_name: Some("alice".into()),
            users: vec![1000],
            mount_home: true,
            home: "~/boxes/dev".into(),
            gpu: true,
            additional_packages: vec!["git".into(), "vim".into()],
            disk_usage: Some(3 * 1024 * 1024 * 1024 / 2),
            ..Default::default()
        };
        let exports = [("app".to_owned(), "org.kde.kate.desktop".to_owned())];
        let rows = rows(&details, &exports);
        let get = |key: &str| rows.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str());
        assert_eq!(get("Image"), Some("Debian 12 (from images:debian/12)"));
        assert_eq!(get("Created"), Some("2026-12-05 03:12"));
        assert_eq!(get("Last started"), Some("never"));
        assert_eq!(get("Owner"), Some("alice (uid 1000)"));
        assert_eq!(get("Home"), Some("~/boxes/dev on the host (a separate home)"));
        assert_eq!(get("Packages added"), Some("git vim"));
        assert_eq!(get("Init hooks"), None, "empty steps are not shown");
        assert_eq!(get("Exports"), Some("app org.kde.kate.desktop"));
        assert_eq!(get("Snapshots"), Some("none"));
        assert_eq!(get("Disk use"), Some("1.5 GiB"));
        assert_eq!(size(512), "512 B");
    }

    #[test]
    fn json_has_the_list_keys_and_more() {
        let details = ContainerDetails {
            name: "dev".into(),
            owner: Some(1000),
            ..Default::default()
        };
        let json = json(&details, &[("bin".into(), "/usr/bin/rg".into())]);
        for key in ["name", "status", "image", "created", "mode", "owner", "users", "home"] {
            assert!(json.get(key).is_some(), "{key} missing from {json}");
        }
        assert_eq!(json["name"], "dev", "plain values, not variants");
        assert_eq!(json["owner"], 1000);
        assert!(json["disk_usage"].is_null(), "unknown values are null: {json}");
        assert_eq!(json["exports"][0]["source"], "/usr/bin/rg");
    }
}

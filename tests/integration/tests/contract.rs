//! The wire contract: every member the original daemon had, with its exact signature, as
//! `busctl introspect` shows it on the live daemon; and the interface XML checked in under
//! `dbus/` is exactly what the daemon serves.
//!
//! After an intended change of the API (or of its doc comments), regenerate the XML with
//! `KAPSULE_BLESS=1 cargo nextest run -p kapsule-integration-tests --test contract` and review
//! the diff.

use std::collections::BTreeSet;
use std::process::Command;

use kapsule_integration_tests::{DaemonTest, daemon_test};

/// `(member, kind, signature, result)` as the original daemon (and Konsole, libkapsule-qt)
/// expect them. New members may be added; none of these may change.
const MANAGER: &[(&str, &str, &str, &str)] = &[
    ("Version", "property", "s", ""),
    ("ContainersChanged", "signal", "-", "-"),
    ("ListOperations", "method", "-", "ao"),
    ("GetCreateSchema", "method", "-", "s"),
    ("CreateContainer", "method", "ssa{sv}", "o"),
    ("DeleteContainer", "method", "sb", "o"),
    ("StartContainer", "method", "s", "o"),
    ("StopContainer", "method", "sb", "o"),
    ("RefreshImages", "method", "s", "o"),
    ("ImportImage", "method", "ss", "o"),
    ("ListImages", "method", "-", "s"),
    ("DeleteImage", "method", "s", "o"),
    ("SetupUser", "method", "suuss", "o"),
    ("IsUserSetup", "method", "su", "b"),
    ("ListContainers", "method", "-", "a(sssss)"),
    ("GetContainerInfo", "method", "s", "(sssss)"),
    ("GetConfig", "method", "-", "a{ss}"),
    ("PrepareEnter", "method", "sass", "bsas"),
];

const OPERATION: &[(&str, &str, &str, &str)] = &[
    ("Id", "property", "s", ""),
    ("Type", "property", "s", ""),
    ("Description", "property", "s", ""),
    ("Target", "property", "s", ""),
    ("Status", "property", "s", ""),
    ("ErrorMessage", "property", "s", ""),
    ("Message", "signal", "isi", "-"),
    ("ProgressStarted", "signal", "ssii", "-"),
    ("ProgressUpdate", "signal", "sid", "-"),
    ("ProgressTextUpdate", "signal", "ss", "-"),
    ("ProgressCompleted", "signal", "sbs", "-"),
    ("Completed", "signal", "bs", "-"),
    ("Cancel", "method", "-", "b"),
];

/// The members `busctl introspect` lists for `interface` on `path`.
fn busctl_members(address: &str, path: &str, interface: &str) -> Vec<(String, String, String, String)> {
    let out = Command::new("busctl")
        .args([
            &format!("--address={address}"),
            "introspect",
            "org.kde.kapsule",
            path,
            interface,
        ])
        .output()
        .expect("busctl is installed (systemd's, on Debian)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let name = cols.next()?.strip_prefix('.')?;
            let kind = cols.next()?;
            let signature = cols.next()?;
            let result = cols.next().unwrap_or("");
            Some((
                name.to_owned(),
                kind.to_owned(),
                signature.to_owned(),
                result.to_owned(),
            ))
        })
        .collect()
}

fn check_members(address: &str, path: &str, interface: &str, expected: &[(&str, &str, &str, &str)]) {
    let served = busctl_members(address, path, interface);
    for (name, kind, signature, result) in expected {
        let found = served
            .iter()
            .find(|m| m.0 == *name)
            .unwrap_or_else(|| panic!("{interface}.{name} is not served; served: {served:?}"));
        assert_eq!(
            (found.1.as_str(), found.2.as_str()),
            (*kind, *signature),
            "{interface}.{name}"
        );
        if *kind != "property" {
            assert_eq!(found.3, *result, "{interface}.{name} result");
        }
    }
}

/// The `<interface name="...">` element of an introspection document.
fn interface_block(xml: &str, interface: &str) -> String {
    let start = xml
        .find(&format!("<interface name=\"{interface}\">"))
        .unwrap_or_else(|| panic!("{interface} missing from:\n{xml}"));
    let end = start + xml[start..].find("</interface>").unwrap() + "</interface>".len();
    // Back to the start of its line, so its indentation is kept.
    let line_start = xml[..start].rfind('\n').map_or(0, |i| i + 1);
    xml[line_start..end].to_owned()
}

/// The checked-in file for `interface`: the standard header, the block, and nothing else.
fn document(block: &str) -> String {
    format!(
        "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \
         \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n\
         <!-- Generated from the daemon's own introspection by tests/integration/tests/contract.rs\n     \
         (KAPSULE_BLESS=1); that test fails when this file and the daemon disagree. -->\n\
         <node>\n{block}\n</node>\n"
    )
}

async fn introspect(test: &DaemonTest, path: &str) -> String {
    let proxy = zbus::fdo::IntrospectableProxy::builder(&test.client)
        .destination("org.kde.kapsule")
        .path(path)
        .build()
        .await
        .unwrap();
    proxy.introspect().await.unwrap()
}

fn check_file(interface: &str, served: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../dbus/{interface}.xml"));
    let expected = document(&interface_block(served, interface));
    if std::env::var_os("KAPSULE_BLESS").is_some() {
        std::fs::write(&path, &expected).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (generate it with KAPSULE_BLESS=1)", path.display()));
    assert!(
        checked_in == expected,
        "{} differs from what the daemon serves; if the change is intended, regenerate with \
         KAPSULE_BLESS=1 and review the diff. Served:\n{expected}",
        path.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_api_is_the_contract() {
    let test = daemon_test().await;
    let address = test.bus.address.clone();

    // An operation object to look at: a refresh with nothing to refresh ends at once and stays
    // on the bus for a while.
    let op = test.manager.refresh_images("").await.unwrap();
    let op_path = op.as_str().to_owned();

    let (a, p) = (address.clone(), op_path.clone());
    tokio::task::spawn_blocking(move || {
        check_members(&a, "/org/kde/kapsule", "org.kde.kapsule.Manager", MANAGER);
        check_members(&a, &p, "org.kde.kapsule.Operation", OPERATION);
    })
    .await
    .unwrap();

    // The object manager announces operations.
    let manager_xml = introspect(&test, "/org/kde/kapsule").await;
    assert!(manager_xml.contains("<interface name=\"org.freedesktop.DBus.ObjectManager\">"));

    check_file("org.kde.kapsule.Manager", &manager_xml);
    check_file("org.kde.kapsule.Operation", &introspect(&test, &op_path).await);

    // Nothing but the documented interface of ours on the manager object itself (children,
    // which zbus lists inline, come after the first <node name=...>).
    let own = &manager_xml[..manager_xml.find("<node name=").unwrap_or(manager_xml.len())];
    let names: BTreeSet<&str> = own
        .match_indices("<interface name=\"")
        .map(|(i, m)| {
            let rest = &own[i + m.len()..];
            &rest[..rest.find('"').unwrap()]
        })
        .filter(|n| n.starts_with("org.kde."))
        .collect();
    assert_eq!(names, BTreeSet::from(["org.kde.kapsule.Manager"]));
}

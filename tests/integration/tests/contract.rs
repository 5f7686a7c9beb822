//! The wire contract: every member the original daemon had, with its exact signature, as
//! `busctl introspect` shows it on the live daemon; the interface XML checked in under `dbus/` is
//! exactly what the daemon serves; and every reply and signal the daemon sends carries the
//! signature that XML declares, read from the message itself (as Qt's generated proxies check
//! it), so a reply that introspection calls one struct but that carries its fields as separate
//! values cannot pass.
//!
//! After an intended change of the API (or of its doc comments), regenerate the XML with
//! `KAPSULE_BLESS=1 cargo nextest run -p kapsule-integration-tests --test contract` and review
//! the diff.

use std::collections::BTreeSet;
use std::process::Command;

use kapsule_integration_tests::{
    DaemonTest, ImageGuard, InstanceGuard, TestUser, daemon_test, kapsule_signals, sh, test_user, tiny_image_files,
    unique_name,
};

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
    ("PrepareEnter", "method", "sass", "(bsas)"),
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

/// The body signature of a message exactly as its header carries it on the wire.
///
/// Read from the message's bytes, not from zbus's parsed header: zbus keeps a body of several
/// values as one structure, so its signature prints `(sssss)` both for five strings and for one
/// struct of five, the very difference Qt refuses.
fn wire_signature(msg: &zbus::Message) -> String {
    let bytes = msg.data().bytes();
    let little = match bytes[0] {
        b'l' => true,
        b'B' => false,
        other => panic!("not a D-Bus message: endianness byte {other}"),
    };
    let u32_at = |at: usize| {
        let b: [u8; 4] = bytes[at..at + 4].try_into().unwrap();
        if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let align = |at: usize, to: usize| at.div_ceil(to) * to;
    // Fixed part: 12 bytes, then the fields array's length, then the fields, each 8-aligned:
    // a code byte and a variant (its one-type signature, then the value).
    let end = 16 + u32_at(12) as usize;
    let mut at = 16;
    while at < end {
        at = align(at, 8);
        let code = bytes[at];
        let type_len = bytes[at + 1] as usize;
        let value_type = bytes[at + 2];
        at += 2 + type_len + 1;
        match value_type {
            b'g' => {
                let len = bytes[at] as usize;
                let value = std::str::from_utf8(&bytes[at + 1..at + 1 + len]).unwrap();
                if code == 8 {
                    return value.to_owned();
                }
                at += 1 + len + 1;
            }
            b's' | b'o' => {
                at = align(at, 4);
                at += 4 + u32_at(at) as usize + 1;
            }
            b'u' => at = align(at, 4) + 4,
            other => panic!("unexpected header field type {}", other as char),
        }
    }
    String::new() // no signature field: an empty body
}

/// The checked-in XML of each interface, and what a test has seen checked against it.
struct Declared {
    manager: zbus_xml::Interface<'static>,
    operation: zbus_xml::Interface<'static>,
    /// `Interface.Member` of every reply (success, or in-band failure) and signal checked.
    replied: BTreeSet<String>,
    /// `Interface.Member` of every error reply checked.
    refused: BTreeSet<String>,
}

fn read_interface(interface: &str) -> zbus_xml::Interface<'static> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../dbus/{interface}.xml"));
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let node = zbus_xml::Node::from_reader(file).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    node.interfaces()
        .iter()
        .find(|i| i.name().as_str() == interface)
        .unwrap_or_else(|| panic!("{} declares no {interface}", path.display()))
        .to_owned()
}

/// The concatenated types of `args`, those in `direction` (all, for a signal's).
fn signature_of(args: &[zbus_xml::Arg<'_>], direction: Option<zbus_xml::ArgDirection>) -> String {
    args.iter()
        .filter(|a| direction.is_none() || a.direction() == direction)
        .map(|a| a.ty().to_string())
        .collect()
}

impl Declared {
    fn read() -> Declared {
        Declared {
            manager: read_interface(kapsule_dbus::MANAGER_INTERFACE),
            operation: read_interface(kapsule_dbus::OPERATION_INTERFACE),
            replied: BTreeSet::new(),
            refused: BTreeSet::new(),
        }
    }

    fn interface(&self, name: &str) -> &zbus_xml::Interface<'static> {
        match name {
            kapsule_dbus::MANAGER_INTERFACE => &self.manager,
            kapsule_dbus::OPERATION_INTERFACE => &self.operation,
            other => panic!("a message of an undeclared interface: {other}"),
        }
    }

    /// The out-arguments of method `member` as the XML declares them.
    fn out_signature(&self, interface: &str, member: &str) -> String {
        let method = self
            .interface(interface)
            .methods()
            .find(|m| m.name().as_str() == member)
            .unwrap_or_else(|| panic!("{interface}.{member} is not in the checked-in XML"));
        signature_of(method.args(), Some(zbus_xml::ArgDirection::Out))
    }

    /// A method's reply, as the message carries it.
    fn reply(&mut self, interface: &str, member: &str, reply: &zbus::Message) {
        self.reply_signature(interface, member, &wire_signature(reply));
    }

    /// A method's reply signature as another client (busctl) read it from the message.
    fn reply_signature(&mut self, interface: &str, member: &str, got: &str) {
        let declared = self.out_signature(interface, member);
        assert_eq!(
            got, declared,
            "{interface}.{member}: the reply's signature is not the declared one"
        );
        self.replied.insert(format!("{interface}.{member}"));
    }

    /// An expected failure: a named Kapsule error whose body is its message, one string.
    fn error(&mut self, interface: &str, member: &str, result: zbus::Result<zbus::Message>, name: &str) {
        let Err(zbus::Error::MethodError(got, text, message)) = result else {
            panic!("{interface}.{member} should have failed with {name}: {result:?}");
        };
        assert_eq!(
            got.as_str(),
            format!("org.kde.kapsule.Error.{name}"),
            "{member}: {text:?}"
        );
        assert_eq!(wire_signature(&message), "s", "{member}: an error's body");
        assert!(
            text.as_deref().is_some_and(|t| !t.is_empty()),
            "{member}: an error says why"
        );
        self.refused.insert(format!("{interface}.{member}"));
    }

    /// A signal, checked against the arguments the XML declares for it.
    fn signal(&mut self, msg: &zbus::Message) {
        let header = msg.header();
        let interface = header.interface().expect("a signal has an interface").to_string();
        if !interface.starts_with("org.kde.kapsule.") {
            return; // PropertiesChanged, InterfacesAdded: the standard interfaces' own.
        }
        let member = header.member().expect("a signal has a member").to_string();
        let signal = self
            .interface(&interface)
            .signals()
            .find(|s| s.name().as_str() == member)
            .unwrap_or_else(|| panic!("signal {interface}.{member} is not in the checked-in XML"));
        let declared = signature_of(signal.args(), None);
        let got = wire_signature(msg);
        assert_eq!(
            got, declared,
            "signal {interface}.{member}: its signature is not the declared one"
        );
        self.replied.insert(format!("{interface}.{member}"));
    }

    /// A property read with `Properties.Get`: a variant holding the declared type.
    fn property(&mut self, interface: &str, name: &str, reply: &zbus::Message) {
        assert_eq!(wire_signature(reply), "v", "Get({interface}.{name})");
        let value: zbus::OwnedVariant = reply.body().deserialize().unwrap();
        let declared = self
            .interface(interface)
            .properties()
            .find(|p| p.name().as_str() == name)
            .unwrap_or_else(|| panic!("property {interface}.{name} is not in the checked-in XML"))
            .ty()
            .to_string();
        assert_eq!(
            value.value_signature().to_string(),
            declared,
            "property {interface}.{name}"
        );
        self.replied.insert(format!("{interface}.{name}"));
    }

    /// Every member of `interface` (methods, signals, properties) that the XML declares.
    fn members(&self, interface: &str) -> BTreeSet<String> {
        let i = self.interface(interface);
        let names = i
            .methods()
            .map(|m| m.name().to_string())
            .chain(i.signals().map(|s| s.name().to_string()))
            .chain(i.properties().map(|p| p.name().to_string()));
        names.map(|n| format!("{interface}.{n}")).collect()
    }
}

/// A Manager call as raw messages: the reply, or the error with its message.
async fn call<B>(test: &DaemonTest, method: &str, body: &B) -> zbus::Result<zbus::Message>
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
{
    test.client
        .call_method(
            Some(kapsule_dbus::BUS_NAME),
            kapsule_dbus::MANAGER_PATH,
            Some(kapsule_dbus::MANAGER_INTERFACE),
            method,
            body,
        )
        .await
}

/// A Manager call that starts an operation: its reply checked, then every signal until the
/// operation's `Completed`, each checked. Returns the operation's path and whether it succeeded.
async fn operation<B>(
    test: &DaemonTest,
    declared: &mut Declared,
    signals: &mut zbus::MessageStream,
    method: &str,
    body: &B,
) -> (String, bool)
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
{
    use futures_util::StreamExt;
    let reply = call(test, method, body)
        .await
        .unwrap_or_else(|e| panic!("{method}: {e}"));
    declared.reply(kapsule_dbus::MANAGER_INTERFACE, method, &reply);
    let path: zbus::OwnedObjectPath = reply.body().deserialize().unwrap();
    let wait = tokio::time::timeout(std::time::Duration::from_secs(200), async {
        while let Some(Ok(msg)) = signals.next().await {
            declared.signal(&msg);
            let header = msg.header();
            if header.path().map(|p| p.as_str()) == Some(path.as_str())
                && header.member().map(|m| m.as_str()) == Some("Completed")
            {
                let (success, _message): (bool, String) = msg.body().deserialize().unwrap();
                return success;
            }
        }
        panic!("the signal stream ended");
    });
    let success = wait.await.unwrap_or_else(|_| panic!("{method}: no Completed"));
    (path.as_str().to_owned(), success)
}

/// `busctl --json=short call` of a Manager method as `user`: the reply's signature as busctl
/// (libsystemd) reads it from the message, and its data.
async fn busctl_json(
    test: &DaemonTest,
    user: &TestUser,
    method: &str,
    signature: &str,
    args: &[&str],
) -> (String, serde_json::Value) {
    let mut command = user.call_manager(&test.bus, &["--json=short"], method, signature, args);
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{method}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (reply["type"].as_str().unwrap().to_owned(), reply["data"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_and_signal_carries_the_declared_signature() {
    use kapsule_dbus::{MANAGER_INTERFACE as MANAGER_IF, OPERATION_INTERFACE as OPERATION_IF};
    use std::collections::HashMap;

    let test = daemon_test().await;
    let user = test_user();
    let mut declared = Declared::read();
    let mut signals = kapsule_signals(&test.client).await;
    let name = unique_name("wire");
    let missing = unique_name("wire-none");
    let _guard = InstanceGuard(name.clone());
    let no_options: HashMap<&str, zbus::Variant<'_>> = HashMap::new();

    // Queries.
    for method in [
        "ListOperations",
        "GetCreateSchema",
        "GetConfig",
        "ListContainers",
        "ListImages",
    ] {
        let reply = call(&test, method, &())
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        declared.reply(MANAGER_IF, method, &reply);
    }
    let version = test
        .client
        .call_method(
            Some(kapsule_dbus::BUS_NAME),
            kapsule_dbus::MANAGER_PATH,
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &(MANAGER_IF, "Version"),
        )
        .await
        .unwrap();
    declared.property(MANAGER_IF, "Version", &version);

    // Images: an import, a refresh, a delete; then the operation object's own members.
    let dir = tempfile::tempdir().unwrap();
    tiny_image_files(dir.path());
    let alias = unique_name("wire-img");
    let _image = ImageGuard(alias.clone());
    let import = (dir.path().to_str().unwrap(), alias.as_str());
    let (_, imported) = operation(&test, &mut declared, &mut signals, "ImportImage", &import).await;
    assert!(imported, "the import succeeded");
    let (refresh, _) = operation(&test, &mut declared, &mut signals, "RefreshImages", &("",)).await;
    let (_, deleted) = operation(&test, &mut declared, &mut signals, "DeleteImage", &(alias.as_str(),)).await;
    assert!(deleted, "the image was deleted");
    for property in ["Id", "Type", "Description", "Target", "Status", "ErrorMessage"] {
        let reply = test
            .client
            .call_method(
                Some(kapsule_dbus::BUS_NAME),
                refresh.as_str(),
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &(OPERATION_IF, property),
            )
            .await
            .unwrap_or_else(|e| panic!("Get({property}): {e}"));
        declared.property(OPERATION_IF, property, &reply);
    }
    let cancel = test
        .client
        .call_method(
            Some(kapsule_dbus::BUS_NAME),
            refresh.as_str(),
            Some(OPERATION_IF),
            "Cancel",
            &(),
        )
        .await
        .unwrap();
    declared.reply(OPERATION_IF, "Cancel", &cancel);

    // A container's life, with the methods that need one.
    let image = format!("local:{}", test.env.image);
    let create = (name.as_str(), image.as_str(), &no_options);
    let (_, created) = operation(&test, &mut declared, &mut signals, "CreateContainer", &create).await;
    assert!(created, "the container was created");
    let info = call(&test, "GetContainerInfo", &(name.as_str(),)).await.unwrap();
    declared.reply(MANAGER_IF, "GetContainerInfo", &info);
    let fields: (String, String, String, String, String) = info.body().deserialize().unwrap();
    assert_eq!((fields.0.as_str(), fields.1.as_str()), (name.as_str(), "Running"));
    let set_up = call(&test, "IsUserSetup", &(name.as_str(), user.uid)).await.unwrap();
    declared.reply(MANAGER_IF, "IsUserSetup", &set_up);
    let home = user.home.to_str().unwrap();
    let setup = (name.as_str(), user.uid, user.gid, user.name.as_str(), home);
    let (_, was_set_up) = operation(&test, &mut declared, &mut signals, "SetupUser", &setup).await;
    assert!(was_set_up, "the user was set up");

    // PrepareEnter and Enter as the user, read by busctl: their replies carry descriptors and
    // the caller's own session.
    let (signature, data) = busctl_json(&test, &user, "PrepareEnter", "sass", &[&name, "1", "true", ""]).await;
    declared.reply_signature(MANAGER_IF, "PrepareEnter", &signature);
    assert_eq!(
        data,
        serde_json::json!([[true, "", ["kapsule", "enter", name, "--", "true"]]])
    );
    // Enter carries descriptors, which busctl cannot send: as root (the daemon tests' client),
    // the session's standard streams on /dev/null; it ends at once, and the channel says so.
    let null = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .unwrap();
    let stdio: HashMap<&str, zbus::Fd<'_>> = ["stdin", "stdout", "stderr"]
        .into_iter()
        .map(|k| (k, zbus::Fd::from(std::os::fd::AsFd::as_fd(&null))))
        .collect();
    let enter = (
        name.as_str(),
        vec!["true"],
        "",
        HashMap::<&str, &str>::new(),
        stdio,
        &no_options,
    );
    let entered = call(&test, "Enter", &enter)
        .await
        .unwrap_or_else(|e| panic!("Enter: {e}"));
    declared.reply(MANAGER_IF, "Enter", &entered);
    let (container, fds): (String, HashMap<String, zbus::OwnedFd>) = entered.body().deserialize().unwrap();
    assert_eq!(container, name);
    let channel = std::os::fd::OwnedFd::from(fds.into_iter().find(|(k, _)| k == "channel").expect("a channel").1);
    let status = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(channel), &mut text).unwrap();
        text
    });
    assert_eq!(status.await.unwrap(), "exit 0\n", "the session ran and ended");
    // In-band failure: still one struct.
    let prepared = call(&test, "PrepareEnter", &(missing.as_str(), Vec::<&str>::new(), ""))
        .await
        .unwrap();
    declared.reply(MANAGER_IF, "PrepareEnter", &prepared);
    let (success, message, argv): (bool, String, Vec<String>) = prepared.body().deserialize().unwrap();
    assert!(
        !success && message.contains("does not exist") && argv.is_empty(),
        "{message}"
    );

    // Undo: a snapshot taken, listed, restored, cloned from, removed; the container reset.
    let copy = unique_name("wire-copy");
    let _copy = InstanceGuard(copy.clone());
    let snapshot = (name.as_str(), "wire");
    let (_, taken) = operation(&test, &mut declared, &mut signals, "CreateSnapshot", &snapshot).await;
    assert!(taken, "CreateSnapshot");
    let listed = call(&test, "ListSnapshots", &(name.as_str(),)).await.unwrap();
    declared.reply(MANAGER_IF, "ListSnapshots", &listed);
    let listed: Vec<(String, String, bool)> = listed.body().deserialize().unwrap();
    assert_eq!(listed.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(), ["wire"]);
    // The details of one container: an a{sv} with the info row, options and snapshots.
    let details = call(&test, "GetContainerDetails", &(name.as_str(),)).await.unwrap();
    declared.reply(MANAGER_IF, "GetContainerDetails", &details);
    let details: HashMap<String, zbus::OwnedVariant> = details.body().deserialize().unwrap();
    assert_eq!(String::try_from(details["name"].try_clone().unwrap()).unwrap(), name);
    assert_eq!(
        u32::try_from(&details["owner"]).unwrap(),
        0,
        "the tests' client is root"
    );
    let snapshots: Vec<(String, String, bool)> = details["snapshots"].try_clone().unwrap().try_into().unwrap();
    assert_eq!(snapshots.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(), ["wire"]);
    assert!(bool::try_from(&details["host_rootfs"]).is_ok(), "{details:?}");
    assert_eq!(
        bool::try_from(&details["unprivileged"]).ok(),
        Some(false),
        "a boolean, false for a container made without the option: {details:?}"
    );
    let (_, restored) = operation(&test, &mut declared, &mut signals, "RestoreSnapshot", &snapshot).await;
    assert!(restored, "RestoreSnapshot");
    let clone = (name.as_str(), copy.as_str(), "wire");
    let (_, cloned) = operation(&test, &mut declared, &mut signals, "CloneContainer", &clone).await;
    assert!(cloned, "CloneContainer");
    let (_, removed) = operation(&test, &mut declared, &mut signals, "DeleteSnapshot", &snapshot).await;
    assert!(removed, "DeleteSnapshot");
    // An upgrade with no apt source (the test network reaches no mirror): nothing to do, done.
    let (code, out) = sh(
        &test.env.incus,
        &name,
        "rm -rf /etc/apt/sources.list /etc/apt/sources.list.d",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let upgrade = (name.as_str(), &no_options);
    let (_, upgraded) = operation(&test, &mut declared, &mut signals, "UpgradeContainer", &upgrade).await;
    assert!(upgraded, "UpgradeContainer");
    let (_, reset) = operation(
        &test,
        &mut declared,
        &mut signals,
        "ResetContainer",
        &(name.as_str(), ""),
    )
    .await;
    assert!(reset, "ResetContainer");

    // Stop, start again, refuse to delete it running (no force), kill it, delete it.
    let gently = (name.as_str(), false);
    let (_, done) = operation(&test, &mut declared, &mut signals, "StopContainer", &gently).await;
    assert!(done, "StopContainer");
    let (_, started) = operation(&test, &mut declared, &mut signals, "StartContainer", &(name.as_str(),)).await;
    assert!(started, "the container started");
    let delete = call(&test, "DeleteContainer", &gently).await;
    declared.error(MANAGER_IF, "DeleteContainer", delete, "Failed");
    let (_, stopped) = operation(
        &test,
        &mut declared,
        &mut signals,
        "StopContainer",
        &(name.as_str(), true),
    )
    .await;
    assert!(stopped, "the container was killed");
    let (_, done) = operation(&test, &mut declared, &mut signals, "DeleteContainer", &gently).await;
    assert!(done, "DeleteContainer");

    // Expected failures: each a named error whose body is its message.
    let refusals: [(&str, zbus::Result<zbus::Message>, &str); 20] = [
        (
            "GetContainerDetails",
            call(&test, "GetContainerDetails", &(missing.as_str(),)).await,
            "NotFound",
        ),
        (
            "UpgradeContainer",
            call(&test, "UpgradeContainer", &(missing.as_str(), &no_options)).await,
            "NotFound",
        ),
        (
            "ListSnapshots",
            call(&test, "ListSnapshots", &(missing.as_str(),)).await,
            "NotFound",
        ),
        (
            "CreateSnapshot",
            call(&test, "CreateSnapshot", &(missing.as_str(), "a/b")).await,
            "InvalidArgument",
        ),
        (
            "DeleteSnapshot",
            call(&test, "DeleteSnapshot", &(missing.as_str(), "wire")).await,
            "NotFound",
        ),
        (
            "RestoreSnapshot",
            call(&test, "RestoreSnapshot", &(missing.as_str(), "wire")).await,
            "NotFound",
        ),
        (
            "ResetContainer",
            call(&test, "ResetContainer", &(missing.as_str(), "")).await,
            "NotFound",
        ),
        (
            "CloneContainer",
            call(&test, "CloneContainer", &(missing.as_str(), "kt-wire-x", "")).await,
            "NotFound",
        ),
        (
            "GetContainerInfo",
            call(&test, "GetContainerInfo", &(missing.as_str(),)).await,
            "NotFound",
        ),
        (
            "GetContainerInfo",
            call(&test, "GetContainerInfo", &("not a name",)).await,
            "InvalidArgument",
        ),
        (
            "IsUserSetup",
            call(&test, "IsUserSetup", &(missing.as_str(), 0u32)).await,
            "NotFound",
        ),
        (
            "SetupUser",
            call(
                &test,
                "SetupUser",
                &(missing.as_str(), user.uid, user.gid, user.name.as_str(), home),
            )
            .await,
            "NotFound",
        ),
        (
            "CreateContainer",
            call(&test, "CreateContainer", &("not a name", image.as_str(), &no_options)).await,
            "InvalidArgument",
        ),
        (
            "DeleteContainer",
            call(&test, "DeleteContainer", &(missing.as_str(), true)).await,
            "NotFound",
        ),
        (
            "StartContainer",
            call(&test, "StartContainer", &(missing.as_str(),)).await,
            "NotFound",
        ),
        (
            "StopContainer",
            call(&test, "StopContainer", &(missing.as_str(), true)).await,
            "NotFound",
        ),
        (
            "ImportImage",
            call(&test, "ImportImage", &("relative/dir", "kt-x")).await,
            "InvalidArgument",
        ),
        (
            "DeleteImage",
            call(&test, "DeleteImage", &(missing.as_str(),)).await,
            "NotFound",
        ),
        (
            "RefreshImages",
            call(&test, "RefreshImages", &("bogus:x",)).await,
            "InvalidArgument",
        ),
        (
            "Enter",
            call(
                &test,
                "Enter",
                &(
                    missing.as_str(),
                    Vec::<&str>::new(),
                    "",
                    HashMap::<&str, &str>::new(),
                    HashMap::<&str, zbus::Fd<'_>>::new(),
                    &no_options,
                ),
            )
            .await,
            "InvalidArgument",
        ),
    ];
    for (method, result, error) in refusals {
        declared.error(MANAGER_IF, method, result, error);
    }

    // Every declared member was met: each method replied, each property was read, and of the
    // signals at least those every create and operation sends.
    let mut unchecked: BTreeSet<String> = declared
        .members(MANAGER_IF)
        .union(&declared.members(OPERATION_IF))
        .filter(|m| !declared.replied.contains(*m))
        .cloned()
        .collect();
    // Signals that only some operations send (progress bars: a pull, a long import).
    for optional in [
        "ProgressStarted",
        "ProgressUpdate",
        "ProgressTextUpdate",
        "ProgressCompleted",
    ] {
        unchecked.remove(&format!("{OPERATION_IF}.{optional}"));
    }
    assert!(unchecked.is_empty(), "members never checked on the wire: {unchecked:?}");
}

/// Each member's signatures, in one comparable line: `method Name in -> out`, `signal Name args`,
/// `property Name type`.
fn member_lines(interface: &zbus_xml::Interface<'_>) -> BTreeSet<String> {
    use zbus_xml::ArgDirection::{In, Out};
    let methods = interface.methods().map(|m| {
        let (i, o) = (signature_of(m.args(), Some(In)), signature_of(m.args(), Some(Out)));
        format!("method {} {i} -> {o}", m.name())
    });
    let signals = interface
        .signals()
        .map(|s| format!("signal {} {}", s.name(), signature_of(s.args(), None)));
    let properties = interface
        .properties()
        .map(|p| format!("property {} {}", p.name(), p.ty()));
    methods.chain(signals).chain(properties).collect()
}

/// The original daemon's interfaces as its Qt clients generate their proxies from them
/// (tests/qt-client/original) are all in ours, member by member with the same signatures; ours
/// may only add members.
#[test]
fn every_member_of_the_original_is_declared_alike() {
    for interface in [kapsule_dbus::MANAGER_INTERFACE, kapsule_dbus::OPERATION_INTERFACE] {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../qt-client/original/{interface}.xml"));
        let node = zbus_xml::Node::from_reader(std::fs::File::open(&path).unwrap()).unwrap();
        let original = member_lines(
            node.interfaces()
                .iter()
                .find(|i| i.name().as_str() == interface)
                .unwrap(),
        );
        let ours = member_lines(&read_interface(interface));
        let missing: Vec<&String> = original.difference(&ours).collect();
        assert!(
            missing.is_empty(),
            "{interface}: not declared as the original declares it: {missing:?}"
        );
        assert!(
            original.len() >= 7,
            "{interface}: the original's XML was read ({original:?})"
        );
    }
}

//! The container creation options: one definition that drives validation, the JSON schema that
//! `GetCreateSchema` returns (same shape as the original daemon's) and the CLI flags.
//!
//! Values arrive as `a{sv}` from clients and as JSON from an image's default options; both are
//! checked against [`OPTIONS`], merged (schema defaults < image defaults < client values) and
//! resolved into [`CreateOptions`], or rejected with an [`OptionsError`] before any work starts.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Serialize;
use zbus::{OwnedVariant, Variant};

/// The type of an option's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionKind {
    Boolean,
    /// A list of host directory paths.
    PathList,
    /// One host directory path; empty means none.
    Path,
    /// Package names for the container's own package manager.
    Packages,
    /// Shell commands, each run by `sh -c` as root in the container.
    Commands,
}

impl OptionKind {
    /// True for the kinds whose value is a list of strings.
    pub fn is_list(self) -> bool {
        matches!(self, OptionKind::PathList | OptionKind::Packages | OptionKind::Commands)
    }
}

/// One option of the schema.
#[derive(Clone, Copy, Debug)]
pub struct OptionSpec {
    pub key: &'static str,
    pub section: &'static str,
    pub kind: OptionKind,
    pub title: &'static str,
    pub description: &'static str,
    /// The default of a boolean (the others default to empty).
    pub default: bool,
    /// `(key, value)`: this option, when on (true, or a path given), needs that boolean option to
    /// have that value. An unset required option is set to it; an explicit contrary value is an
    /// error.
    pub requires: Option<(&'static str, bool)>,
}

/// The sections, in schema order: `(id, title)`.
pub const SECTIONS: &[(&str, &str)] = &[
    ("dbus", "D-Bus Integration"),
    ("mounts", "Host Mounts"),
    ("gpu", "GPU"),
    ("setup", "Setup at Creation"),
    ("lifetime", "Lifetime"),
    ("security", "Security"),
];

/// Every option, in schema order.
pub const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        key: "session_mode",
        section: "dbus",
        kind: OptionKind::Boolean,
        title: "Session Mode",
        description: "Container gets its own D-Bus session bus",
        default: false,
        requires: None,
    },
    OptionSpec {
        key: "dbus_mux",
        section: "dbus",
        kind: OptionKind::Boolean,
        title: "D-Bus Multiplexer",
        description: "Enable D-Bus multiplexer for hybrid host/container access (implies Session Mode)",
        default: false,
        requires: Some(("session_mode", true)),
    },
    OptionSpec {
        key: "host_rootfs",
        section: "mounts",
        kind: OptionKind::Boolean,
        title: "Mount Host Filesystem",
        description: "Mount entire host rootfs at /.kapsule/host",
        default: true,
        requires: None,
    },
    OptionSpec {
        key: "mount_home",
        section: "mounts",
        kind: OptionKind::Boolean,
        title: "Mount Home Directory",
        description: "Mount the user's home directory in the container",
        default: true,
        requires: None,
    },
    OptionSpec {
        key: "home",
        section: "mounts",
        kind: OptionKind::Path,
        title: "Separate Home",
        description: "Host directory used as the user's home in the container, so its dotfiles stay apart from the host home",
        default: false,
        requires: Some(("mount_home", true)),
    },
    OptionSpec {
        key: "custom_mounts",
        section: "mounts",
        kind: OptionKind::PathList,
        title: "Additional Mounts",
        description: "Extra host directories to mount in the container",
        default: false,
        requires: None,
    },
    OptionSpec {
        key: "gpu",
        section: "gpu",
        kind: OptionKind::Boolean,
        title: "GPU Passthrough",
        description: "Pass through GPU devices to the container",
        default: true,
        requires: None,
    },
    OptionSpec {
        key: "nvidia_drivers",
        section: "gpu",
        kind: OptionKind::Boolean,
        title: "NVIDIA Driver Injection",
        description: "Inject host NVIDIA userspace drivers on each start",
        default: false,
        requires: Some(("gpu", true)),
    },
    OptionSpec {
        key: "pre_init_hooks",
        section: "setup",
        kind: OptionKind::Commands,
        title: "Commands Before Packages",
        description: "Commands run as root in the container at creation, before the packages are installed",
        default: false,
        requires: None,
    },
    OptionSpec {
        key: "additional_packages",
        section: "setup",
        kind: OptionKind::Packages,
        title: "Additional Packages",
        description: "Packages installed by the container's package manager at creation",
        default: false,
        requires: None,
    },
    OptionSpec {
        key: "init_hooks",
        section: "setup",
        kind: OptionKind::Commands,
        title: "Commands After Packages",
        description: "Commands run as root in the container at creation, after the packages are installed",
        default: false,
        requires: None,
    },
    OptionSpec {
        key: "ephemeral",
        section: "lifetime",
        kind: OptionKind::Boolean,
        title: "Ephemeral",
        description: "Remove the container when the last session in it ends",
        default: false,
        requires: None,
    },
    OptionSpec {
        key: "unprivileged",
        section: "security",
        kind: OptionKind::Boolean,
        title: "Unprivileged",
        description: "Run the container in a user namespace: root in it is not root on the host, and its owner needs no administrator to use it",
        default: false,
        requires: None,
    },
];

/// The most custom mounts one container may have, and the longest path accepted.
pub const MAX_CUSTOM_MOUNTS: usize = 64;
pub const MAX_PATH_LEN: usize = 4096;

/// The most packages one create may ask for, and the longest name accepted.
pub const MAX_PACKAGES: usize = 512;
pub const MAX_PACKAGE_LEN: usize = 255;

/// The most hooks of one kind, and the longest hook accepted.
pub const MAX_HOOKS: usize = 64;
pub const MAX_HOOK_LEN: usize = 64 * 1024;

/// The spec of `key`, if it is an option.
pub fn spec(key: &str) -> Option<&'static OptionSpec> {
    OPTIONS.iter().find(|o| o.key == key)
}

/// A value of an option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptionValue {
    Bool(bool),
    /// The value of a path list, a package list or a command list.
    Paths(Vec<String>),
    /// The value of a single path (empty: none).
    Text(String),
}

/// The options of one container, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateOptions {
    pub session_mode: bool,
    pub dbus_mux: bool,
    pub host_rootfs: bool,
    pub mount_home: bool,
    /// Absolute paths, or `~/`-relative ones expanded per user when they enter.
    pub custom_mounts: Vec<String>,
    pub gpu: bool,
    pub nvidia_drivers: bool,
    /// The host directory that is each user's home inside (absolute, or `~/`-relative, expanded
    /// per user); empty: their host home.
    pub home: String,
    /// Run at creation, in this order: `pre_init_hooks`, the install of `additional_packages`,
    /// `init_hooks`.
    pub pre_init_hooks: Vec<String>,
    pub additional_packages: Vec<String>,
    pub init_hooks: Vec<String>,
    /// Removed by the daemon once nobody is in it any more (`kapsule run`).
    pub ephemeral: bool,
    /// In a user namespace: the owner's uid and gid mapped to themselves, every other id
    /// shifted, so root in it is not root on the host.
    pub unprivileged: bool,
}

/// Why a set of options was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptionsError {
    /// Keys that are not options (sorted).
    UnknownKeys(Vec<String>),
    /// A value of the wrong type.
    WrongType {
        key: String,
        expected: &'static str,
        got: String,
    },
    /// A package name or command that is not acceptable.
    BadEntry {
        key: String,
        entry: String,
        reason: &'static str,
    },
    /// A path that is not acceptable as a mount source.
    BadPath {
        key: String,
        path: String,
        reason: &'static str,
    },
    /// Too many entries in a list.
    TooMany { key: String, max: usize },
    /// An option's requirement is contradicted by an explicit value.
    Conflict { key: String, requires: String, value: bool },
    /// Two options that cannot go together for another reason.
    Incompatible(&'static str),
    /// Image default options that are not a JSON object.
    BadDefaults(String),
}

impl fmt::Display for OptionsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionsError::UnknownKeys(keys) => {
                let known: Vec<&str> = OPTIONS.iter().map(|o| o.key).collect();
                write!(
                    f,
                    "Unknown options: {} (known options: {})",
                    keys.join(", "),
                    known.join(", ")
                )
            }
            OptionsError::WrongType { key, expected, got } => write!(f, "Option '{key}' must be {expected}, got {got}"),
            OptionsError::BadPath { key, path, reason } => write!(f, "Option '{key}': path {path} {reason}"),
            OptionsError::BadEntry { key, entry, reason } => write!(f, "Option '{key}': {entry} {reason}"),
            OptionsError::TooMany { key, max } => write!(f, "Option '{key}' takes at most {max} entries"),
            OptionsError::Conflict { key, requires, value } => {
                write!(f, "Option '{key}' requires '{requires}' to be {value}")
            }
            OptionsError::Incompatible(why) => f.write_str(why),
            OptionsError::BadDefaults(why) => write!(f, "The image's default options are invalid: {why}"),
        }
    }
}

impl std::error::Error for OptionsError {}

impl From<OptionsError> for crate::Error {
    fn from(e: OptionsError) -> Self {
        crate::Error::InvalidArgument(e.to_string())
    }
}

/// Checks and converts client options (`a{sv}`). Variants nested in variants are unwrapped.
pub fn from_dbus(options: &HashMap<String, OwnedVariant>) -> Result<BTreeMap<String, OptionValue>, OptionsError> {
    let mut unknown: Vec<String> = options.keys().filter(|k| spec(k).is_none()).cloned().collect();
    if !unknown.is_empty() {
        unknown.sort();
        return Err(OptionsError::UnknownKeys(unknown));
    }
    let mut out = BTreeMap::new();
    for (key, value) in options {
        let spec = spec(key).expect("checked above");
        out.insert(key.clone(), convert_dbus(spec, value)?);
    }
    Ok(out)
}

fn unwrap_variant<'a>(mut value: &'a Variant<'a>) -> &'a Variant<'a> {
    while let Variant::Variant(inner) = value {
        value = inner;
    }
    value
}

fn convert_dbus(spec: &OptionSpec, value: &Variant<'_>) -> Result<OptionValue, OptionsError> {
    let value = unwrap_variant(value);
    let wrong = |expected| OptionsError::WrongType {
        key: spec.key.to_owned(),
        expected,
        got: format!("D-Bus type '{}'", value.value_signature()),
    };
    match spec.kind {
        OptionKind::Boolean => match value {
            Variant::Bool(b) => Ok(OptionValue::Bool(*b)),
            _ => Err(wrong("a boolean")),
        },
        OptionKind::Path => match value {
            Variant::Str(s) => check(spec, OptionValue::Text(s.as_str().to_owned())),
            _ => Err(wrong("a string")),
        },
        OptionKind::PathList | OptionKind::Packages | OptionKind::Commands => {
            let Variant::Array(array) = value else {
                return Err(wrong("an array of strings"));
            };
            let mut items = Vec::new();
            for element in array.inner().iter() {
                match unwrap_variant(element) {
                    Variant::Str(s) => items.push(s.as_str().to_owned()),
                    _ => return Err(wrong("an array of strings")),
                }
            }
            check(spec, OptionValue::Paths(items))
        }
    }
}

/// Checks a value of the right type against its option's rules.
fn check(spec: &OptionSpec, value: OptionValue) -> Result<OptionValue, OptionsError> {
    match (spec.kind, &value) {
        (OptionKind::PathList, OptionValue::Paths(paths)) => check_paths(spec.key, paths)?,
        (OptionKind::Path, OptionValue::Text(path)) if !path.is_empty() => {
            check_paths(spec.key, std::slice::from_ref(path))?
        }
        (OptionKind::Packages, OptionValue::Paths(names)) => check_packages(spec.key, names)?,
        (OptionKind::Commands, OptionValue::Paths(commands)) => check_commands(spec.key, commands)?,
        _ => {}
    }
    Ok(value)
}

/// Checks and converts an image's default options (a JSON object). Unknown keys are returned
/// separately for the caller to log: an image made for a newer Kapsule must still be usable.
pub fn from_json_defaults(json: &str) -> Result<(BTreeMap<String, OptionValue>, Vec<String>), OptionsError> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| OptionsError::BadDefaults(e.to_string()))?;
    let serde_json::Value::Object(map) = value else {
        return Err(OptionsError::BadDefaults("not a JSON object".into()));
    };
    let mut out = BTreeMap::new();
    let mut ignored = Vec::new();
    for (key, value) in map {
        let Some(spec) = spec(&key) else {
            ignored.push(key);
            continue;
        };
        let wrong = |expected| OptionsError::WrongType {
            key: key.clone(),
            expected,
            got: format!("JSON {value}"),
        };
        let converted = match (spec.kind, &value) {
            (OptionKind::Boolean, serde_json::Value::Bool(b)) => OptionValue::Bool(*b),
            (OptionKind::Boolean, _) => return Err(wrong("a boolean")),
            (OptionKind::Path, serde_json::Value::String(path)) => check(spec, OptionValue::Text(path.clone()))?,
            (OptionKind::Path, _) => return Err(wrong("a string")),
            (kind, serde_json::Value::Array(items)) if kind.is_list() => {
                let items = items
                    .iter()
                    .map(|i| i.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| wrong("an array of strings"))?;
                check(spec, OptionValue::Paths(items))?
            }
            (_, _) => return Err(wrong("an array of strings")),
        };
        out.insert(key, converted);
    }
    ignored.sort();
    Ok((out, ignored))
}

/// A mount source must be absolute or `~/`-relative, without `..` components, NUL or newlines.
fn check_paths(key: &str, paths: &[String]) -> Result<(), OptionsError> {
    if paths.len() > MAX_CUSTOM_MOUNTS {
        return Err(OptionsError::TooMany {
            key: key.to_owned(),
            max: MAX_CUSTOM_MOUNTS,
        });
    }
    for path in paths {
        let bad = |reason| {
            Err(OptionsError::BadPath {
                key: key.to_owned(),
                path: crate::quote(path),
                reason,
            })
        };
        if path.len() > MAX_PATH_LEN {
            return bad("is too long");
        }
        if path.contains(['\0', '\n']) {
            return bad("contains a NUL or newline character");
        }
        let rest = if let Some(rest) = path.strip_prefix("~/") {
            rest
        } else if let Some(rest) = path.strip_prefix('/') {
            rest
        } else {
            return bad("must be absolute or start with ~/");
        };
        if rest.split('/').any(|c| c == "..") {
            return bad("must not contain '..'");
        }
    }
    Ok(())
}

/// A package name goes to the package manager as one argument: printable ASCII without blanks or
/// quotes, and never taken for an option (no leading `-`).
fn check_packages(key: &str, names: &[String]) -> Result<(), OptionsError> {
    if names.len() > MAX_PACKAGES {
        return Err(OptionsError::TooMany {
            key: key.to_owned(),
            max: MAX_PACKAGES,
        });
    }
    for name in names {
        let bad = |reason| {
            Err(OptionsError::BadEntry {
                key: key.to_owned(),
                entry: format!("package {}", crate::quote(name)),
                reason,
            })
        };
        if name.is_empty() || name.len() > MAX_PACKAGE_LEN {
            return bad("must be 1 to 255 characters long");
        }
        if name.starts_with('-') {
            return bad("must not start with '-'");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+:~=@/<>-".contains(&b))
        {
            return bad("may hold only letters, digits and . _ + : ~ = @ / < > -");
        }
    }
    Ok(())
}

/// A hook is any shell command, bounded in length and without NUL (which no argument can hold).
fn check_commands(key: &str, commands: &[String]) -> Result<(), OptionsError> {
    if commands.len() > MAX_HOOKS {
        return Err(OptionsError::TooMany {
            key: key.to_owned(),
            max: MAX_HOOKS,
        });
    }
    for command in commands {
        let bad = |reason| {
            Err(OptionsError::BadEntry {
                key: key.to_owned(),
                entry: format!("command {}", crate::quote(command.get(..60).unwrap_or(command))),
                reason,
            })
        };
        if command.trim().is_empty() {
            return bad("is empty");
        }
        if command.len() > MAX_HOOK_LEN {
            return bad("is longer than 64 KiB");
        }
        if command.contains('\0') {
            return bad("contains a NUL character");
        }
    }
    Ok(())
}

/// Merges schema defaults < image defaults < client values and applies the requirements.
pub fn resolve(
    image: &BTreeMap<String, OptionValue>,
    client: &BTreeMap<String, OptionValue>,
) -> Result<CreateOptions, OptionsError> {
    let explicit = |key: &str| client.get(key).or_else(|| image.get(key));
    let mut values: BTreeMap<&str, OptionValue> = OPTIONS
        .iter()
        .map(|o| {
            let default = match o.kind {
                OptionKind::Boolean => OptionValue::Bool(o.default),
                OptionKind::Path => OptionValue::Text(String::new()),
                OptionKind::PathList | OptionKind::Packages | OptionKind::Commands => OptionValue::Paths(Vec::new()),
            };
            (o.key, explicit(o.key).cloned().unwrap_or(default))
        })
        .collect();
    for option in OPTIONS {
        let Some((required, wanted)) = option.requires else {
            continue;
        };
        let on = match values.get(option.key) {
            Some(OptionValue::Bool(on)) => *on,
            Some(OptionValue::Text(path)) => !path.is_empty(),
            _ => false,
        };
        if !on {
            continue;
        }
        match explicit(required) {
            Some(OptionValue::Bool(v)) if *v != wanted => {
                return Err(OptionsError::Conflict {
                    key: option.key.into(),
                    requires: required.into(),
                    value: wanted,
                });
            }
            _ => {
                values.insert(required, OptionValue::Bool(wanted));
            }
        }
    }
    let flag = |key: &str| matches!(values.get(key), Some(OptionValue::Bool(true)));
    let list = |key: &str| match values.get(key) {
        Some(OptionValue::Paths(p)) => p.clone(),
        _ => Vec::new(),
    };
    let options = CreateOptions {
        session_mode: flag("session_mode"),
        dbus_mux: flag("dbus_mux"),
        host_rootfs: flag("host_rootfs"),
        mount_home: flag("mount_home"),
        custom_mounts: list("custom_mounts"),
        gpu: flag("gpu"),
        nvidia_drivers: flag("nvidia_drivers"),
        home: match values.get("home") {
            Some(OptionValue::Text(path)) => path.clone(),
            _ => String::new(),
        },
        pre_init_hooks: list("pre_init_hooks"),
        additional_packages: list("additional_packages"),
        init_hooks: list("init_hooks"),
        ephemeral: flag("ephemeral"),
        unprivileged: flag("unprivileged"),
    };
    if options.dbus_mux && !options.host_rootfs {
        return Err(OptionsError::Incompatible(
            "D-Bus multiplexer requires host_rootfs (the mux binary is reached through the host filesystem mount)",
        ));
    }
    if options.unprivileged && options.nvidia_drivers {
        return Err(OptionsError::Incompatible(
            "NVIDIA driver injection is not offered for unprivileged containers: its hook runs as root on the host against the container's files, which an unprivileged container's root controls (the GPU itself is passed through)",
        ));
    }
    Ok(options)
}

#[derive(Serialize)]
struct SchemaJson {
    version: u32,
    sections: Vec<SectionJson>,
}

#[derive(Serialize)]
struct SectionJson {
    id: &'static str,
    title: &'static str,
    options: Vec<OptionJson>,
}

#[derive(Serialize)]
struct OptionJson {
    key: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    description: &'static str,
    default: serde_json::Value,
    /// What a string holds (a UI hint, as `items.format` is for arrays).
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    items: Option<ItemsJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    requires: Option<serde_json::Value>,
}

/// A UI hint for array elements (not JSON Schema): field order as the original daemon sends it.
#[derive(Serialize)]
struct ItemsJson {
    #[serde(rename = "type")]
    kind: &'static str,
    format: &'static str,
}

/// The schema as `GetCreateSchema` returns it: compact JSON, sections and options in order.
pub fn schema_json() -> String {
    let sections = SECTIONS
        .iter()
        .map(|(id, title)| SectionJson {
            id,
            title,
            options: OPTIONS
                .iter()
                .filter(|o| o.section == *id)
                .map(|o| OptionJson {
                    key: o.key,
                    kind: match o.kind {
                        OptionKind::Boolean => "boolean",
                        OptionKind::Path => "string",
                        OptionKind::PathList | OptionKind::Packages | OptionKind::Commands => "array",
                    },
                    title: o.title,
                    description: o.description,
                    default: match o.kind {
                        OptionKind::Boolean => serde_json::Value::Bool(o.default),
                        OptionKind::Path => serde_json::Value::String(String::new()),
                        OptionKind::PathList | OptionKind::Packages | OptionKind::Commands => {
                            serde_json::Value::Array(Vec::new())
                        }
                    },
                    format: (o.kind == OptionKind::Path).then_some("directory-path"),
                    items: match o.kind {
                        OptionKind::PathList => Some("directory-path"),
                        OptionKind::Packages => Some("package-name"),
                        OptionKind::Commands => Some("shell-command"),
                        OptionKind::Boolean | OptionKind::Path => None,
                    }
                    .map(|format| ItemsJson { kind: "string", format }),
                    requires: o.requires.map(|(k, v)| serde_json::json!({ k: v })),
                })
                .collect(),
        })
        .collect();
    serde_json::to_string(&SchemaJson { version: 1, sections }).expect("the schema serializes")
}

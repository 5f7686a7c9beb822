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
}

/// One option of the schema.
#[derive(Clone, Copy, Debug)]
pub struct OptionSpec {
    pub key: &'static str,
    pub section: &'static str,
    pub kind: OptionKind,
    pub title: &'static str,
    pub description: &'static str,
    /// The default of a boolean (path lists default to empty).
    pub default: bool,
    /// `(key, value)`: this option, when on, needs that boolean option to have that value. An
    /// unset required option is set to it; an explicit contrary value is an error.
    pub requires: Option<(&'static str, bool)>,
}

/// The sections, in schema order: `(id, title)`.
pub const SECTIONS: &[(&str, &str)] = &[("dbus", "D-Bus Integration"), ("mounts", "Host Mounts"), ("gpu", "GPU")];

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
];

/// The most custom mounts one container may have, and the longest path accepted.
pub const MAX_CUSTOM_MOUNTS: usize = 64;
pub const MAX_PATH_LEN: usize = 4096;

/// The spec of `key`, if it is an option.
pub fn spec(key: &str) -> Option<&'static OptionSpec> {
    OPTIONS.iter().find(|o| o.key == key)
}

/// A value of an option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptionValue {
    Bool(bool),
    Paths(Vec<String>),
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
        OptionKind::PathList => {
            let Variant::Array(array) = value else {
                return Err(wrong("an array of strings"));
            };
            let mut paths = Vec::new();
            for element in array.inner().iter() {
                match unwrap_variant(element) {
                    Variant::Str(s) => paths.push(s.as_str().to_owned()),
                    _ => return Err(wrong("an array of strings")),
                }
            }
            check_paths(spec.key, &paths)?;
            Ok(OptionValue::Paths(paths))
        }
    }
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
            (OptionKind::PathList, serde_json::Value::Array(items)) => {
                let paths = items
                    .iter()
                    .map(|i| i.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| wrong("an array of strings"))?;
                check_paths(spec.key, &paths)?;
                OptionValue::Paths(paths)
            }
            (OptionKind::PathList, _) => return Err(wrong("an array of strings")),
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
                OptionKind::PathList => OptionValue::Paths(Vec::new()),
            };
            (o.key, explicit(o.key).cloned().unwrap_or(default))
        })
        .collect();
    for option in OPTIONS {
        let Some((required, wanted)) = option.requires else {
            continue;
        };
        if values.get(option.key) != Some(&OptionValue::Bool(true)) {
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
    let options = CreateOptions {
        session_mode: flag("session_mode"),
        dbus_mux: flag("dbus_mux"),
        host_rootfs: flag("host_rootfs"),
        mount_home: flag("mount_home"),
        custom_mounts: match values.get("custom_mounts") {
            Some(OptionValue::Paths(p)) => p.clone(),
            _ => Vec::new(),
        },
        gpu: flag("gpu"),
        nvidia_drivers: flag("nvidia_drivers"),
    };
    if options.dbus_mux && !options.host_rootfs {
        return Err(OptionsError::Incompatible(
            "D-Bus multiplexer requires host_rootfs (the mux binary is reached through the host filesystem mount)",
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
                        OptionKind::PathList => "array",
                    },
                    title: o.title,
                    description: o.description,
                    default: match o.kind {
                        OptionKind::Boolean => serde_json::Value::Bool(o.default),
                        OptionKind::PathList => serde_json::Value::Array(Vec::new()),
                    },
                    items: (o.kind == OptionKind::PathList).then_some(ItemsJson {
                        kind: "string",
                        format: "directory-path",
                    }),
                    requires: o.requires.map(|(k, v)| serde_json::json!({ k: v })),
                })
                .collect(),
        })
        .collect();
    serde_json::to_string(&SchemaJson { version: 1, sections }).expect("the schema serializes")
}

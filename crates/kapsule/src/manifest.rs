//! Manifests for `kapsule assemble`: `distrobox.ini` files read as distrobox reads them, with
//! Kapsule's own create options as keys too.
//!
//! The format: `[name]` sections, one per container; `key=value` lines (a key may repeat: list
//! keys gather every value, other keys take the last); `#` and `;` start comments, at the start
//! of a line or after a blank; a value may be quoted with `"` or `'`. `include=other` appends the
//! other section's lines (after the section's own, so for a key with one value the included one
//! wins, as in distrobox). Every error names its line; a key Kapsule has no meaning for is an
//! error too, and a distrobox key with nothing to do in Kapsule (`init`, `root`, `pull`) is a note.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;

use kapsule_dbus::options::{OPTIONS, OptionKind};
use zbus::{OwnedVariant, Variant};

/// One `key=value` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub key: String,
    pub value: String,
    /// 1-based.
    pub number: usize,
}

/// A `[name]` section and its lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub number: usize,
    pub lines: Vec<Line>,
}

/// What is wrong, and on which line.
#[derive(Debug, PartialEq, Eq)]
pub struct Error {
    pub number: usize,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.number, self.message)
    }
}

impl std::error::Error for Error {}

fn error(number: usize, message: impl Into<String>) -> Error {
    Error {
        number,
        message: message.into(),
    }
}

/// One container of a manifest, as Kapsule makes it.
#[derive(Debug, Default)]
pub struct Item {
    pub name: String,
    /// The image, as `kapsule create --image` takes it; empty: the configured default.
    pub image: String,
    /// Made as a copy of this container instead (`clone=`).
    pub clone: Option<String>,
    /// The create options, as `CreateContainer` takes them.
    pub options: HashMap<String, OwnedVariant>,
    /// `replace=true`: made anew when it exists.
    pub replace: bool,
    /// `start_now=false`: stopped once made.
    pub start_now: Option<bool>,
    /// `entry=`: its "NAME (Kapsule)" menu entry (default: as for `kapsule create`).
    pub entry: Option<bool>,
    pub exported_apps: Vec<String>,
    pub exported_bins: Vec<String>,
    pub exported_bins_path: Option<PathBuf>,
    /// What was read but does nothing in Kapsule, with its line.
    pub notes: Vec<String>,
}

/// The sections of `text`, in order.
pub fn parse(text: &str) -> Result<Vec<Section>, Error> {
    let mut sections: Vec<Section> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let Some((name, after)) = rest.split_once(']') else {
                return Err(error(number, format!("a section header without ']': {line}")));
            };
            let after = after.trim();
            if !after.is_empty() && !after.starts_with(['#', ';']) {
                return Err(error(number, format!("text after the section header: {after}")));
            }
            let name = name.trim().to_owned();
            if let Some(first) = sections.iter().find(|s| s.name == name) {
                return Err(error(
                    number,
                    format!("[{name}] again (it is on line {} already)", first.number),
                ));
            }
            sections.push(Section {
                name,
                number,
                lines: Vec::new(),
            });
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(error(number, format!("not a section header nor key=value: {line}")));
        };
        let Some(section) = sections.last_mut() else {
            return Err(error(number, "key=value outside of a [section]"));
        };
        section.lines.push(Line {
            key: key.trim().to_owned(),
            value: unquote(value.trim()),
            number,
        });
    }
    Ok(sections)
}

/// A value without its quotes, or without an inline comment (`#` or `;` after a blank).
fn unquote(value: &str) -> String {
    for quote in ['"', '\''] {
        if let Some(inner) = value.strip_prefix(quote)
            && let Some(end) = inner.rfind(quote)
        {
            let after = inner[end + 1..].trim();
            if after.is_empty() || after.starts_with(['#', ';']) {
                return inner[..end].to_owned();
            }
        }
    }
    let cut = value
        .char_indices()
        .find(|&(i, c)| (c == '#' || c == ';') && value[..i].ends_with([' ', '\t']))
        .map_or(value.len(), |(i, _)| i);
    value[..cut].trim_end().to_owned()
}

/// Each section with its `include=` lines replaced by the included sections' lines (which may
/// include others; a cycle is an error).
pub fn expand_includes(sections: &[Section]) -> Result<Vec<Section>, Error> {
    fn expand(
        sections: &[Section],
        section: &Section,
        stack: &mut Vec<String>,
        out: &mut Vec<Line>,
    ) -> Result<(), Error> {
        stack.push(section.name.clone());
        let mut included = Vec::new();
        for line in &section.lines {
            if line.key != "include" {
                out.push(line.clone());
                continue;
            }
            for name in line.value.split_whitespace() {
                let Some(other) = sections.iter().find(|s| s.name == name) else {
                    return Err(error(line.number, format!("include={name}: there is no [{name}]")));
                };
                if stack.iter().any(|s| s == name) {
                    return Err(error(
                        line.number,
                        format!("include={name}: a circle ({} -> {name})", stack.join(" -> ")),
                    ));
                }
                included.push(other);
            }
        }
        for other in included {
            expand(sections, other, stack, out)?;
        }
        stack.pop();
        Ok(())
    }
    sections
        .iter()
        .map(|section| {
            let mut lines = Vec::new();
            expand(sections, section, &mut Vec::new(), &mut lines)?;
            Ok(Section {
                lines,
                ..section.clone()
            })
        })
        .collect()
}

/// `true`/`false` (and `1`/`0`, as distrobox reads them).
fn boolean(line: &Line) -> Result<bool, Error> {
    match line.value.as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(error(
            line.number,
            format!("{} must be true or false, not '{other}'", line.key),
        )),
    }
}

/// What a section's lines ask for. Checks what can be checked here (names, keys, types, the
/// shape of volumes); the daemon checks the values of the create options again.
pub fn item(section: &Section) -> Result<Item, Error> {
    let mut item = Item {
        name: section.name.clone(),
        ..Default::default()
    };
    check_name(&section.name, section.number)?;
    // The values of each create option in order, to be converted once all are read.
    let mut values: BTreeMap<&'static str, Vec<&Line>> = BTreeMap::new();
    let mut mounts: Vec<String> = Vec::new();
    for line in &section.lines {
        let key = line.key.as_str();
        let number = line.number;
        match key {
            "image" => item.image = line.value.clone(),
            "clone" => {
                check_name(&line.value, number)?;
                item.clone = Some(line.value.clone());
            }
            "replace" => item.replace = boolean(line)?,
            "start_now" => item.start_now = Some(boolean(line)?),
            "entry" => item.entry = Some(boolean(line)?),
            "nvidia" => values.entry("nvidia_drivers").or_default().push(line),
            "volume" | "volumes" => {
                for volume in line.value.split_whitespace() {
                    mounts.push(volume_source(volume, number)?);
                }
            }
            "exported_apps" => item
                .exported_apps
                .extend(line.value.split_whitespace().map(str::to_owned)),
            "exported_bins" => item
                .exported_bins
                .extend(line.value.split_whitespace().map(str::to_owned)),
            "exported_bins_path" => item.exported_bins_path = Some(PathBuf::from(&line.value)),
            "init" => {
                if !boolean(line)? {
                    item.notes.push(format!(
                        "line {number}: init=false does nothing: a Kapsule container always runs its own init"
                    ));
                }
            }
            "root" => {
                boolean(line)?;
                item.notes.push(format!(
                    "line {number}: root= does nothing: Kapsule's containers are made by its system service, and yours"
                ));
            }
            "pull" => {
                if boolean(line)? {
                    item.notes.push(format!(
                        "line {number}: pull=true does nothing: `kapsule image refresh` gets an image's newest build"
                    ));
                }
            }
            "ephemeral" => {
                return Err(error(
                    number,
                    "ephemeral: an assembled container is not ephemeral (see `kapsule run`)",
                ));
            }
            _ if key.starts_with("unshare_") => {
                if boolean(line)? {
                    return Err(error(
                        number,
                        format!("{key}=true: Kapsule containers share the host's namespaces; it cannot be had"),
                    ));
                }
            }
            _ => match OPTIONS.iter().find(|o| o.key == key) {
                Some(option) => values.entry(option.key).or_default().push(line),
                None => {
                    return Err(error(
                        number,
                        format!(
                            "'{key}' means nothing to Kapsule (distrobox's keys it reads: image, clone, additional_packages, init_hooks, pre_init_hooks, home, volume, nvidia, start_now, replace, entry, exported_apps, exported_bins, exported_bins_path, include; and its own create options: {})",
                            known_options()
                        ),
                    ));
                }
            },
        }
    }
    if item.clone.is_some() && !item.image.is_empty() {
        return Err(error(
            section.number,
            "[a container] has both image= and clone=; give one",
        ));
    }
    for (key, lines) in values {
        let option = OPTIONS.iter().find(|o| o.key == key).expect("an option");
        let last = lines.last().expect("at least one line");
        let value = match option.kind {
            OptionKind::Boolean => Variant::Bool(boolean(last)?),
            OptionKind::Path => Variant::from(last.value.clone()),
            OptionKind::PathList | OptionKind::Packages => Variant::from(
                lines
                    .iter()
                    .flat_map(|l| l.value.split_whitespace().map(str::to_owned))
                    .collect::<Vec<String>>(),
            ),
            OptionKind::Commands => Variant::from(lines.iter().map(|l| l.value.clone()).collect::<Vec<String>>()),
        };
        let value = OwnedVariant::try_from(value).map_err(|e| error(last.number, e.to_string()))?;
        item.options.insert(key.to_owned(), value);
    }
    if !mounts.is_empty() {
        let mut all: Vec<String> = match item.options.remove("custom_mounts") {
            Some(v) => v.try_into().unwrap_or_default(),
            None => Vec::new(),
        };
        all.extend(mounts);
        let value = OwnedVariant::try_from(Variant::from(all)).map_err(|e| error(section.number, e.to_string()))?;
        item.options.insert("custom_mounts".to_owned(), value);
    }
    if item.clone.is_some() && !item.options.is_empty() {
        return Err(error(
            section.number,
            "a clone= container takes its options from the one it copies; create options cannot go with it",
        ));
    }
    Ok(item)
}

fn known_options() -> String {
    OPTIONS
        .iter()
        .map(|o| o.key)
        .filter(|k| *k != "ephemeral")
        .collect::<Vec<_>>()
        .join(", ")
}

/// Incus's rules for a container name, checked here so the error names the line.
fn check_name(name: &str, number: usize) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with(|c: char| c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if ok {
        return Ok(());
    }
    let hint = if name.contains('_') {
        format!(" (try {})", name.replace('_', "-"))
    } else {
        String::new()
    };
    Err(error(
        number,
        format!("'{name}' cannot name a container: 1 to 63 letters, digits and '-', starting with a letter{hint}"),
    ))
}

/// The host directory of a distrobox `volume` (`SRC[:DST[:OPTIONS]]`): Kapsule mounts a host
/// directory at the same path inside, so a different `DST` cannot be had.
fn volume_source(volume: &str, number: usize) -> Result<String, Error> {
    let mut parts = volume.split(':');
    let source = parts.next().unwrap_or_default();
    match parts.next() {
        None => Ok(source.to_owned()),
        Some(target) if target == source => Ok(source.to_owned()),
        Some(target) => Err(error(
            number,
            format!(
                "volume {volume}: Kapsule mounts a host directory at the same path inside, so {source} cannot be at {target}; write volume={source}"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
# You can add comments using this #
[ubuntu]
additional_packages="git vim tmux nodejs"
additional_packages="htop iftop iotop"
image=ubuntu:latest
init=false
nvidia=true
pull=true
root=false
replace=true
start_now=false

[arch] # also inline comments are supported
home=/tmp/home
image=archlinux:latest
init_hooks="touch /init-normal"
init_hooks=echo a; echo b
pre_init_hooks="touch /pre-init"
volume="/tmp/test /srv/x:/srv/x:ro"
exported_apps="htop"
exported_bins="/usr/bin/htop /usr/bin/git"
exported_bins_path="~/.local/bin"
gpu=false

[arch-nvidia]
include=arch
nvidia=true
"#;

    fn strings(item: &Item, key: &str) -> Vec<String> {
        item.options[key].try_clone().unwrap().try_into().unwrap()
    }

    #[test]
    fn distrobox_manifests_read_as_distrobox_reads_them() {
        let sections = expand_includes(&parse(EXAMPLE).unwrap()).unwrap();
        let names: Vec<&str> = sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ubuntu", "arch", "arch-nvidia"]);
        let ubuntu = item(&sections[0]).unwrap();
        assert_eq!(ubuntu.image, "ubuntu:latest");
        assert_eq!(
            strings(&ubuntu, "additional_packages"),
            ["git", "vim", "tmux", "nodejs", "htop", "iftop", "iotop"]
        );
        assert!(bool::try_from(&ubuntu.options["nvidia_drivers"]).unwrap());
        assert!(ubuntu.replace);
        assert_eq!(ubuntu.start_now, Some(false));
        assert_eq!(ubuntu.notes.len(), 3, "init, pull, root: {:?}", ubuntu.notes);
        assert!(ubuntu.notes[0].starts_with("line 7: init=false"), "{:?}", ubuntu.notes);

        let arch = item(&sections[1]).unwrap();
        assert_eq!(strings(&arch, "init_hooks"), ["touch /init-normal", "echo a; echo b"]);
        assert_eq!(strings(&arch, "pre_init_hooks"), ["touch /pre-init"]);
        assert_eq!(strings(&arch, "custom_mounts"), ["/tmp/test", "/srv/x"]);
        let home: String = arch.options["home"].try_clone().unwrap().try_into().unwrap();
        assert_eq!(home, "/tmp/home");
        assert!(
            !bool::try_from(&arch.options["gpu"]).unwrap(),
            "Kapsule's own options are keys"
        );
        assert_eq!(arch.exported_bins, ["/usr/bin/htop", "/usr/bin/git"]);
        assert_eq!(arch.exported_bins_path, Some(PathBuf::from("~/.local/bin")));

        let included = item(&sections[2]).unwrap();
        assert_eq!(included.image, "archlinux:latest", "include copies the lines");
        assert!(bool::try_from(&included.options["nvidia_drivers"]).unwrap());
        assert_eq!(strings(&included, "init_hooks").len(), 2);
    }

    #[test]
    fn every_error_names_its_line() {
        let cases = [
            ("[a]\nhostname=box\n", 2, "'hostname' means nothing to Kapsule"),
            (
                "[a]\nadditional_flags=--privileged\n",
                2,
                "'additional_flags' means nothing",
            ),
            ("image=x\n", 1, "outside of a [section]"),
            ("[a]\nnonsense\n", 2, "not a section header nor key=value"),
            ("[a]\n[a]\n", 2, "[a] again (it is on line 1 already)"),
            ("[my_box]\n", 1, "'my_box' cannot name a container"),
            ("[a]\ngpu=maybe\n", 2, "gpu must be true or false, not 'maybe'"),
            ("[a]\nvolume=/a:/b\n", 2, "cannot be at /b"),
            ("[a]\nunshare_netns=true\n", 2, "share the host's namespaces"),
            ("[a]\ninclude=b\n", 2, "there is no [b]"),
            ("[a]\ninclude=b\n[b]\ninclude=a\n", 4, "a circle (a -> b -> a)"),
            ("[a]\nephemeral=true\n", 2, "not ephemeral"),
            ("[a]\nclone=b\nimage=x\n", 1, "both image= and clone="),
        ];
        for (text, number, message) in cases {
            let result = parse(text)
                .and_then(|s| expand_includes(&s))
                .and_then(|s| s.iter().map(item).collect::<Result<Vec<_>, _>>());
            let e = result.err().unwrap_or_else(|| panic!("{text:?} was accepted"));
            assert_eq!(e.number, number, "{text:?}: {e}");
            assert!(e.message.contains(message), "{text:?}: {e}");
        }
        let e = check_name("my_box", 3).unwrap_err().to_string();
        assert!(e.contains("try my-box"), "{e}");
    }

    #[test]
    fn quotes_and_comments() {
        assert_eq!(unquote(r#""a b" # c"#), "a b");
        assert_eq!(unquote("'x'"), "x");
        assert_eq!(
            unquote("curl https://x/#frag | sh ; # run it"),
            "curl https://x/#frag | sh"
        );
        assert_eq!(
            unquote(r#"GOPATH="$HOME/go" go install x@latest;"#),
            r#"GOPATH="$HOME/go" go install x@latest;"#
        );
        assert_eq!(
            unquote(r#""a" b"#),
            r#""a" b"#,
            "a quote that does not close the value stays"
        );
    }
}

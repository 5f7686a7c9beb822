//! Desktop entries (the XDG Desktop Entry Specification), read and rewritten line by line so
//! that everything not changed stays exactly as the app's packager wrote it: comments, order,
//! translations, keys this code has never heard of. (The crates that parse desktop entries
//! build a map and lose all of that, so this small reader is written here.)

/// A desktop entry's lines.
#[derive(Clone, Debug)]
pub struct DesktopEntry {
    lines: Vec<Line>,
}

#[derive(Clone, Debug)]
enum Line {
    /// A comment or a blank line, kept as it was.
    Other(String),
    Group(String),
    Entry {
        key: String,
        value: String,
    },
}

/// The line that says which container an entry Kapsule wrote comes from.
pub(crate) fn marker(container: &str) -> String {
    format!("X-Kapsule-Container={container}")
}

impl DesktopEntry {
    /// Parses `text`; the error says which line is wrong and how.
    pub fn parse(text: &str) -> Result<DesktopEntry, String> {
        let mut lines = Vec::new();
        let mut first_group = None;
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim_end_matches(['\r']);
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                lines.push(Line::Other(line.to_owned()));
            } else if let Some(name) = trimmed.strip_prefix('[') {
                let name = name
                    .trim_end()
                    .strip_suffix(']')
                    .ok_or_else(|| format!("line {}: a group header without its ']'", n + 1))?;
                first_group.get_or_insert_with(|| name.to_owned());
                lines.push(Line::Group(name.to_owned()));
            } else if let Some((key, value)) = line.split_once('=') {
                if first_group.is_none() {
                    return Err(format!("line {}: a key before any group", n + 1));
                }
                lines.push(Line::Entry {
                    key: key.trim().to_owned(),
                    value: value.trim_start().to_owned(),
                });
            } else {
                return Err(format!("line {}: neither a group, a key nor a comment", n + 1));
            }
        }
        match first_group.as_deref() {
            Some("Desktop Entry") => Ok(DesktopEntry { lines }),
            Some(other) => Err(format!("the first group is [{other}], not [Desktop Entry]")),
            None => Err("no [Desktop Entry] group".into()),
        }
    }

    /// The entries of the main group, in order.
    fn main(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut group = "";
        self.lines.iter().filter_map(move |line| match line {
            Line::Group(name) => {
                group = name;
                None
            }
            Line::Entry { key, value } if group == "Desktop Entry" => Some((key.as_str(), value.as_str())),
            _ => None,
        })
    }

    /// A key of the main group (unlocalized), as written.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.main().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// `Name` in every language given.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.main()
            .filter(|(k, _)| *k == "Name" || (k.starts_with("Name[") && k.ends_with(']')))
            .map(|(_, v)| v)
    }

    /// The icon it names, if any.
    pub fn icon(&self) -> Option<&str> {
        self.get("Icon").filter(|i| !i.is_empty())
    }

    /// The program its `Exec` runs (past an `env VAR=value` prefix).
    pub fn program(&self) -> Option<String> {
        let exec = self.get("Exec")?;
        let words = exec_words(&unescape(exec));
        let mut words = words.into_iter();
        let first = words.next()?;
        if first.rsplit('/').next() == Some("env") {
            return words.find(|w| !w.contains('='));
        }
        Some(first)
    }

    /// The entry as it goes into the user's menu for `container`: every `Exec` (the main
    /// group's and each action's) run through `kapsule enter`, its field codes untouched so the
    /// launcher still expands them; `Path` as the session's working directory; `TryExec` and
    /// `DBusActivatable` dropped (the program is not on the host, and its D-Bus name is not on
    /// the host's bus); every `Name` marked with the container; `icon` (the copied icon's
    /// name) when there is one; and the keys that say it is Kapsule's and where it came from.
    pub fn export(&self, container: &str, id: &str, kapsule: &str, icon: Option<&str>) -> Result<String, String> {
        match self.get("Type") {
            Some("Application") => {}
            Some(other) => return Err(format!("a {other} entry, not an application")),
            None => return Err("no Type key".into()),
        }
        if self.get("Exec").is_none_or(str::is_empty) {
            return Err(if self.get("DBusActivatable") == Some("true") {
                "no Exec line: it starts only by D-Bus activation, which cannot reach into a container".into()
            } else {
                "no Exec line".into()
            });
        }
        let mut prefix = vec![exec_quote(kapsule), "enter".into(), "--no-create".into()];
        if let Some(path) = self.get("Path").filter(|p| !p.is_empty()) {
            prefix.extend(["--cwd".into(), exec_quote(&unescape(path))]);
        }
        prefix.extend([exec_quote(container), "--".into()]);
        let prefix = escape(&prefix.join(" "));

        let mut out = String::new();
        let mut group = String::new();
        let mut marked = false;
        let add_marks = |out: &mut String| {
            out.push_str(&marker(container));
            out.push('\n');
            out.push_str(&format!("X-Kapsule-App={id}\n"));
        };
        for line in &self.lines {
            match line {
                Line::Other(text) => {
                    out.push_str(text);
                    out.push('\n');
                }
                Line::Group(name) => {
                    if group == "Desktop Entry" && !marked {
                        add_marks(&mut out);
                        marked = true;
                    }
                    group = name.clone();
                    out.push_str(&format!("[{name}]\n"));
                }
                Line::Entry { key, value } => {
                    let main = group == "Desktop Entry";
                    let action = group.starts_with("Desktop Action ");
                    let value = match key.as_str() {
                        "Exec" if main || action => format!("{prefix} {value}"),
                        "TryExec" | "DBusActivatable" | "Path" if main => continue,
                        // Kapsule's own keys are written once, below.
                        k if main && k.starts_with("X-Kapsule-") => continue,
                        "Icon" if main => icon.map_or_else(|| value.clone(), str::to_owned),
                        k if main && (k == "Name" || (k.starts_with("Name[") && k.ends_with(']'))) => {
                            format!("{value} ({container})")
                        }
                        _ => value.clone(),
                    };
                    out.push_str(&format!("{key}={value}\n"));
                }
            }
        }
        if group == "Desktop Entry" && !marked {
            add_marks(&mut out);
        }
        Ok(out)
    }
}

/// The entry that opens a terminal in `container`, as the user's default terminal runs
/// `Terminal=true` entries.
pub fn menu_entry(container: &str, kapsule: &str) -> String {
    let exec = escape(&format!(
        "{} enter --no-create {}",
        exec_quote(kapsule),
        exec_quote(container)
    ));
    format!(
        "[Desktop Entry]\n\
         Type=Application\n\
         Name={container} (Kapsule)\n\
         GenericName=Container terminal\n\
         Comment=A shell in the Kapsule container {container}\n\
         Exec={exec}\n\
         Icon=utilities-terminal\n\
         Terminal=true\n\
         Categories=System;Development;\n\
         Keywords=container;kapsule;{container};\n\
         {}\n",
        marker(container)
    )
}

/// One argument of an `Exec` line: as is when it has no reserved character, else in double
/// quotes with `"`, `` ` ``, `$` and `\` escaped (the specification's rule); `%` doubled, as a
/// literal percent sign must be.
pub fn exec_quote(arg: &str) -> String {
    let arg = arg.replace('%', "%%");
    let reserved = |c: char| {
        c.is_whitespace()
            || matches!(
                c,
                '"' | '\'' | '\\' | '>' | '<' | '~' | '|' | '&' | ';' | '$' | '*' | '?' | '#' | '(' | ')' | '`'
            )
    };
    if !arg.is_empty() && !arg.contains(reserved) {
        return arg;
    }
    let mut out = String::from("\"");
    for c in arg.chars() {
        if matches!(c, '"' | '`' | '$' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A string value as it is written in the file (the specification's escapes).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('\t', "\\t")
        .replace('\r', "\\r")
}

/// A string value as it means (the inverse of [`escape`]; `\s` is a space).
fn unescape(value: &str) -> String {
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('s') => out.push(' '),
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// The words of an (unescaped) `Exec` value, quotes removed.
fn exec_words(exec: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = exec.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    const KATE: &str = "\
# A comment the packager wrote
[Desktop Entry]
Type=Application
Name=Kate
Name[de]=Kate
GenericName=Text Editor
Exec=kate -b %U
TryExec=kate
DBusActivatable=true
Path=/srv/work dir
Icon=kate
MimeType=text/plain;
X-KDE-Unknown=kept

[Desktop Action newWindow]
Name=New Window
Exec=kate -n
";

    #[test]
    fn the_entry_runs_through_kapsule_and_keeps_the_rest() {
        let entry = DesktopEntry::parse(KATE).unwrap();
        assert_eq!(entry.program().as_deref(), Some("kate"));
        let out = entry
            .export(
                "dev",
                "org.kde.kate.desktop",
                "/usr/bin/kapsule",
                Some("kapsule.dev.kate"),
            )
            .unwrap();
        assert_eq!(
            out,
            "\
# A comment the packager wrote
[Desktop Entry]
Type=Application
Name=Kate (dev)
Name[de]=Kate (dev)
GenericName=Text Editor
Exec=/usr/bin/kapsule enter --no-create --cwd \"/srv/work dir\" dev -- kate -b %U
Icon=kapsule.dev.kate
MimeType=text/plain;
X-KDE-Unknown=kept

X-Kapsule-Container=dev
X-Kapsule-App=org.kde.kate.desktop
[Desktop Action newWindow]
Name=New Window
Exec=/usr/bin/kapsule enter --no-create --cwd \"/srv/work dir\" dev -- kate -n
"
        );
        // Exporting the export again changes nothing more than once.
        let again = DesktopEntry::parse(&out).unwrap();
        assert_eq!(again.get("X-Kapsule-Container"), Some("dev"));
    }

    #[test]
    fn entries_that_cannot_work_are_refused_with_the_reason() {
        let refuse = |text: &str| {
            DesktopEntry::parse(text)
                .and_then(|e| e.export("c", "x.desktop", "kapsule", None))
                .unwrap_err()
        };
        assert_eq!(refuse("Name=x\n"), "line 1: a key before any group");
        assert_eq!(refuse("[Desktop Entry\n"), "line 1: a group header without its ']'");
        assert_eq!(
            refuse("[Other]\nA=b\n"),
            "the first group is [Other], not [Desktop Entry]"
        );
        assert_eq!(
            refuse("[Desktop Entry]\nType=Link\nURL=x\n"),
            "a Link entry, not an application"
        );
        assert_eq!(
            refuse("[Desktop Entry]\nType=Application\nnonsense\n"),
            "line 3: neither a group, a key nor a comment"
        );
        assert!(refuse("[Desktop Entry]\nType=Application\nDBusActivatable=true\n").contains("D-Bus activation"));
        assert_eq!(refuse(""), "no [Desktop Entry] group");
    }

    #[test]
    fn exec_arguments_are_quoted_as_the_specification_says() {
        assert_eq!(exec_quote("/usr/bin/kapsule"), "/usr/bin/kapsule");
        assert_eq!(exec_quote("/opt/my apps/kapsule"), "\"/opt/my apps/kapsule\"");
        assert_eq!(exec_quote("a\"b$c`d\\e"), "\"a\\\"b\\$c\\`d\\\\e\"");
        assert_eq!(exec_quote("100%"), "100%%");
        assert_eq!(exec_words("\"/a b/c\" -x \"y \\\" z\""), ["/a b/c", "-x", "y \" z"]);
        // In the file, the backslashes of the quoting are doubled once more.
        let entry = menu_entry("c", "/opt/k\\apsule");
        assert!(
            entry.contains("Exec=\"/opt/k\\\\\\\\apsule\" enter --no-create c\n"),
            "{entry}"
        );
    }

    #[test]
    fn the_program_is_found_past_env() {
        let entry = DesktopEntry::parse("[Desktop Entry]\nExec=env A=1 B=2 /usr/bin/foo %f\n").unwrap();
        assert_eq!(entry.program().as_deref(), Some("/usr/bin/foo"));
    }
}

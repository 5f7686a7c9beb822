//! The wrapper that puts a container's command on the host's PATH: a shell script that runs it
//! through `kapsule enter`, with its arguments exactly as given and its exit status. The
//! second line marks it as Kapsule's, so it is never confused with a file the user wrote.

use std::path::Path;

const MARK: &str = "# kapsule-export:";

/// The wrapper for `command` (an absolute path in `container`), run with `kapsule`.
pub fn wrapper_script(container: &str, command: &str, kapsule: &str) -> String {
    format!(
        "#!/bin/sh\n\
         {MARK} container={container} command={command}\n\
         # Written by `kapsule export`; `kapsule export {container} --delete --bin {command}` removes it.\n\
         exec {} enter --no-create {} -- {} \"$@\"\n",
        shell_quote(kapsule),
        shell_quote(container),
        shell_quote(command)
    )
}

/// Whether the file at `path` is a wrapper `kapsule export` wrote.
pub fn is_ours(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 512];
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let n = file.read(&mut head).unwrap_or(0);
    let text = String::from_utf8_lossy(&head[..n]);
    text.lines().nth(1).is_some_and(|l| l.starts_with(MARK))
}

/// One shell word that means exactly `text`.
pub fn shell_quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.' | ',' | ':' | '+' | '='))
    {
        return text.to_owned();
    }
    format!("'{}'", text.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wrapper_passes_everything_and_is_recognised() {
        let script = wrapper_script("dev", "/opt/my tool/run", "/usr/bin/kapsule");
        assert!(
            script.ends_with("exec /usr/bin/kapsule enter --no-create dev -- '/opt/my tool/run' \"$@\"\n"),
            "{script}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run");
        std::fs::write(&path, &script).unwrap();
        assert!(is_ours(&path));
        std::fs::write(&path, "#!/bin/sh\necho mine\n").unwrap();
        assert!(!is_ours(&path));
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}

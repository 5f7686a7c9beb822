//! `kapsule export` as a user meets it, with real containers given an app (a desktop entry with
//! an action, icons at two sizes, a program): the entry in their menu passes
//! `desktop-file-validate` and, started the way a launcher starts it (field codes expanded as the
//! specification says), runs the app in the container as them with the file they opened; its
//! icons are in their theme under the container's name; the same app from a second container
//! (made without the host's root or home) lands beside it; a command's wrapper passes its
//! arguments and exit status; `--list`, `--delete` and `kapsule rm` take exactly what was made;
//! bad requests change nothing; an export whose container is gone says so.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use kapsule_incus::FileMeta;
use kapsule_integration_tests::{DaemonTest, InstanceGuard, TestUser, daemon_test, test_user, unique_name};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The test app: where it runs, as whom, with which arguments; `fail N` exits with N.
const APP: &str = "#!/bin/sh\n\
printf '%s %s' \"$(cat /proc/sys/kernel/hostname)\" \"$(id -un)\"\n\
printf ' [%s]' \"$@\"\n\
printf '\\n'\n\
[ \"$1\" = fail ] && exit \"$2\"\n\
exit 0\n";

const ENTRY: &str = "[Desktop Entry]\n\
Type=Application\n\
Name=KT App\n\
Name[de]=KT Anwendung\n\
Comment=The Kapsule tests' app\n\
Exec=kt-app %F\n\
TryExec=kt-app\n\
Icon=kt-app\n\
Categories=Utility;\n\
MimeType=text/plain;\n\
Actions=second;\n\
\n\
[Desktop Action second]\n\
Name=Second window\n\
Exec=kt-app --second\n";

/// A valid PNG of `size`×`size` pixels, all one grey.
fn png(size: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend(crc32(&body).to_be_bytes());
    }
    // Greyscale, 8 bits; each row a filter byte and the pixels; one stored deflate block.
    let mut raw = Vec::new();
    for _ in 0..size {
        raw.push(0);
        raw.extend(std::iter::repeat_n(0x80u8, size as usize));
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in &raw {
        a = (a + u32::from(byte)) % 65521;
        b = (b + a) % 65521;
    }
    let mut zlib = vec![0x78, 0x01, 0x01];
    zlib.extend((raw.len() as u16).to_le_bytes());
    zlib.extend((!(raw.len() as u16)).to_le_bytes());
    zlib.extend_from_slice(&raw);
    zlib.extend(((b << 16) | a).to_be_bytes());
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = Vec::new();
    header.extend(size.to_be_bytes());
    header.extend(size.to_be_bytes());
    header.extend([8, 0, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &header);
    chunk(&mut out, b"IDAT", &zlib);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// Gives container `name` the test app, as a package would install it.
async fn install_app(test: &DaemonTest, name: &str) {
    let incus = &test.env.incus;
    let root = |mode| FileMeta::new(0, 0, mode);
    for dir in [
        "/usr/share/icons/hicolor/16x16/apps",
        "/usr/share/icons/hicolor/48x48/apps",
    ] {
        let mut path = String::new();
        for part in dir.trim_start_matches('/').split('/') {
            path = format!("{path}/{part}");
            incus.ensure_directory(name, &path, root(0o755)).await.unwrap();
        }
    }
    incus
        .ensure_directory(name, "/usr/share/applications", root(0o755))
        .await
        .unwrap();
    let files: [(&str, Vec<u8>, u32); 4] = [
        ("/usr/local/bin/kt-app", APP.into(), 0o755),
        ("/usr/share/applications/org.kapsule.KtApp.desktop", ENTRY.into(), 0o644),
        ("/usr/share/icons/hicolor/16x16/apps/kt-app.png", png(16), 0o644),
        ("/usr/share/icons/hicolor/48x48/apps/kt-app.png", png(48), 0o644),
    ];
    for (path, bytes, mode) in files {
        incus.push_file(name, path, bytes, root(mode)).await.unwrap();
    }
}

/// The user's data directory for this test (their XDG_DATA_HOME), theirs, removed at the end.
struct DataHome(tempfile::TempDir);

impl DataHome {
    fn new(user: &TestUser) -> DataHome {
        let dir = tempfile::Builder::new()
            .prefix("kt-data-home")
            .tempdir_in("/tmp")
            .unwrap();
        std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
        DataHome(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

/// `kapsule ARGS` as the user with `data` as their XDG_DATA_HOME.
fn kapsule(test: &DaemonTest, user: &TestUser, data: &DataHome, args: &[&str]) -> Output {
    user.kapsule(&test.bus)
        .args(args)
        .env("XDG_DATA_HOME", data.path())
        .current_dir(&user.home)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(what: &str, out: Output) -> Output {
    assert!(
        out.status.success(),
        "{what}: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// The `Exec` of `group` in the desktop entry at `path`, as a launcher runs it: unescaped, split
/// by the specification's quoting rules, field codes expanded (`%F` to every file, `%f` to the
/// first, `%i` to `--icon ICON`, `%c` to the name, `%k` to the entry's path).
fn launcher_argv(path: &Path, group: &str, files: &[&str]) -> Vec<String> {
    let entry = std::fs::read_to_string(path).unwrap();
    let mut in_group = false;
    let mut keys = std::collections::HashMap::new();
    for line in entry.lines() {
        if let Some(name) = line.strip_prefix('[') {
            in_group = name.trim_end_matches(']') == group;
        } else if in_group && let Some((k, v)) = line.split_once('=') {
            keys.insert(k.to_owned(), v.to_owned());
        }
    }
    let exec = keys.get("Exec").expect("an Exec line");
    // String-level escapes, then the Exec quoting.
    let exec = exec.replace("\\s", " ").replace("\\\\", "\\");
    let mut words: Vec<String> = Vec::new();
    let (mut word, mut quoted, mut started) = (String::new(), false, false);
    let mut chars = exec.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            '\\' if quoted => word.push(chars.next().unwrap()),
            ' ' if !quoted => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    let mut argv = Vec::new();
    for word in words {
        match word.as_str() {
            "%F" | "%U" => argv.extend(files.iter().map(|f| (*f).to_owned())),
            "%f" | "%u" => argv.extend(files.first().map(|f| (*f).to_owned())),
            "%i" => {
                if let Some(icon) = keys.get("Icon") {
                    argv.extend(["--icon".to_owned(), icon.clone()]);
                }
            }
            _ => argv.push(
                word.replace("%c", &keys["Name"])
                    .replace("%k", &path.to_string_lossy())
                    .replace("%%", "%"),
            ),
        }
    }
    argv
}

fn validate(path: &Path) {
    let out = Command::new("desktop-file-validate")
        .arg(path)
        .output()
        .expect("desktop-file-validate is installed (tests/env/up.sh: desktop-file-utils)");
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success() && !said.contains("error:"),
        "{}: {said}",
        path.display()
    );
}

fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_and_commands_cross_to_the_host_and_go_with_their_container() {
    let test = daemon_test().await;
    let user = test_user();
    let data = DataHome::new(&user);
    let image = format!("local:{}", test.env.image);
    let first = unique_name("export");
    let second = unique_name("export-bare");
    let _guards = (InstanceGuard(first.clone()), InstanceGuard(second.clone()));

    // Made by the CLI: the first gets its menu entry, the second (without the host's root or
    // home) none.
    let made = ok(
        "create",
        kapsule(&test, &user, &data, &["create", &first, "--image", &image]),
    );
    let menu = data.path().join(format!("applications/kapsule.{first}.desktop"));
    assert!(
        text(&made.stderr).contains(&format!("Menu entry: {first} (Kapsule)")),
        "{}",
        text(&made.stderr)
    );
    validate(&menu);
    let argv = launcher_argv(&menu, "Desktop Entry", &[]);
    assert_eq!(argv[1..], ["enter", "--no-create", &first]);
    ok(
        "create --no-host-rootfs --no-mount-home",
        kapsule(
            &test,
            &user,
            &data,
            &[
                "create",
                &second,
                "--image",
                &image,
                "--no-host-rootfs",
                "--no-mount-home",
                "--no-menu-entry",
            ],
        ),
    );
    assert!(
        !data
            .path()
            .join(format!("applications/kapsule.{second}.desktop"))
            .exists()
    );
    install_app(&test, &first).await;
    install_app(&test, &second).await;

    // The app, by its name.
    let out = ok(
        "export --app",
        kapsule(&test, &user, &data, &["export", &first, "--app", "KT App"]),
    );
    let entry = data
        .path()
        .join(format!("applications/kapsule.{first}.org.kapsule.KtApp.desktop"));
    assert!(
        text(&out.stderr).contains(&entry.display().to_string()),
        "{}",
        text(&out.stderr)
    );
    validate(&entry);
    let written = std::fs::read_to_string(&entry).unwrap();
    for line in [
        format!("Name=KT App ({first})"),
        format!("Name[de]=KT Anwendung ({first})"),
        format!("Icon=kapsule.{first}.kt-app"),
        format!("X-Kapsule-Container={first}"),
    ] {
        assert!(written.lines().any(|l| l == line), "{line} in:\n{written}");
    }
    assert!(!written.contains("TryExec"), "{written}");
    for size in [16, 48] {
        let icon = data
            .path()
            .join(format!("icons/hicolor/{size}x{size}/apps/kapsule.{first}.kt-app.png"));
        assert_eq!(std::fs::read(&icon).unwrap(), png(size), "{}", icon.display());
    }

    // Started as a launcher starts it, with a file of the user's (a space in its name).
    let document = format!("{}/kt doc {first}.txt", user.home.display());
    let run = |argv: Vec<String>| {
        user.command(&argv[0])
            .args(&argv[1..])
            .env("KAPSULE_BUS_ADDRESS", &test.bus.address)
            .current_dir(&user.home)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(launcher_argv(&entry, "Desktop Entry", &[&document]));
    assert_eq!(
        text(&out.stdout),
        format!("{first} {} [{document}]\n", user.name),
        "{}",
        text(&out.stderr)
    );
    let out = run(launcher_argv(&entry, "Desktop Action second", &[]));
    assert_eq!(text(&out.stdout), format!("{first} {} [--second]\n", user.name));

    // The same app from the second container: an entry and icons of its own beside the first's.
    ok(
        "export from the second",
        kapsule(&test, &user, &data, &["export", &second, "--app", "org.kapsule.KtApp"]),
    );
    let other = data
        .path()
        .join(format!("applications/kapsule.{second}.org.kapsule.KtApp.desktop"));
    validate(&other);
    let out = run(launcher_argv(&other, "Desktop Entry", &[]));
    assert_eq!(
        text(&out.stdout),
        format!("{second} {} []\n", user.name),
        "{}",
        text(&out.stderr)
    );
    assert!(entry.exists());
    for container in [&first, &second] {
        assert!(
            data.path()
                .join(format!("icons/hicolor/48x48/apps/kapsule.{container}.kt-app.png"))
                .exists()
        );
    }

    // A command: arguments exactly as given, its exit status.
    let bin = data.path().join("bin");
    let bin_arg = bin.to_str().unwrap();
    ok(
        "export --bin",
        kapsule(
            &test,
            &user,
            &data,
            &["export", &first, "--bin", "kt-app", "--export-path", bin_arg],
        ),
    );
    let out = run(vec![
        bin.join("kt-app").display().to_string(),
        "a".into(),
        "b c".into(),
        "".into(),
        "$HOME".into(),
    ]);
    assert_eq!(
        text(&out.stdout),
        format!("{first} {} [a] [b c] [] [$HOME]\n", user.name),
        "{}",
        text(&out.stderr)
    );
    let out = run(vec![
        bin.join("kt-app").display().to_string(),
        "fail".into(),
        "7".into(),
    ]);
    assert_eq!(out.status.code(), Some(7));
    // A name the shell also has as a builtin is still the container's program.
    ok(
        "export --bin printf",
        kapsule(
            &test,
            &user,
            &data,
            &["export", &first, "--bin", "printf", "--export-path", bin_arg],
        ),
    );
    let out = run(vec![
        bin.join("printf").display().to_string(),
        "%s|".into(),
        "a".into(),
        "b c".into(),
    ]);
    assert_eq!(text(&out.stdout), "a|b c|", "{}", text(&out.stderr));

    // Bad requests: a clear error each, and not a file changed.
    std::fs::write(bin.join("true"), "#!/bin/sh\necho the user's own\n").unwrap();
    let before = files_below(data.path());
    let contents: Vec<Vec<u8>> = before.iter().map(|p| std::fs::read(p).unwrap()).collect();
    test.env
        .incus
        .push_file(
            &first,
            "/usr/share/applications/kt-broken.desktop",
            "[Desktop Entry]\nType=Application\nthis is not a key\n",
            FileMeta::new(0, 0, 0o644),
        )
        .await
        .unwrap();
    for (args, said) in [
        (
            vec!["export", &first, "--app", "kt-nothing"],
            "no app 'kt-nothing' in the container",
        ),
        (
            vec!["export", &first, "--app", "kt-broken"],
            "kt-broken.desktop: line 3: neither a group, a key nor a comment",
        ),
        (
            vec!["export", &first, "--bin", "kt-no-such"],
            "no program 'kt-no-such' in the container",
        ),
        (
            vec!["export", &first, "--bin", "/usr/bin/true", "--export-path", bin_arg],
            "exists and was not written by kapsule export",
        ),
        (vec!["export", "../etc", "--app", "x"], "is not a container name"),
        (
            vec!["export", "kt-no-such-container", "--app", "x"],
            "Container 'kt-no-such-container' does not exist",
        ),
        (vec!["export", &first], "nothing to export"),
        (
            vec!["export", &first, "--delete", "--app", "kt-never"],
            "no app 'kt-never' is exported",
        ),
    ] {
        let out = kapsule(&test, &user, &data, &args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(text(&out.stderr).contains(said), "{args:?}: {}", text(&out.stderr));
    }
    let after = files_below(data.path());
    assert_eq!(before, after);
    for (path, bytes) in before.iter().zip(contents) {
        assert_eq!(std::fs::read(path).unwrap(), bytes, "{} changed", path.display());
    }

    // --list, then --delete of one thing takes exactly its files.
    let listed = text(&ok("list", kapsule(&test, &user, &data, &["export", &first, "--list"])).stdout);
    for needle in [
        "app",
        "org.kapsule.KtApp.desktop",
        "bin",
        "/usr/local/bin/kt-app",
        "menu entry",
    ] {
        assert!(listed.contains(needle), "{needle} in:\n{listed}");
    }
    ok(
        "delete",
        kapsule(
            &test,
            &user,
            &data,
            &["export", &second, "--delete", "--app", "org.kapsule.KtApp"],
        ),
    );
    assert!(!other.exists() && entry.exists());
    assert!(
        !files_below(data.path())
            .iter()
            .any(|p| p.to_string_lossy().contains(&format!("kapsule.{second}."))),
        "{:?}",
        files_below(data.path())
    );

    // The second container goes behind Kapsule's back (another client); its export says so.
    ok(
        "export again",
        kapsule(
            &test,
            &user,
            &data,
            &[
                "export",
                &second,
                "--bin",
                "/usr/local/bin/kt-app",
                "--export-path",
                &format!("{bin_arg}/2"),
            ],
        ),
    );
    let deleted = Command::new("incus")
        .args(["delete", "--force", &second])
        .output()
        .unwrap();
    assert!(deleted.status.success(), "{}", text(&deleted.stderr));
    let out = run(vec![bin.join("2/kt-app").display().to_string()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&format!("Container '{second}' does not exist")),
        "{}",
        text(&out.stderr)
    );

    // `kapsule rm` takes the rest of the first container's exports along, and says so.
    let out = ok("rm", kapsule(&test, &user, &data, &["rm", &first, "--force"]));
    assert!(
        text(&out.stderr).contains(&format!(
            "Removed what was exported from {first}: 1 app, 2 commands and the menu entry"
        )),
        "{}",
        text(&out.stderr)
    );
    let left: Vec<PathBuf> = files_below(data.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(&first))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(bin.join("true").exists(), "the user's own file stays");
}

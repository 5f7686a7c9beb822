//! The exports against a container standing in as a directory.

use super::*;

/// A container whose files are below `root`.
struct DirGuest {
    root: PathBuf,
}

impl DirGuest {
    fn put(&self, path: &str, bytes: &[u8]) {
        let full = self.root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, bytes).unwrap();
    }

    fn inside(&self, path: &Path) -> String {
        format!("/{}", path.strip_prefix(&self.root).unwrap().display())
    }

    fn walk(&self, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                self.walk(&path, out);
            } else {
                out.push(self.inside(&path));
            }
        }
    }
}

impl Guest for DirGuest {
    async fn desktop_entries(&self) -> Result<Vec<(String, String)>> {
        let mut found = Vec::new();
        for dir in APPLICATION_DIRS {
            self.walk(&self.root.join(dir.trim_start_matches('/')), &mut found);
        }
        Ok(found
            .into_iter()
            .filter(|p| p.ends_with(".desktop"))
            .map(|p| {
                let text = std::fs::read_to_string(self.root.join(p.trim_start_matches('/'))).unwrap();
                (p, text)
            })
            .collect())
    }

    async fn icon_files(&self, name: &str) -> Result<Vec<String>> {
        let mut found = Vec::new();
        for dir in icons::ICON_DIRS {
            self.walk(&self.root.join(dir.trim_start_matches('/')), &mut found);
        }
        found.sort();
        Ok(found
            .into_iter()
            .filter(|p| {
                let file = p.rsplit('/').next().unwrap();
                icons::EXTENSIONS.iter().any(|e| file == format!("{name}.{e}"))
            })
            .collect())
    }

    async fn read(&self, path: &str) -> Result<Vec<u8>> {
        std::fs::read(self.root.join(path.trim_start_matches('/'))).map_err(|e| Error::Guest(e.to_string()))
    }

    async fn executable(&self, command: &str) -> Result<Option<String>> {
        let path = if command.starts_with('/') {
            command.to_owned()
        } else {
            format!("/usr/bin/{command}")
        };
        Ok(self.root.join(path.trim_start_matches('/')).is_file().then_some(path))
    }
}

fn setup() -> (tempfile::TempDir, DirGuest, Places) {
    let dir = tempfile::tempdir().unwrap();
    let guest = DirGuest {
        root: dir.path().join("container"),
    };
    let places = Places {
        data_home: dir.path().join("home/.local/share"),
        bin: dir.path().join("home/.local/bin"),
    };
    guest.put(
        "/usr/share/applications/org.example.Editor.desktop",
        b"[Desktop Entry]\nType=Application\nName=Editor\nExec=editor %F\nIcon=editor\n",
    );
    guest.put(
        "/usr/share/applications/other.desktop",
        b"[Desktop Entry]\nType=Application\nName=Other\nExec=other\n",
    );
    guest.put("/usr/share/icons/hicolor/48x48/apps/editor.png", b"png48");
    guest.put("/usr/share/icons/hicolor/scalable/apps/editor.svg", b"<svg/>");
    guest.put("/usr/bin/tool", b"#!/bin/sh\n");
    (dir, guest, places)
}

fn block_on<F: Future>(future: F) -> F::Output {
    // The futures here never wait on anything; one poll with a no-op waker finishes them.
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => panic!("a test guest never waits"),
    }
}

#[test]
fn an_app_is_found_by_id_name_or_program_and_lands_with_its_icons() {
    let (_dir, guest, places) = setup();
    for app in ["org.example.Editor", "org.example.Editor.desktop", "editor", "Editor"] {
        let export = block_on(export_app(&guest, &places, "dev", app, "/usr/bin/kapsule")).unwrap();
        assert_eq!(export.source, "org.example.Editor.desktop", "{app}");
        assert_eq!(
            export.files,
            [
                places.applications().join("kapsule.dev.org.example.Editor.desktop"),
                places.icons().join("hicolor/48x48/apps/kapsule.dev.editor.png"),
                places.icons().join("hicolor/scalable/apps/kapsule.dev.editor.svg"),
            ]
        );
    }
    let text = std::fs::read_to_string(places.applications().join("kapsule.dev.org.example.Editor.desktop")).unwrap();
    assert!(
        text.contains("Exec=/usr/bin/kapsule enter --no-create dev -- editor %F\n"),
        "{text}"
    );
    assert!(text.contains("Icon=kapsule.dev.editor\n"), "{text}");
    // The same app of another container: its own entry and icons beside the first.
    let other = block_on(export_app(&guest, &places, "other", "editor", "kapsule")).unwrap();
    assert!(
        other
            .files
            .iter()
            .all(|f| f.to_string_lossy().contains("kapsule.other."))
    );
    assert!(
        places
            .icons()
            .join("hicolor/48x48/apps/kapsule.dev.editor.png")
            .exists()
    );

    let missing = block_on(export_app(&guest, &places, "dev", "nothing", "kapsule")).unwrap_err();
    assert!(
        missing.to_string().starts_with("no app 'nothing' in the container"),
        "{missing}"
    );
}

#[test]
fn what_is_not_ours_is_never_overwritten_or_removed() {
    let (_dir, guest, places) = setup();
    std::fs::create_dir_all(&places.bin).unwrap();
    std::fs::write(places.bin.join("tool"), "#!/bin/sh\necho my own\n").unwrap();
    let refused = block_on(export_bin(&guest, "dev", "tool", &places.bin, "kapsule")).unwrap_err();
    assert!(
        refused.to_string().contains("was not written by kapsule export"),
        "{refused}"
    );
    assert_eq!(
        std::fs::read_to_string(places.bin.join("tool")).unwrap(),
        "#!/bin/sh\necho my own\n"
    );

    let elsewhere = places.bin.join("../elsewhere");
    let export = block_on(export_bin(&guest, "dev", "tool", &elsewhere, "kapsule")).unwrap();
    assert_eq!(export.source, "/usr/bin/tool");
    assert!(is_our_wrapper(&elsewhere.join("tool")));
    for bad in ["..", "/usr/bin/", "-rf"] {
        assert!(
            matches!(
                block_on(export_bin(&guest, "dev", bad, &elsewhere, "kapsule")),
                Err(Error::Refused(_))
            ),
            "{bad}"
        );
    }
    let missing = block_on(export_bin(&guest, "dev", "nope", &elsewhere, "kapsule")).unwrap_err();
    assert_eq!(
        missing.to_string(),
        "no program 'nope' in the container (not on its PATH)"
    );

    // A wrapper the user replaced since stays when the export is removed.
    std::fs::write(elsewhere.join("tool"), "#!/bin/sh\necho replaced\n").unwrap();
    assert!(remove_files(&export, "dev").is_empty());
    assert!(elsewhere.join("tool").exists());
}

#[test]
fn the_menu_entry_is_one_file_of_the_containers() {
    let (_dir, _guest, places) = setup();
    let export = export_menu_entry(&places, "dev", "/usr/bin/kapsule").unwrap();
    let text = std::fs::read_to_string(&export.files[0]).unwrap();
    assert!(
        text.contains("Name=dev (Kapsule)\n") && text.contains("Terminal=true\n"),
        "{text}"
    );
    assert_eq!(remove_files(&export, "dev"), export.files);
    assert!(!export.files[0].exists());
}

//! Where a container's icon files go in the user's icon theme. Icons of the container's `hicolor`
//! theme keep their place in it (every size and context there is); an icon only another theme,
//! `/usr/share/pixmaps` or an absolute `Icon=` path has goes to `hicolor` by what it is (SVG:
//! `scalable`; a square PNG: its size, read from the file) or, failing that, directly into the
//! icons directory, where lookups fall back to unthemed icons.

use std::path::{Path, PathBuf};

/// Where icon files are looked for in a container.
pub const ICON_DIRS: &[&str] = &["/usr/share/icons", "/usr/local/share/icons", "/usr/share/pixmaps"];

/// The extensions of icon files, by preference.
pub const EXTENSIONS: &[&str] = &["png", "svg", "svgz", "xpm"];

/// One icon file found in a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IconFile {
    /// Its path in the container.
    pub path: String,
    /// Its theme (`None` in pixmaps or elsewhere).
    pub theme: Option<String>,
    /// Its directory within the theme, such as `48x48/apps`.
    pub dir: String,
    /// Its extension.
    pub extension: String,
}

impl IconFile {
    fn from_path(path: &str) -> Option<IconFile> {
        let (_, extension) = path.rsplit_once('.')?;
        if !EXTENSIONS.contains(&extension) {
            return None;
        }
        let themed = ["/usr/share/icons/", "/usr/local/share/icons/"]
            .iter()
            .find_map(|base| path.strip_prefix(base))
            .and_then(|rest| {
                let (theme, rest) = rest.split_once('/')?;
                let (dir, _) = rest.rsplit_once('/')?;
                Some((theme.to_owned(), dir.to_owned()))
            });
        let (theme, dir) = match themed {
            Some((theme, dir)) => (Some(theme), dir),
            None => (None, String::new()),
        };
        Some(IconFile {
            path: path.to_owned(),
            theme,
            dir,
            extension: extension.to_owned(),
        })
    }
}

/// The files to copy of those found: all of `hicolor`'s when it has the icon, else all of the
/// first other theme's, else the first unthemed one.
pub(crate) fn choose(found: &[String]) -> Vec<IconFile> {
    let files: Vec<IconFile> = found
        .iter()
        .filter(|p| !p.split('/').any(|part| part == ".." || part == "."))
        .filter_map(|p| IconFile::from_path(p))
        .collect();
    let hicolor: Vec<IconFile> = files
        .iter()
        .filter(|f| f.theme.as_deref() == Some("hicolor"))
        .cloned()
        .collect();
    if !hicolor.is_empty() {
        return hicolor;
    }
    if let Some(theme) = files.iter().find_map(|f| f.theme.clone()) {
        return files.into_iter().filter(|f| f.theme.as_ref() == Some(&theme)).collect();
    }
    files.into_iter().take(1).collect()
}

/// Where `file` (with these `bytes`) goes below `icons` (the user's icons directory) under the
/// icon name `name`; `None` when it is not an icon this code can place.
pub fn icon_target(icons: &Path, file: &IconFile, name: &str, bytes: &[u8]) -> Option<PathBuf> {
    let file_name = format!("{name}.{}", file.extension);
    if file.theme.as_deref() == Some("hicolor") {
        if file.dir.split('/').any(|part| part.is_empty() || part == "..") {
            return None;
        }
        return Some(icons.join("hicolor").join(&file.dir).join(file_name));
    }
    match file.extension.as_str() {
        "svg" | "svgz" => Some(icons.join("hicolor/scalable/apps").join(file_name)),
        "png" => match png_size(bytes) {
            Some((w, h)) if w == h && [16, 22, 24, 32, 48, 64, 96, 128, 256, 512].contains(&w) => {
                Some(icons.join(format!("hicolor/{w}x{w}/apps")).join(file_name))
            }
            Some(_) => Some(icons.join(file_name)),
            None => None,
        },
        _ => Some(icons.join(file_name)),
    }
}

/// Width and height of a PNG, from its header.
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24 || &bytes[..8] != b"\x89PNG\r\n\x1a\n" || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let width = u32::from_be_bytes(bytes[16..20].try_into().ok()?);
    let height = u32::from_be_bytes(bytes[20..24].try_into().ok()?);
    Some((width, height))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(size: u32) -> Vec<u8> {
        let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        bytes.extend(size.to_be_bytes());
        bytes.extend(size.to_be_bytes());
        bytes
    }

    #[test]
    fn hicolor_icons_keep_their_place_and_others_find_one() {
        let found: Vec<String> = [
            "/usr/share/icons/breeze/apps/48/kate.svg",
            "/usr/share/icons/hicolor/16x16/apps/kate.png",
            "/usr/share/icons/hicolor/scalable/apps/kate.svg",
            "/usr/share/pixmaps/kate.xpm",
        ]
        .map(String::from)
        .to_vec();
        let chosen = choose(&found);
        assert_eq!(chosen.len(), 2);
        let icons = Path::new("/home/u/.local/share/icons");
        let targets: Vec<PathBuf> = chosen
            .iter()
            .map(|f| icon_target(icons, f, "kapsule.c.kate", &png(16)).unwrap())
            .collect();
        assert_eq!(
            targets,
            [
                icons.join("hicolor/16x16/apps/kapsule.c.kate.png"),
                icons.join("hicolor/scalable/apps/kapsule.c.kate.svg")
            ]
        );
        // Only breeze has it: by what each file is.
        let breeze = choose(&found[..1]);
        assert_eq!(
            icon_target(icons, &breeze[0], "n", b"<svg/>"),
            Some(icons.join("hicolor/scalable/apps/n.svg"))
        );
        // Only a pixmap: a square PNG of a theme size goes into hicolor, another directly.
        let pixmap = choose(&["/usr/share/pixmaps/x.png".to_owned()]);
        assert_eq!(
            icon_target(icons, &pixmap[0], "n", &png(48)),
            Some(icons.join("hicolor/48x48/apps/n.png"))
        );
        assert_eq!(icon_target(icons, &pixmap[0], "n", &png(50)), Some(icons.join("n.png")));
        assert_eq!(icon_target(icons, &pixmap[0], "n", b"not a png"), None);
        // Climbing out is not an icon.
        assert!(choose(&["/usr/share/icons/hicolor/../../../etc/x.png".to_owned()]).is_empty());
    }
}

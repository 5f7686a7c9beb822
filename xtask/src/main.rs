//! Build chores for the Kapsule workspace: `cargo xtask <task>`.
//!
//! - `validate`: rustfmt (the workspace and fuzz/), clippy with warnings as errors, the layering
//!   of the daemon's and the CLI's modules (`layers.rs`: no upward or sideways import, no cycle,
//!   the module map in docs/ARCHITECTURE.md complete), shell scripts (bash -n, shellcheck), and
//!   XML data files (xmllint). tests/run-all.sh runs it before the tests.
//! - `layers`: only the layering check of `validate`.
//! - `docs <dir>`: the CLI's man pages (`<dir>/man1/*.1`) and shell completions
//!   (`<dir>/completions/{kapsule.bash,_kapsule,kapsule.fish}`), generated from its clap
//!   definition, for packaging.
//! - `sysext [<dir>]`: the Kapsule system extension (default `target/sysext/`): builds the release
//!   binaries and the docs, lays the image out with `sysext/install.sh` (the install manifest) in
//!   `<dir>/kapsule/`, and packs it as `<dir>/kapsule.raw`, with mkosi (`mkosi/`) when mkosi 24 or
//!   newer is installed, else as a plain squashfs image, which systemd-sysext merges the same way.
//! - `static [--release]`: the programs Kapsule places inside containers (`kapsule-host-exec`),
//!   linked statically so they run on any image's C library or none; prints each one's path.
//!   Built for the host triple with `+crt-static` in a target directory of their own
//!   (`target/static/`), so the rest of the workspace keeps its ordinary build and cache.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The layering check of `validate`.
mod layers;

fn main() {
    if let Err(e) = run() {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    let root = workspace_root();
    match task.as_str() {
        "validate" => validate(&root),
        "layers" => layers::check(&root),
        "docs" => {
            let out = std::env::args()
                .nth(2)
                .map(PathBuf::from)
                .context("usage: cargo xtask docs <dir>")?;
            docs(&out)
        }
        "sysext" => {
            let out = std::env::args()
                .nth(2)
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target/sysext"));
            sysext(&root, &out)
        }
        "static" => {
            let release = std::env::args().nth(2).is_some_and(|a| a == "--release");
            // The paths are the task's output (tests read them), so stdout.
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            for path in static_programs(&root, release)? {
                writeln!(stdout, "{}", path.display())?;
            }
            Ok(())
        }
        "" | "help" | "--help" | "-h" => {
            eprintln!(
                "usage: cargo xtask validate | cargo xtask layers | cargo xtask docs <dir> | cargo xtask sysext [<dir>] | cargo xtask static [--release]"
            );
            Ok(())
        }
        other => bail!("unknown task '{other}' (known: validate, layers, docs, sysext, static)"),
    }
}

fn workspace_root() -> PathBuf {
    // xtask lives one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command in the workspace root and fails with its name if it fails.
fn step(root: &Path, what: &str, program: &str, args: &[&str]) -> Result<()> {
    eprintln!("[xtask] {what}");
    let status = Command::new(program)
        .args(args)
        .current_dir(root)
        .status()
        .with_context(|| format!("cannot run {program} (is it installed? tests/env/up.sh installs it)"))?;
    if !status.success() {
        bail!("{what} failed ({program} {})", args.join(" "));
    }
    Ok(())
}

fn validate(root: &Path) -> Result<()> {
    step(root, "rustfmt", "cargo", &["fmt", "--all", "--check"])?;
    // The fuzz targets are a workspace of their own (fuzz/Cargo.toml).
    step(
        root,
        "rustfmt fuzz/",
        "cargo",
        &["fmt", "--manifest-path", "fuzz/Cargo.toml", "--check"],
    )?;
    step(
        root,
        "clippy",
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--quiet",
            "--",
            "-D",
            "warnings",
        ],
    )?;

    eprintln!("[xtask] layers (crates/kapsule-daemon, crates/kapsule)");
    layers::check(root)?;

    // Shell scripts: `*.sh`, CI's entry point, the hooks images ship in `.kapsule/sync` and
    // `.kapsule/init` (named without an extension, as containers run them), mkosi's scripts.
    let scripts = files_with(root, &|p| {
        p.extension().is_some_and(|e| e == "sh")
            || p.ends_with(".ci/run")
            || p.parent()
                .is_some_and(|d| d.ends_with(".kapsule/sync") || d.ends_with(".kapsule/init"))
            || p.file_name().is_some_and(|n| {
                ["mkosi.prepare", "mkosi.build", "mkosi.postinst", "mkosi.finalize"]
                    .iter()
                    .any(|script| n == *script)
            })
    })?;
    for script in &scripts {
        let path = script.to_string_lossy();
        step(root, &format!("bash -n {}", rel(root, script)), "bash", &["-n", &path])?;
    }
    let script_args: Vec<String> = scripts.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let mut args = vec!["--external-sources", "--severity=warning"];
    args.extend(script_args.iter().map(String::as_str));
    step(root, "shellcheck", "shellcheck", &args)?;

    let xml = files_with(root, &|p| {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        name.ends_with(".xml")
            || name.ends_with(".policy")
            || name.ends_with(".conf.in")
            || (name.ends_with(".conf") && p.starts_with(root.join("dbus")))
    })?;
    for file in &xml {
        step(
            root,
            &format!("xmllint {}", rel(root, file)),
            "xmllint",
            &["--noout", &file.to_string_lossy()],
        )?;
    }
    eprintln!(
        "[xtask] validate: all checks passed ({} scripts, {} XML files)",
        scripts.len(),
        xml.len()
    );
    Ok(())
}

fn rel(root: &Path, path: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).display().to_string()
}

/// Every file below `root` (outside target/, .cache/, .git/ and the fuzzers' corpus/ and
/// artifacts/) that `keep` accepts, sorted.
fn files_with(root: &Path, keep: &dyn Fn(&Path) -> bool) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name();
            if entry.file_type()?.is_dir() {
                if !matches!(
                    name.to_str(),
                    Some("target" | ".cache" | ".git" | "corpus" | "artifacts")
                ) {
                    pending.push(path);
                }
            } else if keep(&path) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The programs the image holds, each a package and binary of the same name.
const SYSEXT_BINARIES: &[&str] = &[
    "kapsule",
    "kapsule-daemon",
    "kapsule-init",
    "kapsule-mounts",
    "kapsule-nsenter",
    "kapsule-nvidia-hook",
];

/// The programs that run inside containers, whatever C library the image has.
const STATIC_BINARIES: &[&str] = &["kapsule-host-exec"];

/// Builds [`STATIC_BINARIES`] statically linked and returns their paths.
fn static_programs(root: &Path, release: bool) -> Result<Vec<PathBuf>> {
    let rustc = Command::new("rustc").arg("-vV").output().context("cannot run rustc")?;
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .context("rustc -vV names no host triple")?;
    let mut args = vec!["build", "--quiet", "--target", &host, "--target-dir", "target/static"];
    if release {
        args.push("--release");
    }
    for name in STATIC_BINARIES {
        args.extend(["-p", name, "--bin", name]);
    }
    eprintln!("[xtask] building the static programs ({})", STATIC_BINARIES.join(", "));
    // With an explicit --target, RUSTFLAGS reach only the target's code, not build scripts or
    // proc macros (which must stay dynamic).
    let status = Command::new("cargo")
        .args(&args)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .current_dir(root)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("building the static programs failed (cargo {})", args.join(" "));
    }
    let profile = if release { "release" } else { "debug" };
    Ok(STATIC_BINARIES
        .iter()
        .map(|name| root.join("target/static").join(&host).join(profile).join(name))
        .collect())
}

/// Builds the sysext below `out`: the tree `out/kapsule/` and the image `out/kapsule.raw`.
fn sysext(root: &Path, out: &Path) -> Result<()> {
    let mut args = vec!["build", "--release", "--quiet"];
    for name in SYSEXT_BINARIES {
        args.extend(["-p", name, "--bin", name]);
    }
    step(root, "building the release binaries", "cargo", &args)?;
    let docs_dir = out.join("docs");
    docs(&docs_dir)?;
    let tree = out.join("kapsule");
    if tree.exists() {
        std::fs::remove_dir_all(&tree).with_context(|| format!("cannot remove {}", tree.display()))?;
    }
    // The image's programs, gathered in one place for the install manifest.
    let bin = out.join("bin");
    let _ = std::fs::remove_dir_all(&bin);
    std::fs::create_dir_all(&bin)?;
    let built = SYSEXT_BINARIES
        .iter()
        .map(|name| root.join("target/release").join(name));
    for program in built.chain(static_programs(root, true)?) {
        let name = program.file_name().context("a program without a name")?;
        std::fs::copy(&program, bin.join(name)).with_context(|| format!("cannot copy {}", program.display()))?;
    }
    step(
        root,
        "laying the image out (sysext/install.sh)",
        "bash",
        &[
            "sysext/install.sh",
            &tree.to_string_lossy(),
            &bin.to_string_lossy(),
            &docs_dir.to_string_lossy(),
        ],
    )?;
    let image = out.join("kapsule.raw");
    let _ = std::fs::remove_file(&image);
    if mkosi_version().is_some_and(|v| v >= 24) {
        step(
            root,
            "packing with mkosi",
            "mkosi",
            &[
                "--directory",
                "mkosi",
                "--extra-tree",
                &tree.to_string_lossy(),
                "--output-directory",
                &out.to_string_lossy(),
                "--force",
                "build",
            ],
        )?;
    } else {
        eprintln!("[xtask] mkosi >= 24 not found: packing the same tree as a squashfs image");
        step(
            root,
            "mksquashfs",
            "mksquashfs",
            &[
                &tree.to_string_lossy(),
                &image.to_string_lossy(),
                "-all-root",
                "-noappend",
                "-quiet",
                "-no-progress",
            ],
        )?;
    }
    eprintln!("[xtask] sysext: {} (tree in {})", image.display(), tree.display());
    Ok(())
}

/// The major version of the installed mkosi, if there is one.
fn mkosi_version() -> Option<u32> {
    let out = Command::new("mkosi").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(1)?.split('.').next()?.parse().ok()
}

/// Writes the man pages and completion scripts of the `kapsule` CLI below `out`.
fn docs(out: &Path) -> Result<()> {
    let man = out.join("man1");
    std::fs::create_dir_all(&man).with_context(|| format!("cannot create {}", man.display()))?;
    let pages = kapsule::cli::man_pages();
    for (name, roff) in &pages {
        std::fs::write(man.join(name), roff).with_context(|| format!("cannot write {name}"))?;
    }
    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        let path = clap_complete::generate_to(shell, &mut kapsule::cli::command(), "kapsule", &completions)?;
        eprintln!("[xtask] wrote {}", path.display());
    }
    eprintln!("[xtask] wrote {} man pages to {}", pages.len(), man.display());
    Ok(())
}

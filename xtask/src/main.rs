//! Build chores for the Kapsule workspace: `cargo xtask <task>`.
//!
//! - `validate`: rustfmt (the workspace and fuzz/), clippy with warnings as errors, shell scripts
//!   (bash -n, shellcheck), and XML data files (xmllint). tests/run-all.sh runs it before the
//!   tests.
//! - `docs <dir>`: the CLI's man pages (`<dir>/man1/*.1`) and shell completions
//!   (`<dir>/completions/{kapsule.bash,_kapsule,kapsule.fish}`), generated from its clap
//!   definition, for packaging.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

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
        "docs" => {
            let out = std::env::args()
                .nth(2)
                .map(PathBuf::from)
                .context("usage: cargo xtask docs <dir>")?;
            docs(&out)
        }
        "" | "help" | "--help" | "-h" => {
            eprintln!("usage: cargo xtask validate | cargo xtask docs <dir>");
            Ok(())
        }
        other => bail!("unknown task '{other}' (known: validate, docs)"),
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

    let scripts = files_with(root, &|p| {
        p.extension().is_some_and(|e| e == "sh") || p.ends_with(".ci/run")
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

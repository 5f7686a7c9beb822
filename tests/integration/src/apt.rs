//! A package repository of the tests' own, for the containers' apt without a network: a small
//! package built with `dpkg-deb`, and the `Packages` index of a flat `file:` repository.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::Digest;

/// The tests' package: it installs `/usr/share/kt-hello/version`, which says its version.
pub const PACKAGE: &str = "kt-hello";

/// Builds `kt-hello_<version>_all.deb` in `dir`.
pub fn build_package(dir: &Path, version: &str) -> PathBuf {
    let root = dir.join(format!("{PACKAGE}-{version}"));
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(root.join("usr/share/kt-hello")).unwrap();
    std::fs::write(root.join("usr/share/kt-hello/version"), version).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {PACKAGE}\nVersion: {version}\nArchitecture: all\nMaintainer: Kapsule tests <tests@kapsule.invalid>\nDescription: a package of Kapsule's tests\n"
        ),
    )
    .unwrap();
    let deb = dir.join(format!("{PACKAGE}_{version}_all.deb"));
    let out = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&root)
        .arg(&deb)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dpkg-deb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    deb
}

/// The repository's `Packages` index for one package file, as apt reads a flat repository.
pub fn packages_index(deb: &Path, version: &str) -> String {
    let data = std::fs::read(deb).unwrap();
    let file = deb.file_name().unwrap().to_str().unwrap();
    format!(
        "Package: {PACKAGE}\nVersion: {version}\nArchitecture: all\nMaintainer: Kapsule tests <tests@kapsule.invalid>\nFilename: ./{file}\nSize: {}\nSHA256: {:x}\nDescription: a package of Kapsule's tests\n\n",
        data.len(),
        sha2::Sha256::digest(&data)
    )
}

/// A repository directory holding `version` of the package alone, for `file:<dir>`.
pub fn repository(dir: &Path, version: &str) -> PathBuf {
    let repo = dir.join(format!("repo-{version}"));
    std::fs::create_dir_all(&repo).unwrap();
    let deb = build_package(dir, version);
    let file = deb.file_name().unwrap();
    std::fs::copy(&deb, repo.join(file)).unwrap();
    std::fs::write(repo.join("Packages"), packages_index(&deb, version)).unwrap();
    repo
}

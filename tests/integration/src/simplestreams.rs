//! A simplestreams image server on loopback, over HTTPS with a self-signed certificate, for
//! tests that pull images through Incus without the internet.
//!
//! Images are published with the project's own `images/publish.sh`, as a vendor publishes a
//! Kapsule remote. The files are served by `openssl s_server -HTTP`, which sends each file as a complete HTTP
//! response; each one is written with its `Content-Length`, so Incus knows the size and reports
//! its download progress in percent, as it does for real servers.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// A running server; stopped, and Incus's cached index of it dropped, when dropped.
#[derive(Debug)]
pub struct SimpleStreamsServer {
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// The server's certificate (PEM), to pin.
    pub certificate: PathBuf,
    root: tempfile::TempDir,
    child: Child,
}

/// One published image: what Incus will call it.
#[derive(Clone, Debug)]
pub struct Published {
    pub fingerprint: String,
}

impl SimpleStreamsServer {
    /// Starts a server with no images.
    pub fn start() -> SimpleStreamsServer {
        let root = tempfile::tempdir().unwrap();
        let certificate = root.path().join("cert.pem");
        let key = root.path().join("key.pem");
        let status = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
            // Incus checks the name against the pinned certificate too.
            .args(["-addext", "subjectAltName=IP:127.0.0.1"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&certificate)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl is not installed; run tests/env/up.sh");
        assert!(status.success(), "openssl req failed");
        let www = root.path().join("www");
        std::fs::create_dir_all(www.join("streams/v1")).unwrap();
        // A free port: bound by us, released, then taken by the server at once.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("openssl")
            .args(["s_server", "-HTTP", "-quiet", "-accept", &format!("127.0.0.1:{port}")])
            .arg("-cert")
            .arg(&certificate)
            .arg("-key")
            .arg(&key)
            .current_dir(&www)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = SimpleStreamsServer {
            url: format!("https://127.0.0.1:{port}"),
            certificate,
            root,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the image server did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Publishes the split image in `dir` (as [`pack_xz`] leaves it) as `alias`, version
    /// `version` (`YYYYMMDD_HHMM`), with the project's own publisher (`images/publish.sh`);
    /// older versions stay offered, as on a real server.
    pub fn publish(&mut self, alias: &str, version: &str, dir: &Path, default_options: Option<&str>) -> Published {
        let stream = self.root.path().join("stream");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images/publish.sh");
        let mut command = Command::new("bash");
        command.arg(script).args(["--alias", alias, "--version", version]);
        if let Some(options) = default_options {
            command.args(["--default-options", options]);
        }
        let out = command.arg(dir).arg(&stream).output().unwrap();
        assert!(
            out.status.success(),
            "publish.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let fingerprint = {
            let mut hash = Sha256::new();
            hash.update(std::fs::read(dir.join("incus.tar.xz")).unwrap());
            hash.update(std::fs::read(dir.join("rootfs.tar.xz")).unwrap());
            hex(&hash.finalize())
        };
        // Every file of the tree, as the response the server sends for it.
        let mut pending = vec![stream.clone()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    let relative = path.strip_prefix(&stream).unwrap().to_str().unwrap().to_owned();
                    self.serve(&relative, &std::fs::read(&path).unwrap());
                }
            }
        }
        Published { fingerprint }
    }

    /// Writes `path` as the complete HTTP response `s_server -HTTP` sends for it.
    fn serve(&self, path: &str, body: &[u8]) {
        let file = self.root.path().join("www").join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let mut response = format!(
            "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(body);
        // Replaced in one step: the server may be reading the old one.
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, response).unwrap();
        std::fs::rename(tmp, file).unwrap();
    }

    /// Incus's cache directory for this server's index.
    pub fn incus_cache_dir(&self) -> PathBuf {
        PathBuf::from("/var/cache/incus").join(hex(&Sha256::digest(self.url.as_bytes())))
    }
}

impl Drop for SimpleStreamsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(self.incus_cache_dir());
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Packs `dir/rootfs` as a tar.xz pair (`incus.tar.xz`, `rootfs.tar.xz` in `dir`), the files
/// image servers publish, and returns the two paths.
pub fn pack_xz(dir: &Path, description: &str) -> (PathBuf, PathBuf) {
    std::fs::write(
        dir.join("metadata.yaml"),
        format!("architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  description: {description}\n"),
    )
    .unwrap();
    let meta = dir.join("incus.tar.xz");
    let rootfs = dir.join("rootfs.tar.xz");
    let tar = |args: &[&std::ffi::OsStr]| assert!(Command::new("tar").args(args).status().unwrap().success());
    tar(&[
        "-C".as_ref(),
        dir.as_os_str(),
        "-cJf".as_ref(),
        meta.as_os_str(),
        "metadata.yaml".as_ref(),
    ]);
    tar(&[
        "-C".as_ref(),
        dir.join("rootfs").as_os_str(),
        "-cJf".as_ref(),
        rootfs.as_os_str(),
        ".".as_ref(),
    ]);
    (meta, rootfs)
}

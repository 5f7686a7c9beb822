//! A desktop session of a test user on the host, as far as Kapsule sees one: Wayland, PipeWire,
//! PulseAudio and X11 sockets that answer each client with their names, an Xauthority file, and
//! a private session bus on which the host owns [`HOST_NAME`]. The desktop tests enter
//! containers with its environment; the benchmark times enters in it.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::TestUser;

/// The X display of the fake desktop (a number no real X server here uses).
pub const DISPLAY: u32 = 73;
pub const WAYLAND: &str = "wayland-kt";
pub const XAUTH: &str = "kt-xauthority";
pub const HOST_NAME: &str = "org.kde.KapsuleTest.Host";

/// A desktop session of `user` on the host, as far as sockets go. Removes what it made when
/// dropped.
#[derive(Debug)]
pub struct FakeDesktop {
    pub user: TestUser,
    pub run: PathBuf,
    made_run: bool,
    made: Vec<PathBuf>,
    bus: Option<std::process::Child>,
    _bus_owner: Option<zbus::Connection>,
    _config: tempfile::TempDir,
}

impl FakeDesktop {
    pub async fn start(user: &TestUser) -> FakeDesktop {
        let run = PathBuf::from(format!("/run/user/{}", user.uid));
        let made_run = !run.exists();
        if made_run {
            std::fs::create_dir_all(&run).unwrap();
            chown(&run, user);
            std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        }
        let config = tempfile::tempdir().unwrap();
        let mut desktop = FakeDesktop {
            user: user.clone(),
            run: run.clone(),
            made_run,
            made: Vec::new(),
            bus: None,
            _bus_owner: None,
            _config: config,
        };
        desktop.serve(&run.join(WAYLAND), "wayland");
        desktop.serve(&run.join("pipewire-0"), "pipewire");
        std::fs::create_dir_all(run.join("pulse")).unwrap();
        chown(&run.join("pulse"), user);
        desktop.serve(&run.join("pulse/native"), "pulse");
        let x11 = Path::new("/tmp/.X11-unix");
        if !x11.exists() {
            std::fs::create_dir_all(x11).unwrap();
            std::fs::set_permissions(x11, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
        }
        desktop.serve(&x11.join(format!("X{DISPLAY}")), "x11");
        std::fs::write(run.join(XAUTH), "xauth-cookie\n").unwrap();
        chown(&run.join(XAUTH), user);
        desktop.made.push(run.join(XAUTH));
        desktop.start_session_bus().await;
        desktop
    }

    /// A socket at `path`, the user's, whose server says `name` to each client.
    pub fn serve(&mut self, path: &Path, name: &'static str) {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        chown(path, &self.user);
        self.made.push(path.to_owned());
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let _ = writeln!(stream, "{name}");
            }
        });
    }

    /// A session bus of the user's at `$XDG_RUNTIME_DIR/bus`, on which the test (on the host)
    /// owns [`HOST_NAME`].
    async fn start_session_bus(&mut self) {
        let socket = self.run.join("bus");
        let _ = std::fs::remove_file(&socket);
        let config = self._config.path().join("session.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <!-- The user (inside the container) and root (the test, owning a name) connect. -->
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(self._config.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let child = Command::new("setpriv")
            .args([
                &format!("--reuid={}", self.user.uid),
                &format!("--regid={}", self.user.gid),
                "--clear-groups",
                "dbus-daemon",
                "--nofork",
            ])
            .arg(format!("--config-file={}", config.display()))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.bus = Some(child);
        for _ in 0..200 {
            if socket.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(socket.exists(), "the session bus did not come up");
        self.made.push(socket.clone());
        let owner = zbus::connection::Builder::address(format!("unix:path={}", socket.display()).as_str())
            .name(HOST_NAME)
            .build();
        let owner = tokio::time::timeout(std::time::Duration::from_secs(10), owner)
            .await
            .expect("the session bus answers")
            .unwrap();
        self._bus_owner = Some(owner);
    }

    /// The environment the user's programs have in this session.
    pub fn environment(&self) -> Vec<(&'static str, String)> {
        let run = self.run.display();
        vec![
            ("XDG_RUNTIME_DIR", run.to_string()),
            ("WAYLAND_DISPLAY", WAYLAND.to_owned()),
            ("DISPLAY", format!(":{DISPLAY}")),
            ("XAUTHORITY", format!("{run}/{XAUTH}")),
            ("DBUS_SESSION_BUS_ADDRESS", format!("unix:path={run}/bus")),
        ]
    }
}

impl Drop for FakeDesktop {
    fn drop(&mut self) {
        self._bus_owner = None;
        if let Some(bus) = &mut self.bus {
            let _ = bus.kill();
            let _ = bus.wait();
        }
        for path in &self.made {
            let _ = std::fs::remove_file(path);
        }
        let _ = std::fs::remove_dir(self.run.join("pulse"));
        if self.made_run {
            let _ = std::fs::remove_dir(&self.run);
        }
    }
}

fn chown(path: &Path, user: &TestUser) {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).unwrap();
}

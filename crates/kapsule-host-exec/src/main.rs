//! kapsule-host-exec: run a command on the host as yourself, from inside a Kapsule container.
//! Linked under another name (`xdg-open`), it runs that name on the host. Exits as the host
//! command did; its own failures are one line on stderr and status 127 (the command could not
//! be started) or 125 (anything else), the codes `env` and podman use.

fn main() {
    let request = match kapsule_host_exec::Request::from_args(std::env::args_os()) {
        Ok(request) => request,
        Err(kapsule_host_exec::Usage::Help(text)) => {
            use std::io::Write;
            let _ = std::io::stdout().write_all(text.as_bytes());
            return;
        }
        Err(kapsule_host_exec::Usage::Wrong(text)) => {
            eprintln!("kapsule-host-exec: {text}");
            std::process::exit(125);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(kapsule_host_exec::run(request)),
        Err(e) => Err(kapsule_host_exec::Error::Other(e.to_string())),
    };
    match result {
        Ok(kapsule_dbus::session::Status::Exited(code)) => std::process::exit(code),
        Ok(kapsule_dbus::session::Status::Killed(signal)) => {
            kapsule_sys::reset_and_raise(signal);
            std::process::exit(128 + signal);
        }
        Err(e) => {
            eprintln!("kapsule-host-exec: {e}");
            std::process::exit(e.exit_code());
        }
    }
}

//! The NVIDIA hook's reading of its arguments and environment (as LXC sets them, or anyone who
//! runs it): it never panics, and a command it would exec is always `nvidia-container-cli` from an
//! absolute directory, configuring the absolute rootfs it was given.
#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

use kapsule_nvidia_hook::{Action, Input, decide};
use libfuzzer_sys::arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

fn os(u: &mut Unstructured) -> Option<OsString> {
    Option::<Vec<u8>>::arbitrary(u).ok().flatten().map(OsString::from_vec)
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let count = u.int_in_range(0..=5u8).unwrap_or(0);
    let input = Input {
        args: (0..count).filter_map(|_| os(&mut u)).collect(),
        hook_version: Option::<String>::arbitrary(&mut u).ok().flatten(),
        hook_type: Option::<String>::arbitrary(&mut u).ok().flatten(),
        rootfs_mount: os(&mut u),
        path: os(&mut u),
    };
    // Which host paths exist: a pseudo-random half of them, chosen by the input.
    let salt = u8::arbitrary(&mut u).unwrap_or(0);
    let exists = |p: &Path| {
        let bytes = p.as_os_str().as_encoded_bytes();
        bytes.iter().fold(salt, |h, b| h.wrapping_mul(31).wrapping_add(*b)) & 1 == 0
    };
    match decide(&input, exists) {
        Action::Nothing => {}
        Action::Fail(message) => assert!(!message.is_empty()),
        Action::Exec { program, args } => {
            assert!(program.is_absolute(), "{program:?}");
            assert!(program.ends_with("nvidia-container-cli"), "{program:?}");
            assert_eq!(args.first().map(OsString::as_os_str), Some("configure".as_ref()));
            let rootfs = args.last().unwrap();
            assert_eq!(Some(rootfs), input.rootfs_mount.as_ref());
            assert!(Path::new(rootfs).is_absolute() && Path::new(rootfs) != Path::new("/"));
        }
    }
});

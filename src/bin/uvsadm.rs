//! `uvsadm`: ipvsadm's command line for the uvs director (see `docs/uvsadm.md`).
//!
//! Everything except finding the director lives in `uvs::ctl::ipvsadm::run`. The one option of
//! its own, `--admin-socket PATH` (or `--admin-socket=PATH`, anywhere on the line), talks to a
//! director listening on a filesystem socket instead of the abstract `@uvs/admin` of the
//! current network namespace. Invoked through a link named `ipvsadm`, it behaves identically
//! and names itself as invoked, as ipvsadm does; through links named `ipvsadm-save` and
//! `ipvsadm-restore` it does what ipvsadm's scripts of those names do (`-S`, `-R`).
#![forbid(unsafe_code)]

use std::path::PathBuf;

use uvs::ctl::backend::{SocketBackend, SocketLocation};

fn main() {
    let mut argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut location = SocketLocation::Abstract;
    let mut i = 1;
    while i < argv.len() {
        if argv[i] == "--admin-socket" {
            if i + 1 >= argv.len() {
                eprintln!("--admin-socket: missing argument");
                std::process::exit(255);
            }
            location = SocketLocation::Path(PathBuf::from(argv.remove(i + 1)));
            argv.remove(i);
        } else if let Some(p) = argv[i].strip_prefix("--admin-socket=") {
            location = SocketLocation::Path(PathBuf::from(p));
            argv.remove(i);
        } else {
            i += 1;
        }
    }
    let mut backend = SocketBackend { location };
    let code = uvs::ctl::ipvsadm::run(
        &argv,
        &mut std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
        &mut backend,
    );
    std::process::exit(code);
}

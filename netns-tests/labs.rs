//! Every lab file in configs/labs/ comes up with `uvs lab up`, passes its own smoke check
//! (requests reach every expected real server), and `uvs lab down` leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use uvs::lab::spec::LabSpec;

use crate::common;

fn uvs(args: &[&str]) -> (bool, String) {
    let out = Command::new(common::uvs_exe())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running uvs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn lab_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/labs");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    v
}

fn leftovers(prefix: &str) -> Vec<String> {
    let mut left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    let state = Path::new(uvs::lab::build::STATE_ROOT).join(prefix.trim_end_matches('-'));
    if state.exists() {
        left.push(state.display().to_string());
    }
    left
}

#[test]
fn every_lab_file_comes_up_passes_its_smoke_check_and_goes_down() {
    let Some(ctx) = common::setup(42) else { return };
    for file in lab_files() {
        let spec = LabSpec::load(&file).unwrap();
        // Our own prefix, so a lab a user has up is never touched.
        let prefix = format!("{}{}-", ctx.prefix, &spec.prefix[4..6]);
        let f = file.to_str().unwrap();
        let (ok, up) = uvs(&["lab", "up", f, "--prefix", &prefix]);
        let result = if !ok {
            Err(format!("lab up {f}:\n{up}"))
        } else {
            let (ok_s, status) = uvs(&["lab", "status", f, "--prefix", &prefix]);
            let (ok_c, check) = uvs(&["lab", "check", f, "--prefix", &prefix]);
            if ok_s && ok_c {
                Ok(())
            } else {
                Err(format!("{f}: status:\n{status}\ncheck:\n{check}"))
            }
        };
        let (ok_d, down) = uvs(&["lab", "down", f, "--prefix", &prefix]);
        if let Err(e) = result {
            panic!("{e}");
        }
        assert!(ok_d, "lab down {f}:\n{down}");
        let left = leftovers(&prefix);
        assert!(left.is_empty(), "{f}: left behind {left:?}");
        let (_, status) = uvs(&["lab", "status", f, "--prefix", &prefix]);
        assert!(status.contains(": down"), "{status}");
    }
}

#[test]
fn lab_down_after_a_crashed_up_removes_what_was_recorded() {
    let Some(ctx) = common::setup(43) else { return };
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/labs/single-segment.toml");
    let f = file.to_str().unwrap();
    let prefix = ctx.prefix.clone();
    // SIGKILL `lab up` half-way: no teardown runs, the state file is all that is left.
    let mut child = Command::new(common::uvs_exe())
        .args(["lab", "up", f, "--prefix", &prefix])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state = Path::new(uvs::lab::build::STATE_ROOT)
        .join(prefix.trim_end_matches('-'))
        .join("state.json");
    let seen = common::poll(std::time::Duration::from_secs(20), || {
        let s = std::fs::read_to_string(&state).ok()?;
        s.contains("nginx")
            .then_some(())
            .or_else(|| s.contains("lab-http").then_some(()))
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.is_some(), "lab up never recorded a server");
    let (ok, down) = uvs(&["lab", "down", f, "--prefix", &prefix]);
    assert!(ok, "{down}");
    let left = leftovers(&prefix);
    assert!(left.is_empty(), "left behind {left:?}");
}

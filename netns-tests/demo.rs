//! `uvs demo`, run exactly as a user would.

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::common;

#[test]
fn demo_runs_and_names_both_real_servers() {
    let Some(_ctx) = common::setup(9) else { return };
    let out_path = std::env::temp_dir().join(format!("uvs-demo-test-{}.out", std::process::id()));
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(common::uvs_exe())
        .arg("demo")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawning uvs demo");
    let prefix = format!("uvsdemo{}-", child.id() % 10000);
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() >= deadline {
            break None;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let Some(status) = status else {
        // Our own child: SIGTERM lets the demo tear its lab down.
        // SAFETY: kill(2) on the PID of our unreaped child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = child.wait();
        panic!("uvs demo did not finish within 90 s");
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    assert!(status.success(), "uvs demo failed ({status}):\n{text}");
    // The demo prints "request N -> rsX" per answered request.
    for rs in ["rs1", "rs2"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("request ") && l.trim_end().ends_with(&format!("-> {rs}"))),
            "demo output shows no request answered by {rs}:\n{text}"
        );
    }
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left: Vec<String> = String::from_utf8_lossy(&ns.stdout)
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "demo left namespaces behind: {left:?}");
}

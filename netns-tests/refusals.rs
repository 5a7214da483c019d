//! `uvs run` refuses clearly, and starts nothing, when it lacks privileges, an interface is
//! missing, the rules are bad, or another uvs already serves the namespace.

use uvs::lab::Lab;

use crate::common::{self, As, Director};

/// Runs `uvs run ARGS` in the lab's director namespace as `who` and returns (exit success,
/// stderr).
fn run_in_dir(lab: &Lab, who: As, args: &[&str]) -> (bool, String) {
    let mut argv = vec!["run"];
    argv.extend_from_slice(args);
    let out = common::uvs_in(&lab.ns("dir"), who, &argv);
    (out.ok(), out.stderr)
}

#[test]
fn refusals_name_the_problem_and_start_nothing() {
    let Some(ctx) = common::setup(30) else { return };
    let mut lab = ctx.dr_lab();
    let rules = lab.dir().join("refusal.rules");
    std::fs::write(&rules, common::dr_rules('t', 80)).expect("rules");
    // The rules file must be readable by nobody for the privilege check to be the first error.
    let _ = std::fs::set_permissions(
        lab.dir(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    );
    let r = common::path_str(&rules);

    let (ok, err) = run_in_dir(
        &lab,
        As::Nobody,
        &["--rules", r, "--interface", "eth0", "--metrics", "off"],
    );
    assert!(!ok);
    assert!(err.contains("needs root"), "{err}");

    let (ok, err) = run_in_dir(
        &lab,
        As::Root,
        &["--rules", r, "--interface", "eth9", "--metrics", "off"],
    );
    assert!(!ok);
    assert!(err.contains("interface eth9 does not exist"), "{err}");

    std::fs::write(
        &rules,
        "-A -t 10.0.0.100:80 -s rr\n-a -t 10.0.0.100:80 -r 10.0.0.11 -w 70000\n",
    )
    .expect("rules");
    let (ok, err) = run_in_dir(
        &lab,
        As::Root,
        &["--rules", r, "--interface", "eth0", "--metrics", "off"],
    );
    assert!(!ok);
    assert!(err.contains(":2:"), "the error names the line: {err}");

    std::fs::write(&rules, common::dr_rules('t', 80)).expect("rules");
    Director::rr_http().start(&mut lab);
    let (ok, err) = run_in_dir(
        &lab,
        As::Root,
        &["--rules", r, "--interface", "eth0", "--metrics", "off"],
    );
    assert!(!ok);
    assert!(
        err.contains("another uvs is already running in this network namespace"),
        "{err}"
    );
    // None of the refused starts touched the running director's nftables table.
    let tables = lab
        .exec_ok("dir", &["nft", "list", "tables"])
        .unwrap_or_default();
    assert!(tables.contains("netdev uvs"), "{tables}");
}

//! The DR lab with veth offloads on (kernel defaults: checksum-partial frames and GSO
//! super-frames reach the director) and off: scheduling and bulk data must work either way.

use uvs::lab::{LabOptions, addr};

use crate::common::{self, Director};

fn run(testno: u32, offloads: bool) {
    let Some(ctx) = common::setup(testno) else {
        return;
    };
    let mut lab = ctx.dr_lab_with(&LabOptions { offloads });
    common::start_web(&mut lab);
    for rs in ["rs1", "rs2"] {
        lab.start_builtin_http(rs, rs, 8080, &common::uvs_exe())
            .unwrap_or_else(|e| panic!("responder on {rs}:8080: {e:#}"));
    }
    let rules = format!(
        "{}{}",
        common::dr_rules('t', 80),
        common::dr_rules('t', 8080)
    );
    Director::launch()
        .rules(&rules)
        .interface("eth0")
        .start(&mut lab);

    common::assert_even_split(&lab, 10, &format!("offloads {offloads}"));

    let url = format!("http://{}:8080/", addr::VIP);
    let mut names = Vec::new();
    for i in 0..2u64 {
        let data = common::pseudo_random(2 << 20, 0x0ff1_0ad5 + i);
        names.push(common::upload_and_verify(
            &lab,
            &url,
            &data,
            &format!("{i}"),
        ));
    }
    names.sort();
    assert_eq!(names, ["rs1", "rs2"], "two uploads under rr");
}

#[test]
fn offloads_on_requests_and_2mb_uploads_arrive_intact() {
    run(6, true);
}

#[test]
fn offloads_off_requests_and_2mb_uploads_arrive_intact() {
    run(7, false);
}

//! The kernel IPVS DR selftest's topology (`ipvs.sh`, `test_dr`) with uvs as the director.

use uvs::lab::addr::two_arm as a;

use crate::common::{self, Director};

#[test]
fn two_arm_selftest_shape_transfers_data_intact() {
    let Some(ctx) = common::setup(5) else { return };
    let mut lab = ctx.two_arm_lab();
    lab.start_builtin_http("rs1", "rs1", 8080, &common::uvs_exe())
        .unwrap_or_else(|e| panic!("responder on rs1: {e:#}"));
    let rules = format!(
        "-A -t {vip}:8080 -s rr\n-a -t {vip}:8080 -r {rs}:8080 -g -w 1\n",
        vip = a::VIP,
        rs = a::RS1
    );
    Director::launch()
        .rules(&rules)
        .interface("veth10")
        .interface("veth12")
        .start(&mut lab);

    let pcap = lab.dir().join("dir-veth10.pcap");
    let cap = lab.tcpdump_start("dir", "veth10", "", &pcap).unwrap();
    let url = format!("http://{}:8080/", a::VIP);
    let data = common::pseudo_random(2 << 20, 0x5e1f_7e57);
    let who = common::upload_and_verify(&lab, &url, &data, "two-arm");
    assert_eq!(who, "rs1");
    // A plain GET too, over a fresh connection.
    let body = lab
        .curl("client", &url, &[])
        .unwrap_or_else(|e| panic!("GET {url}: {e:#}"));
    assert_eq!(body, "rs1\n");
    common::stop_capture(&mut lab, cap);

    let pkts = common::read_pcap(&lab, &pcap);
    let vip = a::VIP.to_string();
    let dir_ip = a::DIRECTOR_CLIENT.to_string();
    assert!(
        pkts.iter()
            .filter(|p| p.dst_ip.as_deref() == Some(&vip))
            .count()
            > 10,
        "the capture on veth10 missed the upload: {} packets",
        pkts.len()
    );
    let bad: Vec<_> = pkts
        .iter()
        .filter(|p| {
            matches!(p.src_ip.as_deref(), Some(s) if s == vip || s == dir_ip)
                && (p.is_rst() || p.is_icmp())
        })
        .map(|p| &p.line)
        .collect();
    assert!(bad.is_empty(), "the director sent RST/ICMP: {bad:#?}");
    // rs1 answers over veth20, so nothing from the VIP ever crosses veth10.
    let via_dir = pkts
        .iter()
        .filter(|p| p.src_ip.as_deref() == Some(&vip))
        .count();
    assert_eq!(via_dir, 0, "{via_dir} replies went through the director");
}

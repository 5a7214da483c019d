//! fwmark services end to end: a mark rule over ports 80 and 443 (uvs's stand-in for
//! `iptables -t mangle … -m multiport --dports 80,443 -j MARK --set-mark 1`) sends both ports
//! to the `-f 1` service, ahead of an address service on VIP:443; `-Ln` shows `FWM  1`.

use uvs::lab::{Lab, addr};

use crate::common::{self, Director};

fn get(lab: &Lab, port: u16) -> String {
    let url = format!("http://{}:{port}/", addr::VIP);
    lab.curl("client", &url, &[])
        .unwrap_or_else(|e| {
            panic!(
                "GET {url}: {e:#}\ndirector log:\n{}",
                common::director_tail(lab)
            )
        })
        .trim()
        .to_string()
}

#[test]
fn a_mark_rule_over_80_and_443_feeds_one_fwmark_service() {
    let Some(ctx) = common::setup(48) else { return };
    let mut lab = ctx.dr_lab();
    for rs in ["rs1", "rs2"] {
        for port in [80, 443] {
            lab.start_builtin_http(rs, rs, port, &common::uvs_exe())
                .unwrap_or_else(|e| panic!("web server on {rs}:{port}: {e:#}"));
        }
    }
    let (vip, rs1, rs2) = (addr::VIP, addr::RS1, addr::RS2);
    // The address service on 443 (rs1 only) loses to the mark rule, as in IPVS.
    let rules = format!(
        "--add-mark 1 -t {vip}:80,443\n\
         -A -t {vip}:443 -s rr\n\
         -a -t {vip}:443 -r {rs1}:443 -g\n\
         -A -f 1 -s rr\n\
         -a -f 1 -r {rs1}:0 -g\n\
         -a -f 1 -r {rs2}:0 -g\n"
    );
    let d = Director::launch()
        .rules(&rules)
        .interface("eth0")
        .start(&mut lab);

    // rr over the fwmark service: 80, 80, 443, 443 → each port reaches both reals.
    let answers: Vec<(u16, String)> = [80, 80, 443, 443, 80, 443]
        .into_iter()
        .map(|p| (p, get(&lab, p)))
        .collect();
    for port in [80, 443] {
        let mut got: Vec<&str> = answers
            .iter()
            .filter(|(p, _)| *p == port)
            .map(|(_, a)| a.as_str())
            .collect();
        got.sort();
        got.dedup();
        assert_eq!(got, ["rs1", "rs2"], "port {port}: {answers:?}");
    }

    // The kernel filter drops the marked ports too (the director's kernel stays off them).
    let nft = lab
        .exec_ok("dir", &["nft", "list", "table", "netdev", "uvs"])
        .unwrap_or_else(|e| panic!("nft list: {e:#}"));
    for port in [80, 443] {
        assert!(
            nft.contains(&format!("{vip} . tcp . {port} counter")),
            "{nft}"
        );
    }

    let ln = d.uvsadm(&["-Ln"]).checked();
    assert!(ln.contains("\nFWM  1 rr\n"), "{ln}");
    assert!(
        ln.contains(&format!("  -> {:<28} Route   1      ", format!("{rs1}:0"))),
        "{ln}"
    );
    let stats = d.uvsadm(&["-Ln", "--stats", "-f", "1"]).checked();
    let conns: u64 = stats
        .lines()
        .find(|l| l.starts_with("FWM  1"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stats}"));
    assert_eq!(conns, 6, "{stats}");
    assert!(
        d.uvsadm(&["--list-marks"])
            .checked()
            .contains(&format!("1     TCP  {vip:<15} 80,443")),
        "mark rules listed"
    );

    // Live: without the mark rule, 443 goes back to its address service (rs1 only).
    d.uvsadm(&["--del-mark", "1", "-t", &format!("{vip}:80,443")])
        .checked();
    for _ in 0..3 {
        assert_eq!(get(&lab, 443), "rs1");
    }
}

//! `uvs trace` and `uvs capture` against a running director in the DR lab.

use std::path::PathBuf;
use std::time::Duration;

use uvs::lab::{Lab, addr};

use crate::common::{self, Ctx, Director, path_str};

fn lab_with_director(ctx: &Ctx) -> (Lab, Director) {
    let mut lab = ctx.web_lab();
    let d = Director::rr_http().metrics_off().start(&mut lab);
    (lab, d)
}

/// Starts `uvs trace ARGS` in the director's namespace, output to a log; waits for its header.
fn start_trace(lab: &mut Lab, args: &[&str]) -> (u32, PathBuf) {
    let log = lab.dir().join("trace.out");
    let exe = common::uvs_exe();
    let mut full = vec![path_str(&exe), "trace"];
    full.extend_from_slice(args);
    let pid = lab.spawn("dir", &full, &log).unwrap();
    common::poll(Duration::from_secs(5), || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|s| s.contains("# uvs trace"))
    })
    .unwrap_or_else(|| panic!("uvs trace did not attach:\n{}", uvs::lab::tail(&log, 20)));
    (pid, log)
}

fn trace_lines(log: &PathBuf) -> Vec<String> {
    std::thread::sleep(Duration::from_millis(300));
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn rr_trace_names_the_real_server_each_new_flow_reached() {
    let Some(ctx) = common::setup(44) else { return };
    let (mut lab, _d) = lab_with_director(&ctx);
    let (pid, log) = start_trace(&mut lab, &["--service", "10.0.0.100:80"]);
    let answers = common::curl_vip(&lab, 6);
    let lines = trace_lines(&log);
    lab.kill(pid);
    let picked: Vec<String> = lines
        .iter()
        .filter(|l| l.contains(" [S] ") && l.contains("new flow -> "))
        .map(|l| {
            assert!(l.contains("rr: position"), "no rr explanation: {l}");
            assert!(
                l.contains("=> 02:00:00:00:02:00 > 02:00:00:00:1"),
                "no MAC rewrite: {l}"
            );
            let ip = l
                .split("new flow -> ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap();
            match ip {
                "10.0.0.11" => "rs1".to_string(),
                "10.0.0.12" => "rs2".to_string(),
                o => panic!("unexpected real {o} in {l}"),
            }
        })
        .collect();
    assert_eq!(
        picked,
        answers,
        "the trace's choices must be the servers that answered:\n{}",
        lines.join("\n")
    );
    assert!(
        lines.iter().any(|l| l.contains("existing flow -> ")),
        "no existing-flow lines:\n{}",
        lines.join("\n")
    );
}

#[test]
fn a_drop_shows_its_reason() {
    let Some(ctx) = common::setup(45) else { return };
    let (mut lab, d) = lab_with_director(&ctx);
    let (pid, log) = start_trace(&mut lab, &[]);
    for rs in [addr::RS1, addr::RS2] {
        let r = format!("{rs}:80");
        let v = format!("{}:80", addr::VIP);
        d.uvsadm(&["-e", "-t", &v, "-r", &r, "-g", "-w", "0"])
            .checked();
    }
    let url = format!("http://{}/", addr::VIP);
    assert!(lab.curl("client", &url, &["--max-time", "1"]).is_err());
    let lines = trace_lines(&log);
    lab.kill(pid);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("[S]") && l.contains("DROP no_real_server: no usable real server")),
        "no drop line:\n{}",
        lines.join("\n")
    );
}

#[test]
fn trace_under_load_loses_no_packets() {
    let Some(ctx) = common::setup(46) else { return };
    let (mut lab, _d) = lab_with_director(&ctx);
    // A low rate limit, so the worker-side limiter is exercised under load.
    let (pid, log) = start_trace(&mut lab, &["--rate", "20"]);
    let url = format!("http://{}/", addr::VIP);
    let script = format!(
        "seq 400 | xargs -P 8 -I{{}} curl -s -o /dev/null -w '%{{http_code}}\\n' --max-time 5 {url} | sort | uniq -c"
    );
    let out = lab.exec_ok("client", &["bash", "-c", &script]).unwrap();
    let lines = trace_lines(&log);
    lab.kill(pid);
    assert_eq!(
        out.trim(),
        "400 200",
        "every request must succeed with a trace attached"
    );
    let traced = lines.iter().filter(|l| l.contains(" w")).count();
    assert!(traced >= 20, "only {traced} trace lines");
    assert!(
        lines.iter().any(|l| l.contains("rate limit")),
        "the rate limit should have dropped trace records (not packets):\n{}",
        lines
            .iter()
            .rev()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn capture_holds_the_received_and_the_rewritten_frame() {
    let Some(ctx) = common::setup(47) else { return };
    let (mut lab, _d) = lab_with_director(&ctx);
    let pcap = lab.dir().join("dir.pcapng");
    let log = lab.dir().join("capture.log");
    let exe = common::uvs_exe();
    let pid = lab
        .spawn(
            "dir",
            &[
                path_str(&exe),
                "capture",
                "-w",
                path_str(&pcap),
                "--filter",
                "service 10.0.0.100:80",
            ],
            &log,
        )
        .unwrap();
    common::poll(Duration::from_secs(5), || {
        std::fs::metadata(&pcap).ok().filter(|m| m.len() > 0)
    })
    .expect("capture did not start");
    let answers = common::curl_vip(&lab, 2);
    std::thread::sleep(Duration::from_millis(500));
    lab.kill(pid);
    let pkts = common::read_pcap(&lab, &pcap);
    assert!(pkts.len() >= 10, "too few frames: {pkts:?}");
    assert_eq!(pkts.len() % 2, 0);
    let router = common::mac_str(addr::HOST_ROUTER, 1);
    let dir = common::mac_str(addr::HOST_DIR, 0);
    let rs = [
        common::mac_str(addr::HOST_RS1, 0),
        common::mac_str(addr::HOST_RS2, 0),
    ];
    let mut reached = Vec::new();
    for pair in pkts.chunks(2) {
        let (rx, tx) = (&pair[0], &pair[1]);
        assert_eq!(
            (rx.src_mac.as_str(), rx.dst_mac.as_str()),
            (router.as_str(), dir.as_str()),
            "{}",
            rx.line
        );
        assert_eq!(tx.src_mac, dir, "{}", tx.line);
        assert!(rs.contains(&tx.dst_mac), "{}", tx.line);
        assert_eq!(rx.dst_ip.as_deref(), Some("10.0.0.100"));
        assert_eq!(tx.dst_ip, rx.dst_ip, "IP never rewritten");
        if rx.line.contains("Flags [S]") {
            reached.push(if tx.dst_mac == rs[0] { "rs1" } else { "rs2" });
        }
    }
    assert_eq!(reached, answers, "SYNs went where the answers came from");
}

//! A busy client whose source ports wrap keeps every new connection when a real server goes
//! away: its SYNs meet old flows (closing ones, and ones bound to the removed real) and must
//! start new connections instead of being dropped. Under keepalived.conf's and ldirectord.cf's
//! health checks, as an operator runs them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use uvs::lab::{Lab, addr};

use crate::common::{self, Director, path_str};

const KEEPALIVED: &str = r#"
virtual_server 10.0.0.100 80 {
    delay_loop 1
    lb_algo rr
    lb_kind DR
    protocol TCP
    real_server 10.0.0.11 80 {
        weight 1
        TCP_CHECK {
            connect_timeout 1
        }
    }
    real_server 10.0.0.12 80 {
        weight 1
        TCP_CHECK {
            connect_timeout 1
        }
    }
}
"#;

const LDIRECTORD: &str = "\
checktimeout=1
checkinterval=1
quiescent=no
virtual=10.0.0.100:80
    real=10.0.0.11:80 gate
    real=10.0.0.12:80 gate
    scheduler=rr
    protocol=tcp
    checktype=connect
";

/// A client sending one request after another (fresh connection each, 1 s timeout) from a
/// 100-port range, logging `<ns since epoch> ok|fail` lines.
fn start_busy_client(lab: &mut Lab, tag: &str) -> (u32, PathBuf) {
    let out = lab.dir().join(format!("busy-{tag}.txt"));
    let script = format!(
        "while :; do t=$(date +%s%N); if curl -s --noproxy '*' --max-time 1 -o /dev/null http://{}/; \
         then echo \"$t ok\"; else echo \"$t fail\"; fi; done >> {}",
        addr::VIP,
        path_str(&out)
    );
    let log = lab.dir().join(format!("busy-{tag}.log"));
    let pid = lab.spawn("client", &["bash", "-c", &script], &log).unwrap();
    (pid, out)
}

fn results(file: &Path) -> Vec<(u128, bool)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (t, r) = l.split_once(' ')?;
            Some((t.parse().ok()?, r == "ok"))
        })
        .collect()
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn wrapped_client_ports_lose_no_connection_when_a_real_is_removed() {
    let Some(ctx) = common::setup(137) else {
        return;
    };
    for (flag, name, text) in [
        ("--keepalived", "keepalived.conf", KEEPALIVED),
        ("--ldirectord", "ldirectord.cf", LDIRECTORD),
    ] {
        let mut lab = ctx.dr_lab();
        let exe = common::uvs_exe();
        lab.start_http("rs1", "rs1", true, &exe).unwrap();
        let rs2 = lab.start_http("rs2", "rs2", true, &exe).unwrap();
        // 100 source ports and no TIME_WAIT of the client's own: its ports wrap every few
        // seconds, as a load generator's do, while uvs still holds the closing flows.
        lab.set_sysctls(
            "client",
            &[
                ("net.ipv4.ip_local_port_range", "40000 40099"),
                ("net.ipv4.tcp_max_tw_buckets", "0"),
            ],
        )
        .unwrap();
        let d = Director::launch()
            .file(flag, name, text)
            .interface("eth0")
            .start(&mut lab);
        let (client, log) = start_busy_client(&mut lab, name);
        // Long enough for the ports to wrap at least once.
        let wrapped = common::poll(Duration::from_secs(20), || {
            (results(&log).len() > 150).then_some(())
        });
        assert!(wrapped.is_some(), "{name}: the client did not get going");
        lab.kill(rs2);
        let removed = common::poll(Duration::from_secs(10), || {
            (!d.uvsadm(&["-Ln"]).checked().contains("10.0.0.12:80")).then(now_ns)
        })
        .unwrap_or_else(|| panic!("{name}: rs2 never removed\n{}", d.tail()));
        std::thread::sleep(Duration::from_secs(4));
        lab.kill(client);
        let r = results(&log);
        let after: Vec<bool> = r
            .iter()
            .filter(|(t, _)| *t > removed + 200_000_000)
            .map(|(_, ok)| *ok)
            .collect();
        let failed = after.iter().filter(|ok| !**ok).count();
        let reused = d.metric("uvs_flow_reuse_total", &[]);
        eprintln!(
            "{name}: {} requests, {} after the removal, {failed} failed after it; flows reused {reused}",
            r.len(),
            after.len()
        );
        assert!(
            after.len() > 50,
            "{name}: too few requests after the removal"
        );
        assert_eq!(failed, 0, "{name}: new connections lost\n{}", d.tail());
        assert!(
            reused > 100.0,
            "{name}: ports never met old flows ({reused})"
        );
    }
}

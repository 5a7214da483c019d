//! Writes the seed corpora: `cargo run --example seeds` (from fuzz/), or `scripts/fuzz.sh`.

use std::fs;
use std::path::Path;

fn write(dir: &str, name: &str, bytes: &[u8]) {
    let d = Path::new("seeds").join(dir);
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join(name), bytes).unwrap();
}

fn record(status: u8, step: u8, bytes: &[u8]) -> Vec<u8> {
    let mut r = vec![status, step];
    r.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    r.extend_from_slice(bytes);
    r
}

fn main() {
    let frames = uvs_fuzz::seed_frames();
    let vnet = [0u8; 10];
    // frame: one frame each, then whole conversations.
    for (name, f) in &frames {
        let mut b = vnet.to_vec();
        b.extend_from_slice(f);
        let mut input = vec![0u8];
        input.extend(record(0, 1, &b));
        write("frame", name, &input);
    }
    let mut convo = vec![0u8];
    for (_, f) in frames.iter().take(4) {
        let mut b = vnet.to_vec();
        b.extend_from_slice(f);
        convo.extend(record(0, 3, &b));
    }
    write("frame", "conversation", &convo);
    // arp: the ARP frames.
    for (name, f) in frames.iter().filter(|(n, _)| n.starts_with("arp")) {
        let mut input = vec![0u8, 1, f.len() as u8, 0];
        input.extend_from_slice(f);
        write("arp", name, &input);
    }
    // tunnel_endpoint: IPIP, GRE and GUE frames around a client's SYN, as a real receives them.
    let mut syn = Vec::new();
    etherparse::PacketBuilder::ipv4([198, 51, 100, 10], [203, 0, 113, 2], 62)
        .tcp(40000, 80, 1, 65535)
        .syn()
        .write(&mut syn, &[])
        .unwrap();
    let mut gre = vec![0, 0, 8, 0];
    gre.extend_from_slice(&syn);
    let mut gue = vec![0, 4, 0, 0];
    gue.extend_from_slice(&syn);
    for (name, proto, payload) in [("ipip", 4u8, syn.clone()), ("gre", 47, gre)] {
        let mut b = vnet.to_vec();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 1, 2], [2, 0, 0, 0, 0x11, 0])
            .ipv4([203, 0, 113, 10], [10, 0, 0, 2], 61)
            .write(&mut b, etherparse::IpNumber(proto), &payload)
            .unwrap();
        write("tunnel_endpoint", name, &b);
    }
    let mut b = vnet.to_vec();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 1, 2], [2, 0, 0, 0, 0x11, 0])
        .ipv4([203, 0, 113, 10], [10, 0, 0, 2], 61)
        .udp(40001, 6080)
        .write(&mut b, &gue)
        .unwrap();
    write("tunnel_endpoint", "gue", &b);
    // Configs and rules from the repository.
    for entry in fs::read_dir("../configs").into_iter().flatten().flatten() {
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "toml") {
            write(
                "toml_config",
                &p.file_name().unwrap().to_string_lossy(),
                &fs::read(&p).unwrap(),
            );
        }
    }
    for (dir, target, ext) in [
        ("../configs/keepalived", "keepalived_conf", "conf"),
        ("../configs/ha", "keepalived_conf", "conf"),
        ("../configs/ldirectord", "ldirectord_conf", "cf"),
    ] {
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.extension().is_some_and(|e| e == ext) {
                write(
                    target,
                    &p.file_name().unwrap().to_string_lossy(),
                    &fs::read(&p).unwrap(),
                );
            }
        }
    }
    write(
        "rules",
        "basic",
        b"-A -t 10.0.0.100:80 -s rr\n-a -t 10.0.0.100:80 -r 10.0.0.11:80 -g -w 1\n\
          -a -t 10.0.0.100:80 -r 10.0.0.12:80 -g -w 1\n",
    );
    write(
        "rules",
        "persist",
        b"-A -u 10.0.0.100:53 -s sh -b sh-port -p 60 -M 255.255.255.0\n\
          -a -u 10.0.0.100:53 -r 10.0.0.11 -g -w 3 -x 100 -y 10\n-E -u 10.0.0.100:53 -s mh\n\
          -e -u 10.0.0.100:53 -r 10.0.0.11 -g -w 0\n-d -u 10.0.0.100:53 -r 10.0.0.11\n-D -u 10.0.0.100:53\n-C\n",
    );
    // admin_request: JSON bodies as uvsadm sends them (without the length prefix).
    for (name, json) in [
        ("status", r#"{"version":1,"body":"Status"}"#),
        ("connections", r#"{"version":1,"body":"Connections"}"#),
        ("zero", r#"{"version":1,"body":{"Zero":null}}"#),
        (
            "apply",
            r#"{"version":1,"body":{"Apply":[{"SetTimeouts":{"tcp":1,"tcpfin":2,"udp":3}},"Clear"]}}"#,
        ),
    ] {
        write("admin_request", name, json.as_bytes());
    }
    // A full Apply, serialised by the daemon's own types.
    {
        use std::net::Ipv4Addr;
        use uvs::ctl::proto::{Change, Envelope, Request};
        use uvs::model::{Protocol, RealSpec, SchedulerKind, ServiceKey, ServiceSpec};
        let key = ServiceKey::addr(Protocol::Tcp, Ipv4Addr::new(10, 0, 0, 100), 80);
        let mut spec = ServiceSpec::new(key, SchedulerKind::Wrr);
        spec.persistence_timeout = Some(300);
        let req = Request::Apply(vec![
            Change::AddService(spec),
            Change::AddReal(key, RealSpec::route(Ipv4Addr::new(10, 0, 0, 11), 80)),
            Change::EditService(spec),
            Change::DeleteReal(key, Ipv4Addr::new(10, 0, 0, 11), 0),
            Change::DeleteService(key),
        ]);
        let env = Envelope {
            version: 1,
            body: req,
        };
        write("admin_request", "apply-full", &serde_json_bytes(&env));
    }
}

fn serde_json_bytes<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

//! The HA part of the TOML configuration: `[[vrrp]]` instances and `[sync]` (parsed here and
//! hooked into `config::toml_file`, which owns the rest of the file).
//!
//! ```toml
//! [[vrrp]]
//! name = "VI_1"                   # default "VI_<vrid>"
//! interface = "eth0"
//! virtual_router_id = 51
//! priority = 150                  # 1..=255, default 100
//! advert_int = 1                  # seconds; v3 allows 0.01 steps (e.g. 0.1)
//! version = 2                     # 2 (default, as keepalived) or 3
//! state = "BACKUP"                # or "MASTER"
//! nopreempt = false
//! preempt_delay = 0
//! auth_pass = "1111"              # v2 auth_type PASS
//! virtual_ipaddress = ["10.0.0.100"]
//! unicast_peer = []               # empty = multicast 224.0.0.18
//! unicast_src_ip = "10.0.0.2"
//! notify_master = "/path/script"  # also notify_backup, notify_fault
//! track_interface = ["eth1"]
//!
//! [sync]                          # IPVS connection sync (keepalived lvs_sync_daemon)
//! interface = "eth0"
//! syncid = 0
//! vrrp_instance = "VI_1"          # role follows this instance; or role = "master" | "backup"
//! ```
//! `uvs run --keepalived FILE` reads `vrrp_instance` blocks and `global_defs { lvs_sync_daemon
//! … }` from a keepalived.conf instead (`config::keepalived`), into the same structures.

use std::net::Ipv4Addr;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::{InstanceConfig, Version};
use crate::sync::{SyncConfig, SyncRole};

type Located = (Range<usize>, String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVrrp {
    name: Option<String>,
    interface: Spanned<String>,
    virtual_router_id: Spanned<i64>,
    priority: Option<Spanned<i64>>,
    advert_int: Option<Spanned<f64>>,
    version: Option<Spanned<i64>>,
    state: Option<Spanned<String>>,
    nopreempt: Option<bool>,
    preempt_delay: Option<Spanned<i64>>,
    auth_pass: Option<String>,
    virtual_ipaddress: Vec<Spanned<String>>,
    #[serde(default)]
    unicast_peer: Vec<Spanned<String>>,
    unicast_src_ip: Option<Spanned<String>>,
    notify_master: Option<String>,
    notify_backup: Option<String>,
    notify_fault: Option<String>,
    #[serde(default)]
    track_interface: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSync {
    interface: Spanned<String>,
    syncid: Option<Spanned<i64>>,
    vrrp_instance: Option<String>,
    role: Option<Spanned<String>>,
}

fn int(v: &Spanned<i64>, lo: i64, hi: i64, what: &str) -> Result<i64, Located> {
    let n = *v.get_ref();
    if (lo..=hi).contains(&n) {
        Ok(n)
    } else {
        Err((
            v.span(),
            format!("{what} = {n} is out of range {lo}..={hi}"),
        ))
    }
}

fn ip(v: &Spanned<String>, what: &str) -> Result<Ipv4Addr, Located> {
    // keepalived writes VIPs as "10.0.0.100/24" or with "dev"/"label" words: take the address.
    let s = v.get_ref().split_whitespace().next().unwrap_or("");
    let s = s.split('/').next().unwrap_or("");
    s.parse().map_err(|_| {
        (
            v.span(),
            format!("{what}: \"{}\" is not an IPv4 address", v.get_ref()),
        )
    })
}

/// Builds and validates the `[[vrrp]]` instances; `span` of the array entry locates errors.
pub fn build_vrrp(raw: &[Spanned<RawVrrp>]) -> Result<Vec<InstanceConfig>, Located> {
    let mut out: Vec<InstanceConfig> = Vec::new();
    for s in raw {
        let r = s.get_ref();
        let vrid = int(&r.virtual_router_id, 1, 255, "virtual_router_id")? as u8;
        let name = r.name.clone().unwrap_or_else(|| format!("VI_{vrid}"));
        let mut c = InstanceConfig::new(&name, r.interface.get_ref(), vrid);
        if let Some(p) = &r.priority {
            c.priority = int(p, 1, 255, "priority")? as u8;
        }
        if let Some(v) = &r.version {
            c.version = match int(v, 2, 3, "version")? {
                2 => Version::V2,
                _ => Version::V3,
            };
        }
        if let Some(a) = &r.advert_int {
            let cs = (a.get_ref() * 100.0).round();
            if !(1.0..=4095.0).contains(&cs) {
                return Err((
                    a.span(),
                    format!("advert_int = {} is out of range 0.01..=40.95", a.get_ref()),
                ));
            }
            c.advert_int_cs = cs as u16;
        }
        if let Some(st) = &r.state {
            c.start_master = match st.get_ref().to_ascii_uppercase().as_str() {
                "MASTER" => true,
                "BACKUP" => false,
                other => return Err((st.span(), format!("state = \"{other}\": MASTER or BACKUP"))),
            };
        }
        c.preempt = !r.nopreempt.unwrap_or(false);
        if let Some(d) = &r.preempt_delay {
            c.preempt_delay_secs = int(d, 0, 1000, "preempt_delay")? as u32;
        }
        c.auth_pass = r.auth_pass.clone();
        for v in &r.virtual_ipaddress {
            c.vips.push(ip(v, "virtual_ipaddress")?);
        }
        for v in &r.unicast_peer {
            c.unicast_peers.push(ip(v, "unicast_peer")?);
        }
        if let Some(v) = &r.unicast_src_ip {
            c.source = Some(ip(v, "unicast_src_ip")?);
        }
        c.notify_master = r.notify_master.clone();
        c.notify_backup = r.notify_backup.clone();
        c.notify_fault = r.notify_fault.clone();
        c.track_interfaces = r.track_interface.clone();
        c.validate()
            .map_err(|m| (s.span(), format!("vrrp instance {name}: {m}")))?;
        if out
            .iter()
            .any(|o| o.name == c.name || (o.vrid == c.vrid && o.interface == c.interface))
        {
            return Err((
                s.span(),
                format!("vrrp instance {name}: name or (interface, virtual_router_id) used twice"),
            ));
        }
        out.push(c);
    }
    Ok(out)
}

pub fn build_sync(raw: &RawSync, instances: &[InstanceConfig]) -> Result<SyncConfig, Located> {
    let mut c = SyncConfig::new(raw.interface.get_ref());
    if let Some(id) = &raw.syncid {
        c.syncid = int(id, 0, 255, "sync.syncid")? as u8;
    }
    c.role = match (&raw.vrrp_instance, &raw.role) {
        (Some(_), Some(r)) => {
            return Err((
                r.span(),
                "sync: give either vrrp_instance or role, not both".into(),
            ));
        }
        (Some(i), None) => {
            if !instances.iter().any(|x| &x.name == i) {
                return Err((
                    raw.interface.span(),
                    format!("sync.vrrp_instance = \"{i}\": no such [[vrrp]] instance"),
                ));
            }
            SyncRole::FollowVrrp(i.clone())
        }
        (None, Some(r)) => match r.get_ref().as_str() {
            "master" => SyncRole::Master,
            "backup" => SyncRole::Backup,
            "both" => SyncRole::Both,
            other => {
                return Err((
                    r.span(),
                    format!("sync.role = \"{other}\": master, backup or both"),
                ));
            }
        },
        (None, None) => {
            return Err((
                raw.interface.span(),
                "sync: give vrrp_instance (role follows it) or role".into(),
            ));
        }
    };
    Ok(c)
}

#[cfg(test)]
mod tests {
    use crate::config::toml_file::parse;
    use std::path::Path;

    #[test]
    fn vrrp_and_sync_tables_parse_and_validate() {
        let cfg = parse(
            r#"
[[vrrp]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
priority = 150
advert_int = 0.1
version = 3
virtual_ipaddress = ["10.0.0.100/24"]
[sync]
interface = "eth0"
syncid = 7
vrrp_instance = "VI_1"
"#,
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(cfg.vrrp[0].advert_int_cs, 10);
        assert_eq!(
            cfg.vrrp[0].vips,
            vec!["10.0.0.100".parse::<std::net::Ipv4Addr>().unwrap()]
        );
        assert_eq!(cfg.sync.as_ref().unwrap().syncid, 7);
        // Both roles at once: the directors of an ECMP group each send and receive.
        let both = parse(
            "[sync]\ninterface = \"eth0\"\nrole = \"both\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(both.sync.unwrap().role, crate::sync::SyncRole::Both);
        let e = parse(
            "[sync]\ninterface = \"eth0\"\nrole = \"all\"\n",
            Path::new("t.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("master, backup or both"), "{e}");
        for (bad, needle) in [
            ("advert_int = 0.5\nversion = 2", "whole seconds"),
            (
                "nopreempt = true\nstate = \"MASTER\"",
                "nopreempt requires state BACKUP",
            ),
            ("auth_pass = \"x\"\nversion = 3", "only in VRRPv2"),
            ("priority = 0", "out of range"),
        ] {
            let text = format!(
                "[[vrrp]]\ninterface = \"eth0\"\nvirtual_router_id = 1\nvirtual_ipaddress = [\"10.0.0.1\"]\n{bad}\n"
            );
            let e = parse(&text, Path::new("t.toml")).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    /// configs/full.toml documents every `[[vrrp]]`/`[sync]` key, commented out: uncommented,
    /// the block parses, and the values written as defaults are the defaults.
    #[test]
    fn full_toml_documents_the_ha_keys_with_their_defaults() {
        let full = include_str!("../../configs/full.toml");
        let block = &full[full.find("# ---- High availability").unwrap()..];
        let toml: String = block
            .lines()
            .filter(|l| l.starts_with("# ") && !l.starts_with("# ----"))
            .map(|l| format!("{}\n", &l[2..]))
            .collect();
        // `role` is the alternative to `vrrp_instance`: one of the two.
        let toml = toml.replace("role = \"master\"\n", "");
        let cfg = parse(&toml, Path::new("full.toml")).unwrap();
        let v = &cfg.vrrp[0];
        let mut want = super::InstanceConfig::new("VI_1", "eth0", 51);
        want.auth_pass = Some("1111".into());
        want.vips = vec!["10.0.0.100".parse().unwrap()];
        want.source = Some("10.0.0.2".parse().unwrap());
        want.notify_master = Some("logger vrrp master".into());
        want.notify_backup = Some("logger vrrp backup".into());
        want.notify_fault = Some("logger vrrp fault".into());
        assert_eq!(v, &want);
        let mut s = crate::sync::SyncConfig::new("eth0");
        s.role = crate::sync::SyncRole::FollowVrrp("VI_1".into());
        assert_eq!(cfg.sync, Some(s));
        for key in [
            "name",
            "interface",
            "virtual_router_id",
            "priority",
            "advert_int",
            "version",
            "state",
            "nopreempt",
            "preempt_delay",
            "auth_pass",
            "virtual_ipaddress",
            "unicast_peer",
            "unicast_src_ip",
            "notify_master",
            "notify_backup",
            "notify_fault",
            "track_interface",
            "syncid",
            "vrrp_instance",
            "role",
        ] {
            assert!(block.contains(&format!("# {key} = ")), "{key} undocumented");
        }
    }
}

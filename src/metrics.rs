//! Prometheus exposition on the control thread.
//!
//! IPVS figures use node_exporter's ipvs collector names and labels, so existing IPVS
//! dashboards and alerts work unchanged. uvs's own figures live under `uvs_` with bounded
//! label sets (drop reasons, worker numbers, interface names).
//!
//! A fresh recorder is filled from the summed counters on every scrape, so a deleted real
//! server's series disappears with it; values are set with `absolute`/`set`, never counted
//! here.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use metrics::{counter, gauge, with_local_recorder};
use metrics_exporter_prometheus::PrometheusBuilder;

/// One scrape's worth of figures, gathered by the control thread.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub ipvs: IpvsTotals,
    pub backends: Vec<Backend>,
    pub drops: Vec<(&'static str, u64)>,
    pub arp_ignored: Vec<(&'static str, u64)>,
    pub arp_answered: u64,
    /// Fragmentation-needed from routers on a tunnel's path, translated to the client, and
    /// those the rate limit held back.
    pub tunnel_path_translated: u64,
    pub tunnel_path_rate_limited: u64,
    pub arp_requests_sent: u64,
    pub arp_gratuitous_sent: u64,
    pub arp_replies_learned: u64,
    pub neighbors_resolved: u64,
    pub neighbors_unresolved: u64,
    pub workers: Vec<WorkerFigures>,
    pub rings: Vec<RingFigures>,
    /// Health checks.
    pub health: crate::health::book::HealthListing,
    /// `uvs trace` / `uvs capture` records lost, by reason (never packets).
    pub trace_dropped: Vec<(&'static str, u64)>,
    /// FullNAT local addresses: (address, ports in use, connections refused for want of one).
    pub fullnat_laddrs: Vec<(String, u64, u64)>,
}

#[derive(Clone, Debug, Default)]
pub struct IpvsTotals {
    pub connections: u64,
    pub in_packets: u64,
    pub in_bytes: u64,
    /// Replies the director rewrote (NAT); zero with direct routing only.
    pub out_packets: u64,
    pub out_bytes: u64,
}

#[derive(Clone, Debug)]
pub struct Backend {
    pub local_address: String,
    pub local_port: u16,
    pub remote_address: String,
    pub remote_port: u16,
    pub proto: &'static str,
    /// A fwmark service's mark (node_exporter's `local_mark`; its address is then empty).
    pub local_mark: Option<u32>,
    pub active: u64,
    pub inactive: u64,
    pub weight: u32,
}

#[derive(Clone, Debug, Default)]
pub struct WorkerFigures {
    pub rx_frames: u64,
    pub forwarded: u64,
    pub batches: u64,
    pub busy_seconds: f64,
    pub flows: u64,
    pub evictions: u64,
    /// New connections on an old flow's five-tuple, by reason.
    pub flow_reuse: Vec<(&'static str, u64)>,
    pub tx_syscalls: u64,
    pub coalesce_waits: u64,
    /// Tunnels: ICMP fragmentation-needed sent, held back by the rate limit, and GSO
    /// super-frames cut into segments.
    pub tunnel_frag_needed: u64,
    pub tunnel_icmp_rate_limited: u64,
    pub tunnel_segmented: u64,
}

#[derive(Clone, Debug, Default)]
pub struct RingFigures {
    pub interface: String,
    pub packets: u64,
    pub drops: u64,
    pub freezes: u64,
}

/// Renders figures as Prometheus text.
pub fn render(f: &Figures) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    with_local_recorder(&recorder, || {
        counter!("node_ipvs_connections_total").absolute(f.ipvs.connections);
        counter!("node_ipvs_incoming_packets_total").absolute(f.ipvs.in_packets);
        counter!("node_ipvs_incoming_bytes_total").absolute(f.ipvs.in_bytes);
        counter!("node_ipvs_outgoing_packets_total").absolute(f.ipvs.out_packets);
        counter!("node_ipvs_outgoing_bytes_total").absolute(f.ipvs.out_bytes);
        for b in &f.backends {
            let labels = [
                ("local_address", b.local_address.clone()),
                ("local_port", b.local_port.to_string()),
                ("remote_address", b.remote_address.clone()),
                ("remote_port", b.remote_port.to_string()),
                ("proto", b.proto.to_string()),
                (
                    "local_mark",
                    b.local_mark.map_or_else(String::new, |m| m.to_string()),
                ),
            ];
            gauge!("node_ipvs_backend_connections_active", &labels).set(b.active as f64);
            gauge!("node_ipvs_backend_connections_inactive", &labels).set(b.inactive as f64);
            gauge!("node_ipvs_backend_weight", &labels).set(f64::from(b.weight));
        }
        for (reason, v) in &f.drops {
            counter!("uvs_drops_total", "reason" => *reason).absolute(*v);
        }
        for (reason, v) in &f.arp_ignored {
            counter!("uvs_arp_ignored_total", "reason" => *reason).absolute(*v);
        }
        counter!("uvs_arp_requests_answered_total").absolute(f.arp_answered);
        counter!("uvs_tunnel_path_icmp_translated_total").absolute(f.tunnel_path_translated);
        counter!("uvs_tunnel_path_icmp_rate_limited_total").absolute(f.tunnel_path_rate_limited);
        counter!("uvs_arp_requests_sent_total").absolute(f.arp_requests_sent);
        counter!("uvs_arp_gratuitous_sent_total").absolute(f.arp_gratuitous_sent);
        counter!("uvs_arp_replies_learned_total").absolute(f.arp_replies_learned);
        gauge!("uvs_neighbors", "state" => "resolved").set(f.neighbors_resolved as f64);
        gauge!("uvs_neighbors", "state" => "unresolved").set(f.neighbors_unresolved as f64);
        for (i, w) in f.workers.iter().enumerate() {
            let worker = i.to_string();
            counter!("uvs_worker_rx_frames_total", "worker" => worker.clone())
                .absolute(w.rx_frames);
            counter!("uvs_worker_forwarded_total", "worker" => worker.clone())
                .absolute(w.forwarded);
            counter!("uvs_worker_batches_total", "worker" => worker.clone()).absolute(w.batches);
            counter!("uvs_worker_tx_syscalls_total", "worker" => worker.clone())
                .absolute(w.tx_syscalls);
            counter!("uvs_worker_coalesce_waits_total", "worker" => worker.clone())
                .absolute(w.coalesce_waits);
            counter!("uvs_tunnel_frag_needed_total", "worker" => worker.clone())
                .absolute(w.tunnel_frag_needed);
            counter!("uvs_tunnel_icmp_rate_limited_total", "worker" => worker.clone())
                .absolute(w.tunnel_icmp_rate_limited);
            counter!("uvs_tunnel_segmented_total", "worker" => worker.clone())
                .absolute(w.tunnel_segmented);
            gauge!("uvs_worker_busy_seconds_total", "worker" => worker.clone()).set(w.busy_seconds);
            gauge!("uvs_worker_flows", "worker" => worker.clone()).set(w.flows as f64);
            counter!("uvs_flow_evictions_total", "worker" => worker.clone()).absolute(w.evictions);
            for (reason, v) in &w.flow_reuse {
                counter!("uvs_flow_reuse_total", "worker" => worker.clone(), "reason" => *reason)
                    .absolute(*v);
            }
        }
        for r in &f.rings {
            let i = r.interface.clone();
            counter!("uvs_ring_packets_total", "interface" => i.clone()).absolute(r.packets);
            counter!("uvs_ring_drops_total", "interface" => i.clone()).absolute(r.drops);
            counter!("uvs_ring_freezes_total", "interface" => i).absolute(r.freezes);
        }
        for (reason, v) in &f.trace_dropped {
            counter!("uvs_trace_records_dropped_total", "reason" => *reason).absolute(*v);
        }
        for (laddr, in_use, exhausted) in &f.fullnat_laddrs {
            gauge!("uvs_fullnat_local_ports_in_use", "laddr" => laddr.clone()).set(*in_use as f64);
            counter!("uvs_fullnat_port_exhausted_total", "laddr" => laddr.clone())
                .absolute(*exhausted);
        }
        render_health(&f.health);
    });
    handle.render()
}

/// Health series. Labels: the service (`local_address`, `local_port`, `proto`, as
/// node_exporter's ipvs series) and the real (`remote_address`); bounded by the configuration.
fn render_health(h: &crate::health::book::HealthListing) {
    for s in &h.services {
        let svc = [
            ("local_address", s.key.vip.to_string()),
            ("local_port", s.key.port.to_string()),
            ("proto", s.key.proto.ipvsadm_name().to_string()),
        ];
        gauge!("uvs_health_quorum_up", &svc).set(if s.quorum_up { 1.0 } else { 0.0 });
        gauge!("uvs_health_sorry_active", &svc).set(if s.sorry_active { 1.0 } else { 0.0 });
        for r in &s.reals {
            let mut l = svc.to_vec();
            l.push(("remote_address", r.addr.to_string()));
            gauge!("uvs_health_real_up", &l).set(if r.up { 1.0 } else { 0.0 });
            counter!("uvs_health_transitions_total", &l).absolute(r.transitions);
            gauge!("uvs_health_check_latency_seconds", &l).set(r.last_latency_us as f64 / 1e6);
            let mut pass = l.clone();
            pass.push(("result", "pass".to_string()));
            counter!("uvs_health_checks_total", &pass).absolute(r.checks - r.failures);
            l.push(("result", "fail".to_string()));
            counter!("uvs_health_checks_total", &l).absolute(r.failures);
        }
    }
}

/// A minimal HTTP endpoint served from the control loop (no extra thread, no async runtime).
pub struct Endpoint {
    listener: TcpListener,
}

impl Endpoint {
    pub fn bind(addr: SocketAddr) -> std::io::Result<Endpoint> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(Endpoint { listener })
    }

    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.listener)
    }

    /// Answers every pending connection with the text `figures` renders.
    pub fn serve_pending(&self, figures: &mut dyn FnMut() -> String) {
        while let Ok((mut stream, _)) = self.listener.accept() {
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
            let _ = stream.set_write_timeout(Some(Duration::from_millis(500)));
            let mut req = [0u8; 1024];
            let n = stream.read(&mut req).unwrap_or(0);
            let head = String::from_utf8_lossy(&req[..n]);
            let response = if head.starts_with("GET /metrics") || head.starts_with("GET / ") {
                let body = figures();
                format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                    body.len(),
                    body
                )
            } else {
                "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_string()
            };
            let _ = stream.write_all(response.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_exporter_names_and_labels() {
        let f = Figures {
            ipvs: IpvsTotals {
                connections: 7,
                in_packets: 70,
                in_bytes: 7000,
                out_packets: 60,
                out_bytes: 6000,
            },
            backends: vec![Backend {
                local_address: "10.0.0.100".into(),
                local_port: 80,
                remote_address: "10.0.0.11".into(),
                remote_port: 80,
                proto: "TCP",
                local_mark: None,
                active: 2,
                inactive: 3,
                weight: 1,
            }],
            drops: vec![("fragment", 4)],
            trace_dropped: vec![("ring_full", 5), ("rate_limit", 0)],
            ..Figures::default()
        };
        let text = render(&f);
        assert!(text.contains("uvs_trace_records_dropped_total{reason=\"ring_full\"} 5"));
        assert!(text.contains("uvs_trace_records_dropped_total{reason=\"rate_limit\"} 0"));
        assert!(text.contains("node_ipvs_connections_total 7"), "{text}");
        assert!(text.contains("node_ipvs_outgoing_packets_total 60"));
        assert!(text.contains("node_ipvs_outgoing_bytes_total 6000"));
        assert!(text.contains("uvs_drops_total{reason=\"fragment\"} 4"));
        let line = text
            .lines()
            .find(|l| l.starts_with("node_ipvs_backend_connections_active{"))
            .expect("backend series");
        for l in [
            "local_address=\"10.0.0.100\"",
            "local_port=\"80\"",
            "remote_address=\"10.0.0.11\"",
            "remote_port=\"80\"",
            "proto=\"TCP\"",
            "local_mark=\"\"",
        ] {
            assert!(line.contains(l), "{line}");
        }
        assert!(line.ends_with(" 2"));
    }

    /// A scrape with every series uvs's own endpoint renders.
    fn every_series() -> String {
        use crate::health::book::{HealthListing, RealHealthRow, ServiceHealthRow};
        use crate::model::{Protocol, ServiceKey};
        let f = Figures {
            backends: vec![Backend {
                local_address: "10.0.0.100".into(),
                local_port: 80,
                remote_address: "10.0.0.11".into(),
                remote_port: 80,
                proto: "TCP",
                local_mark: None,
                active: 1,
                inactive: 1,
                weight: 1,
            }],
            drops: crate::datapath::counters::DropReason::ALL
                .iter()
                .map(|d| (d.name(), 1))
                .collect(),
            arp_ignored: crate::neigh::arp::ArpIgnore::ALL
                .iter()
                .map(|r| (r.name(), 1))
                .collect(),
            workers: vec![WorkerFigures {
                flow_reuse: crate::datapath::counters::ReuseReason::ALL
                    .iter()
                    .map(|r| (r.name(), 1))
                    .collect(),
                ..WorkerFigures::default()
            }],
            rings: vec![RingFigures {
                interface: "eth0".into(),
                ..RingFigures::default()
            }],
            fullnat_laddrs: vec![("10.0.0.2".into(), 1, 1)],
            health: HealthListing {
                services: vec![ServiceHealthRow {
                    key: ServiceKey::addr(Protocol::Tcp, "10.0.0.100".parse().unwrap(), 80),
                    quorum_up: true,
                    live_weight: 1,
                    quorum: 1,
                    hysteresis: 0,
                    sorry: None,
                    sorry_active: false,
                    local: false,
                    reals: vec![RealHealthRow {
                        addr: "10.0.0.11".parse().unwrap(),
                        check: "TCP".into(),
                        up: true,
                        configured_weight: 1,
                        effective_weight: Some(1),
                        checks: 2,
                        failures: 1,
                        transitions: 1,
                        last_latency_us: 10,
                        last_message: String::new(),
                    }],
                }],
            },
            trace_dropped: vec![("ring_full", 1)],
            ..Figures::default()
        };
        render(&f)
    }

    fn expressions<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(e)) = m.get("expr") {
                    out.push(e);
                }
                m.values().for_each(|x| expressions(x, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| expressions(x, out)),
            _ => {}
        }
    }

    /// configs/grafana/uvs-dashboard.json imports (valid JSON, its data source declared as an
    /// import input, unique panel ids) and queries only series and labels uvs exports: those
    /// of this endpoint, and for `uvs_vrrp_*`/`uvs_sync_*` those the HA renderers write.
    #[test]
    fn the_grafana_dashboard_queries_exported_series() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("configs/grafana/uvs-dashboard.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(dash["__inputs"][0]["name"], "DS_PROMETHEUS");
        let panels = dash["panels"].as_array().unwrap();
        let mut ids: Vec<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), panels.len(), "panel ids are unique");
        let mut exprs = Vec::new();
        expressions(&dash, &mut exprs);
        assert!(exprs.len() >= 25, "{} queries", exprs.len());

        let scrape = every_series();
        let ha = concat!(
            include_str!("vrrp/runtime.rs"),
            include_str!("sync/daemon.rs")
        );
        let name = regex::Regex::new(r"\b(?:node_ipvs|uvs)_[a-z_]+").unwrap();
        let by = regex::Regex::new(r"by \(([a-z_, ]+)\)").unwrap();
        let mut names = std::collections::BTreeSet::new();
        for e in &exprs {
            let series: Vec<&str> = name.find_iter(e).map(|m| m.as_str()).collect();
            assert!(!series.is_empty(), "{e}");
            for s in &series {
                names.insert(*s);
                let lines: Vec<&str> = scrape
                    .lines()
                    .filter(|l| l.starts_with(&format!("{s}{{")) || l.starts_with(&format!("{s} ")))
                    .collect();
                let from_ha = s.starts_with("uvs_vrrp_") || s.starts_with("uvs_sync_");
                assert!(
                    !lines.is_empty() || (from_ha && ha.contains(s)),
                    "{s} is not exported (in {e})"
                );
                for group in by.captures_iter(e) {
                    for label in group[1].split(',').map(str::trim) {
                        let ok = if from_ha {
                            // Prometheus renames a series' own `instance` label.
                            let own = label.strip_prefix("exported_").unwrap_or(label);
                            ha.contains(&format!("{own}=\\\""))
                        } else {
                            lines.iter().any(|l| l.contains(&format!("{label}=\"")))
                        };
                        assert!(ok, "{s} has no label {label} (in {e})");
                    }
                }
            }
        }
        // Every family of this endpoint is on the dashboard.
        for l in scrape
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let family = l.split(['{', ' ']).next().unwrap_or("");
            assert!(names.contains(family), "{family} is not on the dashboard");
        }
    }
}

//! The sync daemon on the control thread: as master, batches the records the workers queue
//! into v1 messages to 224.0.0.81:8848 (TTL 1) on the sync interface; as backup, learns the
//! records it receives into the [`SyncedTable`](super::SyncedTable).

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, bail};

use super::wire::{self, MAX_PER_MESSAGE, SYNC_GROUP, SYNC_PORT};
use super::{HaHooks, SyncConfig, SyncRecord, SyncRole};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SyncCounters {
    pub messages_sent: u64,
    pub records_sent: u64,
    pub messages_received: u64,
    pub records_received: u64,
    pub messages_refused: u64,
}

pub struct SyncDaemon {
    pub cfg: SyncConfig,
    rx_sock: UdpSocket,
    tx_sock: UdpSocket,
    source: Ipv4Addr,
    hooks: Arc<HaHooks>,
    queue: crossbeam_channel::Receiver<SyncRecord>,
    pending: Vec<SyncRecord>,
    pub counters: SyncCounters,
    /// Current roles.
    pub master: bool,
    pub backup: bool,
    expire_cursor: usize,
    buf: Vec<u8>,
    /// Set by `--start-daemon`/`--stop-daemon`: the roles are ipvsadm's from then on, no
    /// longer the VRRP instance's.
    manual: bool,
}

impl SyncDaemon {
    pub fn open(
        cfg: SyncConfig,
        hooks: Arc<HaHooks>,
        queue: crossbeam_channel::Receiver<SyncRecord>,
    ) -> Result<SyncDaemon> {
        let ifc = crate::interfaces::resolve(std::slice::from_ref(&cfg.interface))
            .context("sync daemon")?
            .remove(0);
        let Some(source) = ifc.ipv4.first().map(|(a, _)| *a) else {
            bail!("sync daemon: {} has no IPv4 address", cfg.interface);
        };
        let rx_sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, SYNC_PORT))
            .with_context(|| format!("sync daemon: bind UDP port {SYNC_PORT}"))?;
        rx_sock
            .join_multicast_v4(&SYNC_GROUP, &source)
            .context("sync daemon: join 224.0.0.81")?;
        rx_sock.set_nonblocking(true)?;
        let tx_sock =
            UdpSocket::bind(SocketAddrV4::new(source, 0)).context("sync daemon: sender")?;
        tx_sock.set_multicast_ttl_v4(1)?;
        tx_sock.set_multicast_loop_v4(false)?;
        tx_sock.set_nonblocking(true)?;
        crate::io::ip_raw::set_multicast_interface(&tx_sock, ifc.index, source)
            .context("sync daemon")?;
        let mut d = SyncDaemon {
            cfg,
            rx_sock,
            tx_sock,
            source,
            hooks,
            queue,
            pending: Vec::new(),
            counters: SyncCounters::default(),
            master: false,
            backup: false,
            expire_cursor: 0,
            buf: vec![0u8; 65_536],
            manual: false,
        };
        let fixed = d.cfg.role.clone();
        match fixed {
            SyncRole::Master => d.set_roles(true, false),
            SyncRole::Backup => d.set_roles(false, true),
            SyncRole::Both => d.set_roles(true, true),
            SyncRole::FollowVrrp(_) => d.set_roles(false, true),
        }
        Ok(d)
    }

    pub fn fd(&self) -> RawFd {
        self.rx_sock.as_raw_fd()
    }

    pub fn set_roles(&mut self, master: bool, backup: bool) {
        if (master, backup) != (self.master, self.backup) {
            log::info!(
                "sync daemon on {} (syncid {}): {}",
                self.cfg.interface,
                self.cfg.syncid,
                match (master, backup) {
                    (true, true) => "master and backup",
                    (true, false) => "master",
                    (false, true) => "backup",
                    (false, false) => "stopped",
                }
            );
        }
        self.master = master;
        self.backup = backup;
        self.hooks.sending.store(master, Ordering::Relaxed);
    }

    /// Follows the VRRP role (keepalived's lvs_sync_daemon): `is_master` of the named instance.
    pub fn follow(&mut self, is_master: impl Fn(&str) -> bool) {
        if self.manual {
            return;
        }
        if let SyncRole::FollowVrrp(name) = &self.cfg.role {
            let m = is_master(name);
            self.set_roles(m, !m);
        }
    }

    /// `--start-daemon master|backup` on a running daemon (errors as ipvsadm prints them).
    pub fn start_role(&mut self, master: bool, interface: &str, syncid: u8) -> Result<(), String> {
        if (master && self.master) || (!master && self.backup) {
            return Err("Daemon has already run".into());
        }
        if interface != self.cfg.interface || syncid != self.cfg.syncid {
            return Err(format!(
                "uvs runs master and backup on one interface with one syncid: the running daemon uses mcast={}, syncid={}",
                self.cfg.interface, self.cfg.syncid
            ));
        }
        self.manual = true;
        let (m, b) = (self.master || master, self.backup || !master);
        self.set_roles(m, b);
        Ok(())
    }

    /// `--stop-daemon master|backup`.
    pub fn stop_role(&mut self, master: bool) -> Result<(), String> {
        if (master && !self.master) || (!master && !self.backup) {
            return Err("No daemon is running".into());
        }
        self.manual = true;
        let (m, b) = (self.master && !master, self.backup && master);
        self.set_roles(m, b);
        Ok(())
    }

    /// Sends what the workers queued, learns what arrived, expires a shard of synced flows.
    pub fn poll(&mut self, now: u32) {
        while let Ok(r) = self.queue.try_recv() {
            if self.master {
                self.pending.push(r);
            }
            if self.pending.len() >= MAX_PER_MESSAGE {
                self.flush();
            }
        }
        self.flush();
        for _ in 0..256 {
            match self.rx_sock.recv_from(&mut self.buf) {
                Ok((n, from)) => {
                    if from.ip() == std::net::IpAddr::V4(self.source) || !self.backup {
                        continue;
                    }
                    match wire::decode(&self.buf[..n]) {
                        Ok((id, recs)) if self.cfg.syncid == 0 || id == self.cfg.syncid => {
                            self.counters.messages_received += 1;
                            self.counters.records_received += recs.len() as u64;
                            for r in &recs {
                                self.hooks.synced.learn(r, now);
                            }
                        }
                        _ => self.counters.messages_refused += 1,
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    log::debug!("sync daemon: receive: {e}");
                    break;
                }
            }
        }
        self.hooks.synced.expire_shard(self.expire_cursor, now);
        self.expire_cursor = (self.expire_cursor + 1) % super::SyncedTable::SHARDS;
    }

    fn flush(&mut self) {
        while !self.pending.is_empty() {
            let n = self.pending.len().min(MAX_PER_MESSAGE);
            let msg = wire::encode(self.cfg.syncid, &self.pending[..n]);
            match self
                .tx_sock
                .send_to(&msg, SocketAddrV4::new(SYNC_GROUP, SYNC_PORT))
            {
                Ok(_) => {
                    self.counters.messages_sent += 1;
                    self.counters.records_sent += n as u64;
                }
                Err(e) => log::debug!("sync daemon: send: {e}"),
            }
            self.pending.drain(..n);
        }
    }

    /// ipvsadm `-L --daemon` lines.
    pub fn listing(&self) -> String {
        let mut s = String::new();
        if self.master {
            s.push_str(&format!(
                "master sync daemon (mcast={}, syncid={}, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n",
                self.cfg.interface, self.cfg.syncid
            ));
        }
        if self.backup {
            s.push_str(&format!(
                "backup sync daemon (mcast={}, syncid={}, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n",
                self.cfg.interface, self.cfg.syncid
            ));
        }
        s
    }

    pub fn render_metrics(&self) -> String {
        let c = &self.counters;
        let h = &self.hooks;
        format!(
            "# TYPE uvs_sync_messages_sent_total counter\nuvs_sync_messages_sent_total {}\n\
             # TYPE uvs_sync_records_sent_total counter\nuvs_sync_records_sent_total {}\n\
             # TYPE uvs_sync_messages_received_total counter\nuvs_sync_messages_received_total {}\n\
             # TYPE uvs_sync_records_received_total counter\nuvs_sync_records_received_total {}\n\
             # TYPE uvs_sync_messages_refused_total counter\nuvs_sync_messages_refused_total {}\n\
             # TYPE uvs_sync_queue_dropped_total counter\nuvs_sync_queue_dropped_total {}\n\
             # TYPE uvs_sync_synced_flows gauge\nuvs_sync_synced_flows {}\n\
             # TYPE uvs_sync_adopted_total counter\nuvs_sync_adopted_total {}\n\
             # TYPE uvs_sync_master gauge\nuvs_sync_master {}\n# TYPE uvs_sync_backup gauge\nuvs_sync_backup {}\n",
            c.messages_sent,
            c.records_sent,
            c.messages_received,
            c.records_received,
            c.messages_refused,
            h.out_dropped.load(Ordering::Relaxed),
            h.synced.len(),
            h.synced.adopted.load(Ordering::Relaxed),
            u8::from(self.master),
            u8::from(self.backup),
        )
    }
}

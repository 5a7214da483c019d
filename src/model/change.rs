//! Changes to the configured state, as one ipvsadm command expresses each, and applying them
//! all or nothing: every change is applied to a copy; the copy replaces the running state
//! only if all of them succeeded. This is what makes `uvsadm -R` transactional (ipvsadm's
//! `-R` stops half-way at the first bad line) and what keeps a refused command from changing
//! anything. [`diff`] computes the changes a configuration reload needs.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{
    Counters, LocalAddr, MarkRule, ModelError, RealSpec, ServiceKey, ServiceSpec, ServiceTable,
    Undo,
};

/// One change to the configuration, as one ipvsadm command expresses it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    AddService(ServiceSpec),
    EditService(ServiceSpec),
    DeleteService(ServiceKey),
    AddReal(ServiceKey, RealSpec),
    EditReal(ServiceKey, RealSpec),
    /// Address and port of the real (port 0 = the service's port).
    DeleteReal(ServiceKey, Ipv4Addr, u16),
    /// uvs's stand-in for an iptables MARK rule (`uvsadm --add-mark`).
    AddMarkRule(MarkRule),
    /// `uvsadm --del-mark`: the rule with the same mark, protocol, VIP and ports.
    DeleteMarkRule(MarkRule),
    /// `--add-laddr`: a FullNAT local address for the service.
    AddLocalAddr(ServiceKey, LocalAddr),
    /// `--del-laddr`.
    DeleteLocalAddr(ServiceKey, Ipv4Addr),
    /// `-C`: every service. Mark rules stay (as `ipvsadm -C` leaves iptables alone).
    Clear,
    /// `--set tcp tcpfin udp` in seconds; 0 leaves that value unchanged.
    SetTimeouts {
        tcp: u32,
        tcpfin: u32,
        udp: u32,
    },
}

/// The three timeouts ipvsadm sets (`--set tcp tcpfin udp`), in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeoutsSecs {
    pub tcp: u32,
    pub tcpfin: u32,
    pub udp: u32,
}

impl Default for TimeoutsSecs {
    fn default() -> Self {
        TimeoutsSecs {
            tcp: 900,
            tcpfin: 120,
            udp: 300,
        }
    }
}

/// What the admin interface changes: the service table and the protocol timeouts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdminState {
    pub table: ServiceTable,
    pub timeouts: TimeoutsSecs,
}

/// Why a list of changes was refused: the model's message, and which change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub message: String,
    /// Index of the change that failed (`None`: the list as a whole).
    pub change: Option<usize>,
}

impl Refused {
    /// A refusal of the list as a whole.
    pub fn whole(message: impl Into<String>) -> Refused {
        Refused {
            message: message.into(),
            change: None,
        }
    }
}

/// Applies `changes` to a copy of `state`.
pub fn apply(state: &AdminState, changes: &[Change]) -> Result<AdminState, Refused> {
    let mut next = state.clone();
    let _committed = next.apply_in_place(changes)?;
    Ok(next)
}

/// How to take back a list of changes applied in place: what each one overwrote, newest
/// last. Holding it keeps the overwritten services alive; dropping it commits.
#[derive(Debug)]
#[must_use = "a journal not undone commits the changes"]
pub struct Journal {
    undo: Vec<Undo>,
    counters: Counters,
    timeouts: TimeoutsSecs,
}

impl AdminState {
    /// Applies `changes` in place, all or nothing: on a refusal the state is exactly as it
    /// was. What it costs is what the changes touch (an edit copies the one service it edits;
    /// nothing else is copied), not the size of the table.
    pub fn apply_in_place(&mut self, changes: &[Change]) -> Result<Journal, Refused> {
        let mut journal = Journal {
            undo: Vec::with_capacity(changes.len()),
            counters: self.table.counters(),
            timeouts: self.timeouts,
        };
        for (i, change) in changes.iter().enumerate() {
            if let Err(e) = apply_one(self, change, &mut journal.undo) {
                self.undo(journal);
                return Err(Refused {
                    message: e.to_string(),
                    change: Some(i),
                });
            }
        }
        Ok(journal)
    }

    /// Takes back the changes `journal` recorded (the last ones applied to this state).
    pub fn undo(&mut self, journal: Journal) {
        for u in journal.undo.into_iter().rev() {
            self.table.undo(u);
        }
        self.table.set_counters(journal.counters);
        self.timeouts = journal.timeouts;
    }
}

fn apply_one(s: &mut AdminState, change: &Change, log: &mut Vec<Undo>) -> Result<(), ModelError> {
    let t = &mut s.table;
    // Each arm records what it overwrote only once the change is accepted (a refused change
    // changes nothing).
    match change {
        Change::AddService(spec) => {
            t.add_service(*spec)?;
            log.push(Undo::Appended);
        }
        Change::EditService(spec) => {
            let before = t.saved(&spec.key);
            t.edit_service(*spec)?;
            log.extend(before.map(|(i, svc)| Undo::Replaced(i, svc)));
        }
        Change::DeleteService(key) => log.push(t.remove_service(key)?),
        Change::AddReal(key, spec) => {
            let before = t.saved(key);
            t.add_real(key, *spec)?;
            log.extend(before.map(|(i, svc)| Undo::Replaced(i, svc)));
        }
        Change::EditReal(key, spec) => {
            let before = t.saved(key);
            t.edit_real(key, *spec)?;
            log.extend(before.map(|(i, svc)| Undo::Replaced(i, svc)));
        }
        Change::DeleteReal(key, addr, port) => {
            let before = t.saved(key);
            t.delete_real(key, *addr, *port)?;
            log.extend(before.map(|(i, svc)| Undo::Replaced(i, svc)));
        }
        Change::AddMarkRule(rule) => {
            let before = t.mark_rules().to_vec();
            t.add_mark_rule(rule.clone())?;
            log.push(Undo::MarkRules(before));
        }
        Change::DeleteMarkRule(rule) => {
            let before = t.mark_rules().to_vec();
            t.delete_mark_rule(rule)?;
            log.push(Undo::MarkRules(before));
        }
        Change::AddLocalAddr(key, la) => {
            let before = t.saved(key);
            t.add_local_addr(key, la.clone())?;
            log.extend(before.map(|(i, svc)| Undo::Replaced(i, svc)));
        }
        Change::DeleteLocalAddr(key, addr) => {
            let before = t.saved(key);
            t.delete_local_addr(key, *addr)?;
            log.extend(before.map(|(i, svc)| Undo::Replaced(i, svc)));
        }
        Change::Clear => log.push(t.take_all()),
        Change::SetTimeouts { tcp, tcpfin, udp } => {
            // ipvsadm: 0 means "leave unchanged". The journal restores the timeouts whole.
            if *tcp != 0 {
                s.timeouts.tcp = *tcp;
            }
            if *tcpfin != 0 {
                s.timeouts.tcpfin = *tcpfin;
            }
            if *udp != 0 {
                s.timeouts.udp = *udp;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Protocol, SchedulerKind};

    fn key() -> ServiceKey {
        ServiceKey {
            proto: Protocol::Tcp,
            vip: Ipv4Addr::new(10, 0, 0, 100),
            port: 80,
            fwmark: 0,
        }
    }

    #[test]
    fn all_or_nothing() {
        let s = AdminState::default();
        let ok = apply(
            &s,
            &[
                Change::AddService(ServiceSpec::new(key(), SchedulerKind::Rr)),
                Change::AddReal(key(), RealSpec::route(Ipv4Addr::new(10, 0, 0, 11), 80)),
            ],
        )
        .unwrap();
        assert_eq!(ok.table.services().len(), 1);
        let refused = apply(
            &ok,
            &[
                Change::DeleteReal(key(), Ipv4Addr::new(10, 0, 0, 11), 80),
                Change::AddReal(
                    ServiceKey { port: 81, ..key() },
                    RealSpec::route(Ipv4Addr::new(10, 0, 0, 12), 81),
                ),
            ],
        )
        .unwrap_err();
        assert_eq!(refused.change, Some(1));
        assert_eq!(refused.message, "Service not defined");
        assert_eq!(
            ok.table.service(&key()).unwrap().reals.len(),
            1,
            "first change not kept"
        );
    }

    #[test]
    fn a_refused_list_applied_in_place_leaves_the_state_exactly_as_it_was() {
        let k = |port| ServiceKey { port, ..key() };
        let rs = |last| Ipv4Addr::new(10, 0, 0, last);
        let mut state = apply(
            &AdminState::default(),
            &[
                Change::AddService(ServiceSpec::new(k(80), SchedulerKind::Rr)),
                Change::AddService(ServiceSpec::new(k(81), SchedulerKind::Rr)),
                Change::AddService(ServiceSpec::new(k(82), SchedulerKind::Rr)),
                Change::AddReal(k(81), RealSpec::route(rs(11), 81)),
                Change::AddReal(k(82), RealSpec::route(rs(12), 82)),
            ],
        )
        .unwrap();
        let before = state.clone();
        let mut heavier = RealSpec::route(rs(11), 81);
        heavier.weight = 9;
        let rule = MarkRule {
            proto: Protocol::Tcp,
            vip: key().vip,
            ports: vec![443],
            mark: 1,
        };
        // Every kind of change, then one that is refused.
        let refused = state
            .apply_in_place(&[
                Change::DeleteService(k(80)),
                Change::EditReal(k(81), heavier),
                Change::AddReal(k(81), RealSpec::route(rs(13), 81)),
                Change::DeleteReal(k(82), rs(12), 82),
                Change::AddService(ServiceSpec::new(k(90), SchedulerKind::Wlc)),
                Change::AddMarkRule(rule),
                Change::SetTimeouts {
                    tcp: 5,
                    tcpfin: 5,
                    udp: 5,
                },
                Change::Clear,
                Change::AddService(ServiceSpec::new(k(80), SchedulerKind::Sh)),
                Change::DeleteService(k(81)),
            ])
            .unwrap_err();
        assert_eq!(refused.change, Some(9));
        assert_eq!(state, before);
        // And the table still works as before: its key index points at the right places.
        assert_eq!(state.table.service(&k(82)).unwrap().reals.len(), 1);
        let next_id = state
            .table
            .add_real(&k(80), RealSpec::route(rs(14), 80))
            .unwrap();
        let mut again = before.clone();
        assert_eq!(
            again.table.add_real(&k(80), RealSpec::route(rs(14), 80)),
            Ok(next_id),
            "real ids continue from where they were"
        );
    }

    #[test]
    fn deleting_services_anywhere_keeps_every_other_found_by_key_and_in_order() {
        let k = |port| ServiceKey { port, ..key() };
        let mut state = AdminState::default();
        let adds: Vec<Change> = (1000..1100)
            .map(|p| Change::AddService(ServiceSpec::new(k(p), SchedulerKind::Rr)))
            .collect();
        let _ = state.apply_in_place(&adds).unwrap();
        let gone = [1000, 1050, 1099, 1001];
        let dels: Vec<Change> = gone.iter().map(|&p| Change::DeleteService(k(p))).collect();
        let _ = state.apply_in_place(&dels).unwrap();
        let _ = state
            .apply_in_place(&[Change::AddService(ServiceSpec::new(
                k(1000),
                SchedulerKind::Wlc,
            ))])
            .unwrap();
        let order: Vec<u16> = state.table.services().iter().map(|s| s.key.port).collect();
        let mut want: Vec<u16> = (1000..1100).filter(|p| !gone.contains(p)).collect();
        want.push(1000);
        assert_eq!(
            order, want,
            "configuration order, the re-added service last"
        );
        for p in want {
            assert_eq!(state.table.service(&k(p)).map(|s| s.key), Some(k(p)));
        }
        assert_eq!(
            state.table.service(&k(1000)).unwrap().scheduler,
            SchedulerKind::Wlc
        );
        assert!(state.table.service(&k(1050)).is_none());
    }

    #[test]
    fn timeouts_zero_means_unchanged() {
        let s = apply(
            &AdminState::default(),
            &[Change::SetTimeouts {
                tcp: 600,
                tcpfin: 0,
                udp: 60,
            }],
        )
        .unwrap();
        assert_eq!(
            s.timeouts,
            TimeoutsSecs {
                tcp: 600,
                tcpfin: 120,
                udp: 60
            }
        );
    }
}

/// The changes that turn `current` into `desired` while keeping every real that exists in both
/// (same service, address and port) — its id, and so its established flows, survive. Used by
/// configuration reloads. Services are matched by key, reals by address and port.
pub fn diff(current: &ServiceTable, desired: &ServiceTable) -> Vec<Change> {
    let mut out = Vec::new();
    // Mark rules: old ones go first (so a port can move between rules), new ones come last.
    let has = |t: &ServiceTable, r: &MarkRule| t.mark_rules().contains(r);
    for r in current.mark_rules() {
        if !has(desired, r) {
            out.push(Change::DeleteMarkRule(r.clone()));
        }
    }
    for s in current.services() {
        if desired.service(&s.key).is_none() {
            out.push(Change::DeleteService(s.key));
        }
    }
    for d in desired.services() {
        let spec = ServiceSpec {
            key: d.key,
            scheduler: d.scheduler,
            persistence_timeout: d.persistence_timeout,
            persistence_netmask: d.persistence_netmask,
            sched_flags: d.sched_flags,
            ops: d.ops,
            proxy_protocol: d.proxy_protocol,
        };
        let real_spec = |r: &super::RealServer| RealSpec {
            addr: r.addr,
            port: r.port,
            weight: r.weight,
            forward: r.forward,
            upper_threshold: r.upper_threshold,
            lower_threshold: r.lower_threshold,
        };
        match current.service(&d.key) {
            None => {
                out.push(Change::AddService(spec));
                out.extend(d.reals.iter().map(|r| Change::AddReal(d.key, real_spec(r))));
                out.extend(
                    d.local_addrs
                        .iter()
                        .map(|l| Change::AddLocalAddr(d.key, l.clone())),
                );
            }
            Some(c) => {
                if c.scheduler != d.scheduler
                    || c.persistence_timeout != d.persistence_timeout
                    || c.persistence_netmask != d.persistence_netmask
                    || c.sched_flags != d.sched_flags
                    || c.ops != d.ops
                    || c.proxy_protocol != d.proxy_protocol
                {
                    out.push(Change::EditService(spec));
                }
                for l in &c.local_addrs {
                    if !d.local_addrs.contains(l) {
                        out.push(Change::DeleteLocalAddr(d.key, l.addr));
                    }
                }
                for l in &d.local_addrs {
                    if !c.local_addrs.contains(l) {
                        out.push(Change::AddLocalAddr(d.key, l.clone()));
                    }
                }
                for r in &c.reals {
                    if !d.reals.iter().any(|x| x.addr == r.addr && x.port == r.port) {
                        out.push(Change::DeleteReal(d.key, r.addr, r.port));
                    }
                }
                for r in &d.reals {
                    match c
                        .reals
                        .iter()
                        .find(|x| x.addr == r.addr && x.port == r.port)
                    {
                        None => out.push(Change::AddReal(d.key, real_spec(r))),
                        Some(x) => {
                            if x.weight != r.weight
                                || x.forward != r.forward
                                || x.upper_threshold != r.upper_threshold
                                || x.lower_threshold != r.lower_threshold
                            {
                                out.push(Change::EditReal(d.key, real_spec(r)));
                            }
                        }
                    }
                }
            }
        }
    }
    for r in desired.mark_rules() {
        if !has(current, r) {
            out.push(Change::AddMarkRule(r.clone()));
        }
    }
    out
}

#[cfg(test)]
mod diff_tests {
    use super::*;
    use crate::model::{Protocol, SchedulerKind};

    /// (port, scheduler, [(last address octet, weight)]) per service.
    type Spec<'a> = (u16, SchedulerKind, &'a [(u8, u32)]);
    /// (port, scheduler, [(address, weight)]) per service, sorted by port.
    type Shape = Vec<(u16, SchedulerKind, Vec<(Ipv4Addr, u32)>)>;

    fn table(spec: &[Spec<'_>]) -> ServiceTable {
        let mut t = ServiceTable::new();
        for (port, sched, reals) in spec {
            let key = ServiceKey {
                proto: Protocol::Tcp,
                vip: Ipv4Addr::new(10, 0, 0, 100),
                port: *port,
                fwmark: 0,
            };
            t.add_service(ServiceSpec::new(key, *sched)).unwrap();
            for (last, w) in reals.iter() {
                let mut r = RealSpec::route(Ipv4Addr::new(10, 0, 0, *last), *port);
                r.weight = *w;
                t.add_real(&key, r).unwrap();
            }
        }
        t
    }

    #[test]
    fn reload_keeps_unchanged_reals_and_reaches_the_desired_table() {
        let current = table(&[
            (80, SchedulerKind::Rr, &[(11, 1), (12, 1)]),
            (81, SchedulerKind::Rr, &[(11, 1)]),
        ]);
        let desired = table(&[
            (80, SchedulerKind::Wrr, &[(11, 3), (13, 1)]),
            (82, SchedulerKind::Lc, &[(12, 1)]),
        ]);
        let changes = diff(&current, &desired);
        let state = AdminState {
            table: current.clone(),
            ..AdminState::default()
        };
        let next = apply(&state, &changes).unwrap();
        let key80 = ServiceKey {
            proto: Protocol::Tcp,
            vip: Ipv4Addr::new(10, 0, 0, 100),
            port: 80,
            fwmark: 0,
        };
        // Same services, schedulers, reals and weights as desired.
        let shape = |t: &ServiceTable| -> Shape {
            let mut v: Vec<_> = t
                .services()
                .iter()
                .map(|s| {
                    (
                        s.key.port,
                        s.scheduler,
                        s.reals.iter().map(|r| (r.addr, r.weight)).collect(),
                    )
                })
                .collect();
            v.sort_by_key(|x| x.0);
            v
        };
        assert_eq!(shape(&next.table), shape(&desired));
        // 10.0.0.11 on port 80 kept its id (its flows survive the reload).
        let id = |t: &ServiceTable| {
            t.service(&key80)
                .unwrap()
                .reals
                .iter()
                .find(|r| r.addr == Ipv4Addr::new(10, 0, 0, 11))
                .unwrap()
                .id
        };
        assert_eq!(id(&current), id(&next.table));
        assert!(
            diff(&next.table, &desired).is_empty(),
            "a second reload changes nothing"
        );
    }
}

#[cfg(test)]
mod diff_fwmark_tests {
    use super::*;
    use crate::model::{Protocol, SchedulerKind};

    fn table(mark: u32, ports: &[u16], reals: &[u8]) -> ServiceTable {
        let mut t = ServiceTable::new();
        let key = ServiceKey::fwmark(mark);
        t.add_service(ServiceSpec::new(key, SchedulerKind::Rr))
            .unwrap();
        for last in reals {
            t.add_real(&key, RealSpec::route(Ipv4Addr::new(10, 0, 0, *last), 0))
                .unwrap();
        }
        t.add_mark_rule(MarkRule {
            proto: Protocol::Tcp,
            vip: Ipv4Addr::new(10, 0, 0, 100),
            ports: ports.to_vec(),
            mark,
        })
        .unwrap();
        t
    }

    #[test]
    fn reload_moves_ports_between_mark_rules_and_keeps_fwmark_reals() {
        let current = table(1, &[80, 443], &[11, 12]);
        let desired = table(1, &[80, 8443], &[11]);
        let changes = diff(&current, &desired);
        let state = AdminState {
            table: current.clone(),
            ..AdminState::default()
        };
        let next = apply(&state, &changes).unwrap();
        assert_eq!(next.table.mark_rules(), desired.mark_rules());
        let real = |t: &ServiceTable| t.service(&ServiceKey::fwmark(1)).unwrap().reals.clone();
        assert_eq!(real(&next.table).len(), 1);
        assert_eq!(real(&next.table)[0].id, real(&current)[0].id, "kept its id");
        assert!(diff(&next.table, &desired).is_empty());
    }
}

/// The services a list of changes may have changed: what a snapshot compiled from the
/// previous one must compile again (see `snapshot::Compiler`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// Everything must be compiled again (`-C`, a mark rule, new routes).
    pub all: bool,
    pub keys: std::collections::BTreeSet<ServiceKey>,
}

impl Touched {
    pub fn all() -> Touched {
        Touched {
            all: true,
            ..Touched::default()
        }
    }

    /// The services `changes` name; everything for a `-C` or a mark rule (which moves
    /// (protocol, VIP, port) keys between services). Timeouts touch no service.
    pub fn of(changes: &[Change]) -> Touched {
        let mut t = Touched::default();
        for c in changes {
            match c {
                Change::AddService(spec) | Change::EditService(spec) => t.add(spec.key),
                Change::DeleteService(key)
                | Change::AddReal(key, _)
                | Change::EditReal(key, _)
                | Change::DeleteReal(key, ..)
                | Change::AddLocalAddr(key, _)
                | Change::DeleteLocalAddr(key, _) => t.add(*key),
                Change::AddMarkRule(_) | Change::DeleteMarkRule(_) | Change::Clear => t.all = true,
                Change::SetTimeouts { .. } => {}
            }
        }
        t
    }

    pub fn add(&mut self, key: ServiceKey) {
        if !self.all {
            self.keys.insert(key);
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.all && self.keys.is_empty()
    }
}

/// What a list of changes may change beyond the services' own entries: the configured VIPs
/// and local addresses (ARP answers them) and the set of reals (ARP resolves them). A weight
/// change does none of these.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Structure {
    /// Services or mark rules were added or removed.
    pub vips: bool,
    /// Reals were added or removed (a service with its reals, too).
    pub reals: bool,
    /// FullNAT local addresses were added or removed (a service with its own, too).
    pub laddrs: bool,
}

impl Structure {
    pub fn all() -> Structure {
        Structure {
            vips: true,
            reals: true,
            laddrs: true,
        }
    }

    pub fn of(changes: &[Change]) -> Structure {
        let mut s = Structure::default();
        for c in changes {
            match c {
                Change::AddService(_)
                | Change::DeleteService(_)
                | Change::Clear
                | Change::AddMarkRule(_)
                | Change::DeleteMarkRule(_) => s = Structure::all(),
                Change::AddReal(..) | Change::DeleteReal(..) => s.reals = true,
                Change::AddLocalAddr(..) | Change::DeleteLocalAddr(..) => s.laddrs = true,
                Change::EditService(_) | Change::EditReal(..) | Change::SetTimeouts { .. } => {}
            }
        }
        s
    }

    pub fn merge(self, other: Structure) -> Structure {
        Structure {
            vips: self.vips || other.vips,
            reals: self.reals || other.reals,
            laddrs: self.laddrs || other.laddrs,
        }
    }
}

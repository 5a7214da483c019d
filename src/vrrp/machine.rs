//! The VRRP state machine of one instance (RFC 3768 §6.4 / RFC 5798 §6.4, with keepalived's
//! choices where the RFCs leave room), pure: events in, actions out, time as a parameter
//! (milliseconds on any monotonic clock). The control thread drives it with real time; the
//! tests with a virtual clock.
//!
//! keepalived choices reproduced:
//! - `state MASTER` with priority < 255 starts as BACKUP with an immediately expiring
//!   master-down timer ("the simplest way to become master is to time out from backup very
//!   quickly"), so it announces at once and still yields to a better master's next advert.
//! - Priority 255 (address owner) becomes MASTER at start without waiting.
//! - `preempt_delay`: preemption is held off for that long after start-up.
//! - A MASTER hearing a lower-priority advert answers at once with its own advert and
//!   re-announces its VIPs (keepalived's `garp_lower_prio_repeat`): this ends a split brain.
//!   uvs addition: a MASTER that yields to a higher priority sends one last advert of its own
//!   first, so the winner always hears the lower priority and re-announces (otherwise, when
//!   the winner's advert arrives first, the split brain ends without any gratuitous ARP and
//!   the router keeps sending to the loser).
//! - Timers: Skew = (256 − prio) × Master_Adver_Interval / 256 (v2: the local interval),
//!   Master_Down = 3 × Master_Adver_Interval + Skew; a v3 BACKUP adopts the master's interval.

use std::net::Ipv4Addr;

use super::packet::{Advert, Version};

/// Where an instance stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Init,
    Backup,
    Master,
    /// A tracked interface is down: no adverts, no VIPs.
    Fault,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Init => "INIT",
            State::Backup => "BACKUP",
            State::Master => "MASTER",
            State::Fault => "FAULT",
        }
    }
    pub const ALL: [State; 4] = [State::Init, State::Backup, State::Master, State::Fault];
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send an advert with this priority (0 = resign).
    Advertise(u8),
    /// Entered MASTER: answer ARP and forward for the VIPs, send gratuitous ARP.
    BecomeMaster,
    /// Left MASTER or started as BACKUP: stop answering and forwarding.
    BecomeBackup,
    BecomeFault,
    /// Still MASTER, but someone else claims the VIPs: announce them again.
    Reannounce,
}

/// The protocol parameters of an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub version: Version,
    pub vrid: u8,
    /// 1..=255.
    pub priority: u8,
    /// Advertisement interval in centiseconds (v2: a multiple of 100).
    pub interval_cs: u16,
    /// Start as MASTER (keepalived `state MASTER`).
    pub start_master: bool,
    pub preempt: bool,
    pub preempt_delay_ms: u64,
    /// Our primary address on the interface: the advert source, and the tie-breaker.
    pub address: Ipv4Addr,
}

pub struct Machine {
    pub p: Params,
    state: State,
    /// The interval the current master advertises (centiseconds).
    master_interval_cs: u16,
    /// Next advert (MASTER) or master-down deadline (BACKUP).
    deadline: Option<u64>,
    preempt_from: u64,
    /// State changes since start.
    pub transitions: u64,
    /// Address of the last master heard (BACKUP), for listings.
    pub master_addr: Option<Ipv4Addr>,
}

impl Machine {
    pub fn new(p: Params) -> Machine {
        Machine {
            master_interval_cs: p.interval_cs,
            p,
            state: State::Init,
            deadline: None,
            preempt_from: 0,
            transitions: 0,
            master_addr: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    fn interval_ms(cs: u16) -> u64 {
        u64::from(cs.max(1)) * 10
    }

    /// Skew_Time in milliseconds.
    pub fn skew_ms(&self) -> u64 {
        let mi = match self.p.version {
            Version::V2 => Self::interval_ms(self.p.interval_cs),
            Version::V3 => Self::interval_ms(self.master_interval_cs),
        };
        (256 - u64::from(self.p.priority)) * mi / 256
    }

    /// Master_Down_Interval in milliseconds.
    pub fn master_down_ms(&self) -> u64 {
        let mi = match self.p.version {
            Version::V2 => Self::interval_ms(self.p.interval_cs),
            Version::V3 => Self::interval_ms(self.master_interval_cs),
        };
        3 * mi + self.skew_ms()
    }

    /// When `on_tick` next has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadline
    }

    fn set(&mut self, s: State, out: &mut Vec<Action>) {
        if s == self.state {
            return;
        }
        let was = self.state;
        self.state = s;
        self.transitions += 1;
        match s {
            State::Master => out.push(Action::BecomeMaster),
            State::Backup if was == State::Master || was == State::Init => {
                out.push(Action::BecomeBackup)
            }
            State::Backup => out.push(Action::BecomeBackup),
            State::Fault => out.push(Action::BecomeFault),
            State::Init => {}
        }
    }

    fn enter_master(&mut self, now: u64, out: &mut Vec<Action>) {
        out.push(Action::Advertise(self.p.priority));
        self.set(State::Master, out);
        self.master_addr = Some(self.p.address);
        self.deadline = Some(now + Self::interval_ms(self.p.interval_cs));
    }

    fn enter_backup(&mut self, now: u64, out: &mut Vec<Action>) {
        self.set(State::Backup, out);
        self.deadline = Some(now + self.master_down_ms());
    }

    pub fn start(&mut self, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        self.preempt_from = now + self.p.preempt_delay_ms;
        if self.p.priority == 255 {
            self.enter_master(now, &mut out);
        } else {
            self.enter_backup(now, &mut out);
            if self.p.start_master {
                self.deadline = Some(now);
            }
        }
        out
    }

    /// Timers.
    pub fn on_tick(&mut self, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(d) = self.deadline else {
            return out;
        };
        if now < d {
            return out;
        }
        match self.state {
            State::Backup => self.enter_master(now, &mut out),
            State::Master => {
                out.push(Action::Advertise(self.p.priority));
                self.deadline = Some(now + Self::interval_ms(self.p.interval_cs));
            }
            State::Init | State::Fault => self.deadline = None,
        }
        out
    }

    /// A valid advert for our VRID from `src` (already checked: version, auth, addresses).
    pub fn on_advert(&mut self, a: &Advert, src: Ipv4Addr, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        if src == self.p.address {
            return out; // our own, looped back
        }
        match self.state {
            State::Backup => {
                if a.priority == 0 {
                    // The master resigned: take over after Skew_Time.
                    self.deadline = Some(now + self.skew_ms());
                    return out;
                }
                let preempt = self.p.preempt && now >= self.preempt_from;
                if !preempt || a.priority >= self.p.priority {
                    if self.p.version == Version::V3 {
                        self.master_interval_cs = a.interval_cs.max(1);
                    }
                    self.master_addr = Some(src);
                    self.deadline = Some(now + self.master_down_ms());
                }
                // Lower priority with preemption: ignored, so our master-down timer runs out.
            }
            State::Master => {
                if a.priority == 0 {
                    out.push(Action::Advertise(self.p.priority));
                    self.deadline = Some(now + Self::interval_ms(self.p.interval_cs));
                } else if a.priority > self.p.priority
                    || (a.priority == self.p.priority && u32::from(src) > u32::from(self.p.address))
                {
                    if self.p.version == Version::V3 {
                        self.master_interval_cs = a.interval_cs.max(1);
                    }
                    self.master_addr = Some(src);
                    // Yield with one last advert of our own priority: the winner hears a
                    // lower priority and re-announces its VIPs. Without it a split brain
                    // ends silently whenever the winner's advert arrives first, and the
                    // router keeps the loser's MAC for the VIP (measured in netns-tests/ha.rs).
                    out.push(Action::Advertise(self.p.priority));
                    self.enter_backup(now, &mut out);
                } else {
                    out.push(Action::Advertise(self.p.priority));
                    out.push(Action::Reannounce);
                    self.deadline = Some(now + Self::interval_ms(self.p.interval_cs));
                }
            }
            State::Init | State::Fault => {}
        }
        out
    }

    /// Graceful stop: a MASTER resigns with priority 0.
    pub fn shutdown(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        if self.state == State::Master {
            out.push(Action::Advertise(0));
        }
        self.set(State::Init, &mut out);
        self.deadline = None;
        out
    }

    /// A tracked interface went down (`true`) or came back (`false`).
    pub fn set_fault(&mut self, fault: bool, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        if fault && self.state != State::Fault {
            if self.state == State::Master {
                out.push(Action::Advertise(0));
            }
            self.set(State::Fault, &mut out);
            self.deadline = None;
        } else if !fault && self.state == State::Fault {
            self.enter_backup(now, &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);

    fn params(version: Version, prio: u8, interval_cs: u16) -> Params {
        Params {
            version,
            vrid: 51,
            priority: prio,
            interval_cs,
            start_master: false,
            preempt: true,
            preempt_delay_ms: 0,
            address: A,
        }
    }

    fn advert(version: Version, prio: u8, interval_cs: u16) -> Advert {
        Advert {
            version,
            vrid: 51,
            priority: prio,
            interval_cs,
            auth_type: 0,
            auth_data: [0; 8],
            addrs: vec![],
        }
    }

    /// Runs the machine's timers from `from` to `to` in 1 ms steps; the actions with times.
    fn run(m: &mut Machine, from: u64, to: u64) -> Vec<(u64, Action)> {
        let mut v = Vec::new();
        for t in from..=to {
            for a in m.on_tick(t) {
                v.push((t, a));
            }
        }
        v
    }

    #[test]
    fn timers_follow_the_rfc_formulas() {
        // v2, priority 128, 1 s: skew 0.5 s, master down 3.5 s (the reference's example).
        let m = Machine::new(params(Version::V2, 128, 100));
        assert_eq!(m.skew_ms(), 500);
        assert_eq!(m.master_down_ms(), 3500);
        // v3, priority 100, 100 ms adverts: skew 60.9 ms → 60, down 360 ms.
        let m = Machine::new(params(Version::V3, 100, 10));
        assert_eq!(m.skew_ms(), 60);
        assert_eq!(m.master_down_ms(), 360);
    }

    #[test]
    fn backup_takes_over_after_master_down_and_advertises() {
        let mut m = Machine::new(params(Version::V3, 100, 10));
        assert_eq!(m.start(0), vec![Action::BecomeBackup]);
        // A master keeps us down while it advertises.
        for t in (0..1000).step_by(100) {
            run(&mut m, t, t + 99);
            m.on_advert(&advert(Version::V3, 150, 10), B, t + 99);
            assert_eq!(m.state(), State::Backup);
        }
        // Silence after the advert at 999: takeover at 999 + 360.
        let acts = run(&mut m, 1000, 1500);
        assert_eq!(acts[0], (1359, Action::Advertise(100)));
        assert_eq!(acts[1], (1359, Action::BecomeMaster));
        assert_eq!(
            acts.iter()
                .filter(|(_, a)| *a == Action::Advertise(100))
                .count(),
            2,
            "then one advert per interval: {acts:?}"
        );
    }

    #[test]
    fn v3_backup_adopts_the_master_interval() {
        let mut m = Machine::new(params(Version::V3, 100, 100));
        m.start(0);
        m.on_advert(&advert(Version::V3, 200, 20), B, 10);
        assert_eq!(m.master_down_ms(), 3 * 200 + 156 * 200 / 256);
        assert_eq!(m.next_deadline(), Some(10 + m.master_down_ms()));
    }

    #[test]
    fn priority_zero_means_takeover_after_skew() {
        let mut m = Machine::new(params(Version::V2, 100, 100));
        m.start(0);
        m.on_advert(&advert(Version::V2, 150, 100), B, 500);
        m.on_advert(&advert(Version::V2, 0, 100), B, 600);
        let acts = run(&mut m, 600, 2000);
        assert_eq!(acts[1], (600 + 609, Action::BecomeMaster));
    }

    #[test]
    fn preempt_nopreempt_and_preempt_delay() {
        // Preempt: a lower-priority master is ignored, so we take over on the down timer.
        let mut m = Machine::new(params(Version::V2, 150, 100));
        m.start(0);
        for t in (0..5000).step_by(1000) {
            m.on_advert(&advert(Version::V2, 100, 100), B, t);
            run(&mut m, t, t + 999);
        }
        assert_eq!(m.state(), State::Master);
        // The lower master then hears us and yields (its side); we keep answering it.
        assert_eq!(
            m.on_advert(&advert(Version::V2, 100, 100), B, 5000),
            vec![Action::Advertise(150), Action::Reannounce]
        );

        // nopreempt: stays BACKUP as long as the lower master advertises.
        let mut p = params(Version::V2, 150, 100);
        p.preempt = false;
        let mut m = Machine::new(p);
        m.start(0);
        for t in (0..10_000).step_by(1000) {
            m.on_advert(&advert(Version::V2, 100, 100), B, t);
            run(&mut m, t, t + 999);
        }
        assert_eq!(m.state(), State::Backup);

        // preempt_delay 5 s: held off for 5 s, then takes over.
        let mut p = params(Version::V2, 150, 100);
        p.preempt_delay_ms = 5000;
        let mut m = Machine::new(p);
        m.start(0);
        let mut became = None;
        for t in (0..10_000).step_by(1000) {
            m.on_advert(&advert(Version::V2, 100, 100), B, t);
            if run(&mut m, t, t + 999)
                .iter()
                .any(|(_, a)| *a == Action::BecomeMaster)
            {
                became.get_or_insert(t);
            }
        }
        let t = became.expect("took over after the delay");
        assert!((5000..=9000).contains(&t), "took over at {t}");
    }

    #[test]
    fn master_yields_to_higher_priority_and_to_equal_priority_with_higher_address() {
        let mut m = Machine::new(params(Version::V2, 100, 100));
        m.start(0);
        run(&mut m, 0, 4000);
        assert_eq!(m.state(), State::Master);
        let acts = m.on_advert(&advert(Version::V2, 100, 100), B, 4001);
        assert_eq!(
            acts,
            vec![Action::Advertise(100), Action::BecomeBackup],
            "10.0.0.3 > 10.0.0.2 wins a tie (after our yielding advert)"
        );
        assert_eq!(m.master_addr, Some(B));

        let mut p = params(Version::V2, 100, 100);
        p.address = Ipv4Addr::new(10, 0, 0, 9);
        let mut m = Machine::new(p);
        m.start(0);
        run(&mut m, 0, 4000);
        assert_eq!(
            m.on_advert(&advert(Version::V2, 100, 100), B, 4001),
            vec![Action::Advertise(100), Action::Reannounce]
        );
        assert_eq!(
            m.on_advert(&advert(Version::V2, 200, 100), B, 4002),
            vec![Action::Advertise(100), Action::BecomeBackup]
        );
    }

    #[test]
    fn owner_and_state_master_start_at_once() {
        let mut m = Machine::new(params(Version::V2, 255, 100));
        assert_eq!(
            m.start(7),
            vec![Action::Advertise(255), Action::BecomeMaster]
        );
        let mut p = params(Version::V2, 100, 100);
        p.start_master = true;
        let mut m = Machine::new(p);
        assert_eq!(m.start(7), vec![Action::BecomeBackup]);
        assert_eq!(
            m.on_tick(7),
            vec![Action::Advertise(100), Action::BecomeMaster]
        );
    }

    #[test]
    fn graceful_stop_and_fault() {
        let mut m = Machine::new(params(Version::V3, 100, 100));
        m.start(0);
        run(&mut m, 0, 4000);
        assert_eq!(m.shutdown(), vec![Action::Advertise(0)]);
        let mut m = Machine::new(params(Version::V3, 100, 100));
        m.start(0);
        run(&mut m, 0, 4000);
        assert_eq!(
            m.set_fault(true, 4001),
            vec![Action::Advertise(0), Action::BecomeFault]
        );
        assert!(run(&mut m, 4001, 9000).is_empty());
        assert_eq!(m.set_fault(false, 9001), vec![Action::BecomeBackup]);
        assert_eq!(m.state(), State::Backup);
        // Own adverts looped back are ignored.
        assert!(
            m.on_advert(&advert(Version::V3, 200, 100), A, 9002)
                .is_empty()
        );
    }

    #[test]
    fn two_machines_converge_to_one_master() {
        // Split brain then healed: both MASTER; exchanging adverts leaves exactly one.
        let mut a = Machine::new(params(Version::V3, 100, 10));
        let mut pb = params(Version::V3, 200, 10);
        pb.address = B;
        let mut b = Machine::new(pb);
        a.start(0);
        b.start(0);
        run(&mut a, 0, 1000);
        run(&mut b, 0, 1000);
        assert_eq!((a.state(), b.state()), (State::Master, State::Master));
        let adv_a = advert(Version::V3, 100, 10);
        let adv_b = advert(Version::V3, 200, 10);
        let ra = a.on_advert(&adv_b, B, 1001);
        let rb = b.on_advert(&adv_a, A, 1001);
        assert_eq!(ra, vec![Action::Advertise(100), Action::BecomeBackup]);
        assert!(rb.contains(&Action::Reannounce));
        assert_eq!((a.state(), b.state()), (State::Backup, State::Master));

        // The winner's advert arrives first: the loser's yielding advert (its only one) still
        // makes the winner re-announce.
        let mut a = Machine::new(params(Version::V3, 100, 10));
        let mut b = Machine::new(Params {
            address: B,
            ..params(Version::V3, 200, 10)
        });
        a.start(0);
        b.start(0);
        run(&mut a, 0, 1000);
        run(&mut b, 0, 1000);
        let ra = a.on_advert(&adv_b, B, 1001);
        assert_eq!(ra[0], Action::Advertise(100));
        let rb = b.on_advert(&adv_a, A, 1002);
        assert!(rb.contains(&Action::Reannounce), "{rb:?}");
        assert!(
            run(&mut a, 1002, 1300).is_empty(),
            "a BACKUP sends nothing more"
        );
    }
}

//! Applying changes to the configured state, all or nothing: every change is applied to a
//! copy; the copy replaces the running state only if all of them succeeded. This is what
//! makes `uvsadm -R` transactional (ipvsadm's `-R` stops half-way at the first bad line) and
//! what keeps a refused command from changing anything.

use super::proto::{Change, Refusal, TimeoutsSecs};
use crate::model::{ModelError, ServiceTable};

/// What the admin interface changes: the service table and the protocol timeouts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdminState {
    pub table: ServiceTable,
    pub timeouts: TimeoutsSecs,
}

/// Exit status ipvsadm uses when the kernel refuses a command (`return -1` from main).
pub const EXIT_REFUSED: i32 = 255;

/// Applies `changes` to a copy of `state`.
pub fn apply(state: &AdminState, changes: &[Change]) -> Result<AdminState, Refusal> {
    let mut next = state.clone();
    for (i, change) in changes.iter().enumerate() {
        apply_one(&mut next, change).map_err(|e| Refusal {
            message: e.to_string(),
            change: Some(i),
            exit_code: EXIT_REFUSED,
        })?;
    }
    Ok(next)
}

fn apply_one(s: &mut AdminState, change: &Change) -> Result<(), ModelError> {
    match change {
        Change::AddService(spec) => s.table.add_service(*spec),
        Change::EditService(spec) => s.table.edit_service(*spec),
        Change::DeleteService(key) => s.table.delete_service(key),
        Change::AddReal(key, spec) => s.table.add_real(key, *spec).map(|_| ()),
        Change::EditReal(key, spec) => s.table.edit_real(key, *spec),
        Change::DeleteReal(key, addr, port) => s.table.delete_real(key, *addr, *port),
        Change::Clear => {
            s.table.clear();
            Ok(())
        }
        Change::SetTimeouts { tcp, tcpfin, udp } => {
            // ipvsadm: 0 means "leave unchanged".
            if *tcp != 0 {
                s.timeouts.tcp = *tcp;
            }
            if *tcpfin != 0 {
                s.timeouts.tcpfin = *tcpfin;
            }
            if *udp != 0 {
                s.timeouts.udp = *udp;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Protocol, RealSpec, SchedulerKind, ServiceKey, ServiceSpec};
    use std::net::Ipv4Addr;

    fn key() -> ServiceKey {
        ServiceKey {
            proto: Protocol::Tcp,
            vip: Ipv4Addr::new(10, 0, 0, 100),
            port: 80,
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

//! IPVS's TCP state table (`tcp_states[]`, net/netfilter/ipvs/ip_vs_proto_tcp.c): INPUT and
//! OUTPUT rows for connections whose replies pass the director (NAT), INPUT_ONLY rows for
//! those whose replies bypass it (DR, TUN: the kernel's IP_VS_CONN_F_NOOUTPUT). Flag priority
//! per packet: RST, then SYN, then FIN, then ACK; a packet with none of them leaves the state
//! as it is. TIME_WAIT and LAST_ACK are reachable only when the director sees both sides.

/// Connection states, in the kernel's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TcpState {
    None = 0,
    Established,
    SynSent,
    SynRecv,
    FinWait,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    SynAck,
}

use TcpState::*;

impl TcpState {
    pub const fn from_u8(v: u8) -> TcpState {
        match v {
            1 => Established,
            2 => SynSent,
            3 => SynRecv,
            4 => FinWait,
            5 => TimeWait,
            6 => Close,
            7 => CloseWait,
            8 => LastAck,
            9 => Listen,
            10 => SynAck,
            _ => None,
        }
    }

    /// The state `ipvsadm -Lnc` names `name` (see [`TcpState::name`]).
    pub fn from_name(name: &str) -> Option<TcpState> {
        (0..=10u8).map(TcpState::from_u8).find(|s| s.name() == name)
    }

    /// Name as `ipvsadm -Lnc` prints it.
    pub const fn name(self) -> &'static str {
        match self {
            None => "NONE",
            Established => "ESTABLISHED",
            SynSent => "SYN_SENT",
            SynRecv => "SYN_RECV",
            FinWait => "FIN_WAIT",
            TimeWait => "TIME_WAIT",
            Close => "CLOSE",
            CloseWait => "CLOSE_WAIT",
            LastAck => "LAST_ACK",
            Listen => "LISTEN",
            SynAck => "SYNACK",
        }
    }

    /// The connection is being closed: a new SYN on its five-tuple is a new connection.
    pub const fn is_closing(self) -> bool {
        matches!(self, FinWait | TimeWait | Close | CloseWait | LastAck)
    }

    /// Counted as an active connection (`tcp_state_active_table`, modern kernels).
    pub const fn is_active(self) -> bool {
        matches!(self, Established | SynSent | SynRecv | SynAck)
    }
}

/// Which rows of IPVS's `tcp_states[]` a packet is judged by (`tcp_state_off[]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// A client packet of a connection whose replies pass the director (NAT).
    Input,
    /// A reply from the real server, through the director (NAT).
    Output,
    /// A client packet of a connection whose replies bypass the director (DR, TUN: the
    /// kernel's `IP_VS_CONN_F_NOOUTPUT`).
    InputOnly,
}

type Table = [[TcpState; 11]; 4];

// Columns: sNO sES sSS sSR sFW sTW sCL sCW sLA sLI sSA (the kernel's state order).
// Rows: syn, fin, ack, rst.
const INPUT: Table = [
    [
        SynRecv,
        Established,
        Established,
        SynRecv,
        SynRecv,
        SynRecv,
        SynRecv,
        SynRecv,
        SynRecv,
        SynRecv,
        SynRecv,
    ],
    [
        Close, CloseWait, SynSent, TimeWait, TimeWait, TimeWait, Close, CloseWait, LastAck, Listen,
        TimeWait,
    ],
    [
        Established,
        Established,
        SynSent,
        Established,
        FinWait,
        TimeWait,
        Close,
        CloseWait,
        Close,
        Listen,
        Established,
    ],
    [
        Close, Close, Close, SynRecv, Close, Close, Close, Close, LastAck, Listen, SynRecv,
    ],
];

const OUTPUT: Table = [
    [
        SynSent,
        Established,
        SynSent,
        SynRecv,
        SynSent,
        SynSent,
        SynSent,
        SynSent,
        SynSent,
        Listen,
        SynRecv,
    ],
    [
        TimeWait, FinWait, SynSent, TimeWait, FinWait, TimeWait, Close, TimeWait, LastAck, Listen,
        TimeWait,
    ],
    [
        Established,
        Established,
        SynSent,
        Established,
        FinWait,
        TimeWait,
        Close,
        CloseWait,
        LastAck,
        Established,
        Established,
    ],
    [
        Close, Close, SynSent, Close, Close, TimeWait, Close, Close, Close, Close, Close,
    ],
];

const INPUT_ONLY: Table = [
    /*syn*/
    [
        SynRecv,
        Established,
        Established,
        SynRecv,
        SynRecv,
        SynRecv,
        SynRecv,
        SynRecv,
        SynRecv,
        SynRecv,
        SynRecv,
    ],
    /*fin*/
    [
        Close, FinWait, SynSent, TimeWait, FinWait, TimeWait, Close, CloseWait, LastAck, Listen,
        TimeWait,
    ],
    /*ack*/
    [
        Established,
        Established,
        SynSent,
        Established,
        FinWait,
        TimeWait,
        Close,
        CloseWait,
        Close,
        Listen,
        Established,
    ],
    /*rst*/
    [
        Close, Close, Close, SynRecv, Close, Close, Close, Close, LastAck, Listen, Close,
    ],
];

/// The state after a packet with `flags` (TCP header byte 13) seen in `direction`.
pub fn next_state(direction: Direction, state: TcpState, flags: u8) -> TcpState {
    use crate::wire::tcp::{ACK, FIN, RST, SYN};
    let row = if flags & RST != 0 {
        3
    } else if flags & SYN != 0 {
        0
    } else if flags & FIN != 0 {
        1
    } else if flags & ACK != 0 {
        2
    } else {
        return state;
    };
    let table = match direction {
        Direction::Input => &INPUT,
        Direction::Output => &OUTPUT,
        Direction::InputOnly => &INPUT_ONLY,
    };
    table[row][state as usize]
}

/// Per-state timeouts in milliseconds. Defaults are the kernel's `tcp_timeouts[]`;
/// `ipvsadm --set tcp tcpfin udp` changes ESTABLISHED, FIN_WAIT and UDP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_ms: [u32; 11],
    pub udp_ms: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        const S: u32 = 1000;
        Timeouts {
            tcp_ms: [
                2 * S,   // NONE
                900 * S, // ESTABLISHED
                120 * S, // SYN_SENT
                60 * S,  // SYN_RECV
                120 * S, // FIN_WAIT
                120 * S, // TIME_WAIT
                10 * S,  // CLOSE
                60 * S,  // CLOSE_WAIT
                30 * S,  // LAST_ACK
                120 * S, // LISTEN
                120 * S, // SYNACK
            ],
            udp_ms: 300 * S,
        }
    }
}

impl Timeouts {
    /// The defaults with ipvsadm's three settable values (`--set tcp tcpfin udp`, seconds):
    /// ESTABLISHED, FIN_WAIT and UDP.
    pub fn with_set(tcp_secs: u32, tcpfin_secs: u32, udp_secs: u32) -> Timeouts {
        let mut t = Timeouts::default();
        t.tcp_ms[TcpState::Established as usize] = tcp_secs.saturating_mul(1000);
        t.tcp_ms[TcpState::FinWait as usize] = tcpfin_secs.saturating_mul(1000);
        t.udp_ms = udp_secs.saturating_mul(1000);
        t
    }

    pub fn tcp(&self, s: TcpState) -> u32 {
        self.tcp_ms[s as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tcp::{ACK, FIN, RST, SYN};

    fn next(s: TcpState, f: u8) -> TcpState {
        next_state(Direction::InputOnly, s, f)
    }

    #[test]
    fn life_of_a_nat_connection_reaches_time_wait() {
        use Direction::{Input, Output};
        let s = next_state(Input, None, SYN);
        assert_eq!(s, SynRecv);
        let s = next_state(Output, s, SYN | ACK);
        assert_eq!(s, SynRecv);
        let s = next_state(Input, s, ACK);
        assert_eq!(s, Established);
        // The client closes first: its FIN makes CLOSE_WAIT (NAT), not FIN_WAIT (DR).
        let s = next_state(Input, s, FIN | ACK);
        assert_eq!(s, CloseWait);
        assert!(!s.is_active());
        // The server's FIN: TIME_WAIT, only NAT gets there.
        let s = next_state(Output, s, FIN | ACK);
        assert_eq!(s, TimeWait);
        assert_eq!(next_state(Input, s, ACK), TimeWait);
        // The server closes first.
        let s = next_state(Output, Established, FIN | ACK);
        assert_eq!(s, FinWait);
        assert_eq!(next_state(Input, s, FIN | ACK), TimeWait);
        // An RST in SYN_RECV from the client keeps SYN_RECV, from the server closes.
        assert_eq!(next_state(Input, SynRecv, RST), SynRecv);
        assert_eq!(next_state(Output, SynRecv, RST), Close);
    }

    #[test]
    fn life_of_a_dr_connection() {
        let s = next(None, SYN);
        assert_eq!(s, SynRecv);
        assert!(s.is_active());
        let s = next(s, ACK);
        assert_eq!(s, Established);
        let s = next(s, ACK | 0x08);
        assert_eq!(s, Established);
        let s = next(s, FIN | ACK);
        assert_eq!(s, FinWait);
        assert!(!s.is_active());
        assert_eq!(next(s, ACK), FinWait);
        assert_eq!(next(Established, RST), Close);
        assert_eq!(next(SynRecv, RST), SynRecv);
        assert_eq!(next(Established, 0), Established);
        assert_eq!(next(None, SYN | RST), Close);
    }

    #[test]
    fn default_timeouts_match_ipvsadm() {
        let t = Timeouts::default();
        assert_eq!(t.tcp(Established), 900_000);
        assert_eq!(t.tcp(FinWait), 120_000);
        assert_eq!(t.udp_ms, 300_000);
    }
}

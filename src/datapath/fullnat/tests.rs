use proptest::prelude::*;

use super::*;
use crate::wire::tcp;

#[test]
fn a_worker_owns_every_workers_th_port_and_hands_out_the_oldest_freed_first() {
    let mut w0 = PortPool::new(1024, 1040, 2, 0);
    let w1 = PortPool::new(1024, 1040, 2, 1);
    assert_eq!((w0.capacity(), w1.capacity()), (9, 8));
    let conn = FnatConn {
        client: 1,
        ..FnatConn::default()
    };
    let got: Vec<u16> = (0..9).map(|_| w0.allocate(conn).unwrap()).collect();
    assert_eq!(
        got,
        vec![1024, 1026, 1028, 1030, 1032, 1034, 1036, 1038, 1040]
    );
    assert!(
        got.iter().all(|p| p % 2 == 0),
        "worker 0 owns the even ports"
    );
    assert_eq!(w0.allocate(conn), None, "exhausted");
    assert_eq!(w0.in_use(), 9);
    w0.release(1030);
    w0.release(1024);
    w0.release(1024); // twice: ignored
    w0.release(1025); // not this worker's
    assert_eq!(w0.in_use(), 7);
    assert_eq!(w0.allocate(conn), Some(1030), "oldest freed first");
    assert_eq!(w0.allocate(conn), Some(1024));
    assert!(w0.conn(1030).is_some_and(|c| c.in_use && c.client == 1));
    assert!(w0.conn(1031).is_none());
    assert!(w0.conn(60000).is_none());
    assert!(w1.conn(1025).is_none(), "free");
    // Ranges that do not start on the worker's residue, and one worker.
    let p = PortPool::new(1001, 1010, 4, 2);
    let mut q = p;
    let ports: Vec<u16> = std::iter::from_fn(|| q.allocate(conn)).collect();
    assert_eq!(ports, vec![1002, 1006, 1010]);
    assert_eq!(PortPool::new(10, 20, 1, 0).capacity(), 11);
}

/// A TCP segment's checksum over a pseudo-header, verified.
fn valid(seg: &[u8]) -> bool {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2, 0, 6]);
    pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    csum::fold(csum::sum(seg, csum::sum(&pseudo, 0))) == 0xffff
}

fn seal(seg: &mut [u8]) {
    seg[16..18].fill(0);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2, 0, 6]);
    pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    let c = !csum::fold(csum::sum(seg, csum::sum(&pseudo, 0)));
    seg[16..18].copy_from_slice(&c.to_be_bytes());
}

/// A TCP header with `flags`, seq/ack, and `opts` (padded to 4 bytes), plus `payload`.
fn segment(flags: u8, seq: u32, ack: u32, opts: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut o = opts.to_vec();
    while o.len() % 4 != 0 {
        o.push(OPT_NOP);
    }
    let mut s = vec![0u8; 20];
    s[0..2].copy_from_slice(&40000u16.to_be_bytes());
    s[2..4].copy_from_slice(&80u16.to_be_bytes());
    s[4..8].copy_from_slice(&seq.to_be_bytes());
    s[8..12].copy_from_slice(&ack.to_be_bytes());
    s[12] = (((20 + o.len()) / 4) as u8) << 4;
    s[13] = flags;
    s[14..16].copy_from_slice(&64240u16.to_be_bytes());
    s.extend(o);
    s.extend_from_slice(payload);
    seal(&mut s);
    s
}

const SYN_OPTS: [u8; 20] = [
    2, 4, 0x05, 0xb4, // MSS 1460
    4, 2, // SACK permitted
    8, 10, 1, 2, 3, 4, 0, 0, 0, 0, // timestamps
    1, // NOP
    3, 3, 7, // window scale 7
];

#[test]
fn the_syn_loses_its_timestamps_and_keeps_its_other_options() {
    let mut s = segment(tcp::SYN, 1000, 0, &SYN_OPTS, &[]);
    rewrite_to_real(&mut s, 28, Checksum::Full);
    assert!(valid(&s));
    assert_eq!(be32(&s, 4), 1000, "a SYN keeps its ISN");
    assert_eq!(&s[20..26], &SYN_OPTS[..6], "MSS, SACK permitted");
    assert_eq!(&s[26..36], &[OPT_NOP; 10], "timestamps gone");
    assert_eq!(&s[36..40], &SYN_OPTS[16..20], "window scale");
    // Partial checksum: the same bytes, the field untouched.
    let mut p = segment(tcp::SYN, 1000, 0, &SYN_OPTS, &[]);
    let field = [p[16], p[17]];
    rewrite_to_real(&mut p, 28, Checksum::Partial);
    assert_eq!(&p[26..36], &[OPT_NOP; 10]);
    assert_eq!([p[16], p[17]], field);
}

#[test]
fn client_bytes_move_up_by_the_header_and_the_reals_acks_move_back() {
    let conn = FnatConn {
        in_use: true,
        client_isn: 1000,
        delta: 28,
        ..FnatConn::default()
    };
    let mut data = segment(tcp::ACK, 1001, 5001, &[], b"GET / HTTP/1.1\r\n\r\n");
    rewrite_to_real(&mut data, conn.delta, Checksum::Full);
    assert_eq!(be32(&data, 4), 1029);
    assert!(valid(&data));

    // The real acknowledges the header and 18 client bytes, and SACKs a later block.
    let sack = [
        1, 1, 5, 10, 0, 0, 0x04, 0x4d, 0, 0, 0x04, 0x61, // SACK 1101..1121
    ];
    let mut reply = segment(tcp::ACK, 5001, 1047, &sack, &[]);
    rewrite_to_client(&mut reply, &conn, Checksum::Full);
    assert!(valid(&reply));
    assert_eq!(be32(&reply, 8), 1019, "1047 - 28");
    assert_eq!(be32(&reply, 24), 1101 - 28);
    assert_eq!(be32(&reply, 28), 1121 - 28);

    // Inside the header (the real has not got all of it): the client's first byte.
    let mut partial = segment(tcp::ACK, 5001, 1010, &[], &[]);
    rewrite_to_client(&mut partial, &conn, Checksum::Full);
    assert_eq!(be32(&partial, 8), 1001);
    assert!(!conn.acks_header(1010) && conn.acks_header(1029) && !conn.acks_header(1001));
    // The SYN-ACK acknowledges the SYN only.
    let mut syn_ack = segment(tcp::SYN | tcp::ACK, 5000, 1001, &[], &[]);
    rewrite_to_client(&mut syn_ack, &conn, Checksum::Full);
    assert_eq!(be32(&syn_ack, 8), 1001);
    assert!(valid(&syn_ack));
}

#[test]
fn sequence_numbers_wrap() {
    let conn = FnatConn {
        in_use: true,
        client_isn: u32::MAX - 10,
        delta: 107,
        ..FnatConn::default()
    };
    let first = conn.client_isn.wrapping_add(1);
    assert_eq!(
        conn.ack_to_client(first.wrapping_add(107 + 5)),
        first.wrapping_add(5)
    );
    assert_eq!(conn.ack_to_client(first.wrapping_add(50)), first);
    let mut s = segment(tcp::ACK, first, 1, &[], &[]);
    rewrite_to_real(&mut s, 107, Checksum::Full);
    assert_eq!(be32(&s, 4), first.wrapping_add(107));
    assert!(valid(&s));
}

proptest! {
    /// Any option bytes: no panic, and a complete checksum stays valid.
    #[test]
    fn any_options_are_walked_safely(opts in proptest::collection::vec(any::<u8>(), 0..40),
                                     flags in any::<u8>(), delta in any::<u32>()) {
        let mut s = segment(flags, 7, 9, &opts, b"x");
        rewrite_to_real(&mut s, delta, Checksum::Full);
        prop_assert!(valid(&s));
        let conn = FnatConn { in_use: true, client_isn: 3, delta, ..FnatConn::default() };
        let mut r = segment(flags, 7, 9, &opts, b"y");
        rewrite_to_client(&mut r, &conn, Checksum::Full);
        prop_assert!(valid(&r));
    }
}

//! Keeps the director's own kernel off service traffic.
//!
//! AF_PACKET taps see a frame before the kernel's IP stack does, and the kernel processes it
//! too: with the VIP configured on the director (tutorials put it on `ens33:0` or `lo`, the
//! kernel's IPVS selftest on `lo`) it answers the client's SYN with RST; with `ip_forward=1` it
//! forwards a duplicate. uvs therefore installs nftables tables of its own:
//! - `netdev uvs`, an ingress chain per served interface that drops, before the IP stack,
//!   TCP/UDP to a configured VIP:port (uvs forwards those) and IP fragments to a VIP (uvs does
//!   not reassemble; see `DropReason::Fragment`);
//! - `arp uvs`, an ARP input chain that drops ARP requests for a VIP arriving on a served
//!   interface (uvs answers them; the kernel must not answer a second time).
//!
//! The netdev ingress hook runs after the packet taps, so uvs and tcpdump still see every
//! frame. Everything else (the director's own traffic, other ports on the VIP) is untouched.
//!
//! The ingress chain runs for every frame on the generator's (the sender's) CPU, so it is kept
//! short: the service rule comes first (the common case stops at its first match), and ARP is
//! judged in the ARP family's hook instead, which only ARP frames reach. That is also why uvs's
//! ARP socket can be bound to `ETH_P_ARP`: ARP protocol handlers run after the ingress hook
//! but before `arp_rcv`'s own input hook, so the socket sees the requests the kernel then drops.
//!
//! The rules match against sets: `services` holds (VIP, protocol, port) keys, one lookup of
//! `ip daddr . meta l4proto . th dport` (bench/README measured it as cheap as a rule per
//! service), each element with its own counter; `vips` holds the VIPs for the fragment and
//! ARP rules. A change of services adds and removes elements in one small transaction; the
//! rules themselves never change while uvs runs.
//!
//! With a VIP MAC (`[arp] vip_mac`) clients address service traffic to a MAC the director's
//! kernel does not own: `ip_rcv` drops such a frame (`PACKET_OTHERHOST`) before any hook, so
//! no per-frame rule is needed at all. The service rules then move to `ip uvs`, a prerouting
//! chain that only frames addressed to the interface itself reach (a client with a stale
//! neighbour entry, a static one): uvs forwards those too, and the kernel must still not.
//! With the ingress chain gone, the sending CPU no longer evaluates a rule per frame — what
//! bench/ measured as the largest per-frame cost uvs added outside its own thread.
//!
//! Masquerading reals route their replies through the director, and a NAT director has
//! `ip_forward=1` (the tutorials set it): the kernel would forward each raw reply (from the
//! real's address) beside the one uvs rewrites, and the client would answer the stranger with
//! a reset. So the same chains also drop what comes from a masquerading real's service port
//! (the `nat_replies` set, keyed like `services`) or is an ICMP error about such a reply,
//! unless it goes to one of the director's own addresses (`locals`): the director's health
//! checks and an operator's connections to a real are the kernel's. The reals' other traffic
//! (other source ports) is routed by the kernel as usual.
//!
//! FullNAT reals answer a local address (the `laddrs` set), often the director's own: the
//! kernel would reset every reply to a port it has no socket on. So the chains also drop what
//! comes from a FullNAT real's service port to a local address on one of uvs's local ports;
//! the director's own connections from that address use the kernel's ephemeral ports, outside
//! uvs's range, and stay the kernel's.
//!
//! The tables are owned by uvs's netlink socket (`io::nftables`): the kernel deletes them when
//! the process ends, however it ends. A new start removes the unowned tables a uvs from before
//! owner tables may have left, in the same transaction that installs its own.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::io::nftables::{
    Batch, ByteOrder, CmpOp, Expr, Family, Hook, MetaKey, NfSocket, NftError, PayloadBase, SetRef,
    SetSpec, TableInfo, datatype, reg,
};
use crate::model::ServiceKey;

pub const TABLE: &str = "uvs";
const SERVICES: &str = "services";
const VIPS: &str = "vips";
const NAT_REPLIES: &str = "nat_replies";
const LOCALS: &str = "locals";
const LADDRS: &str = "laddrs";
/// Before conntrack's defragmentation (-400), so fragments are seen as they came.
const PRIORITY: i32 = -500;
/// Every family a uvs table has ever been created in.
const FAMILIES: [Family; 3] = [Family::Netdev, Family::Ip, Family::Arp];

#[derive(Debug, thiserror::Error)]
pub enum KernelFilterError {
    #[error(
        "cannot talk to nf_tables ({0}); uvs needs CAP_NET_ADMIN and a kernel with nftables, or set kernel_filter = false and keep the director's kernel off the VIP yourself"
    )]
    Unavailable(NftError),
    #[error(
        "the nftables table {0} {TABLE} belongs to another running process (another uvs in this network namespace?)"
    )]
    OwnedElsewhere(&'static str),
    #[error("{0}")]
    Rejected(NftError),
}

/// Where the service rules hook in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceHook {
    /// `netdev` ingress, per interface: every frame, before the IP stack (the VIPs are
    /// answered with the interface MAC, so service frames are addressed to the kernel).
    Ingress,
    /// `ip` prerouting: only frames the IP stack accepts as addressed to this host (the VIPs
    /// are answered with a VIP MAC the kernel does not own).
    Prerouting,
}

impl ServiceHook {
    fn family(self) -> Family {
        match self {
            ServiceHook::Ingress => Family::Netdev,
            ServiceHook::Prerouting => Family::Ip,
        }
    }
}

/// A `services` key: `ipv4_addr . inet_proto . inet_service`, each part in a 4-byte register
/// of its own (the protocol in its first byte, the port big-endian in its first two).
type Key = (Ipv4Addr, u8, u16);

fn key_of(s: &ServiceKey) -> Key {
    (s.vip, s.proto.number(), s.port)
}

fn service_bytes(&(vip, proto, port): &Key) -> Vec<u8> {
    let mut b = vec![0u8; 12];
    b[..4].copy_from_slice(&vip.octets());
    b[4] = proto;
    b[8..10].copy_from_slice(&port.to_be_bytes());
    b
}

fn vip_bytes(vip: &Ipv4Addr) -> Vec<u8> {
    vip.octets().to_vec()
}

/// An interface name as `meta iifname` loads it: IFNAMSIZ bytes, zero-padded.
fn ifname_bytes(name: &str) -> Vec<u8> {
    let mut b = name.as_bytes().to_vec();
    b.resize(16, 0);
    b
}

const ETH_P_IP: [u8; 2] = [0x08, 0x00];
const ARPOP_REQUEST: [u8; 2] = [0x00, 0x01];
/// The IPv4 header's flags-and-offset field without DF: MF or a non-zero offset.
const FRAGMENT_MASK: [u8; 2] = [0x3f, 0xff];

/// The expressions that select IPv4 from a served interface: a netdev chain is per interface
/// but sees every ethertype; the ip chain sees only IPv4 but from every interface.
fn ipv4_on<'a>(interfaces: Option<&'a SetRef>) -> Vec<Expr<'a>> {
    match interfaces {
        None => vec![
            Expr::Meta {
                key: MetaKey::Protocol,
                dreg: reg::R1,
            },
            Expr::Cmp {
                sreg: reg::R1,
                op: CmpOp::Eq,
                data: &ETH_P_IP,
            },
        ],
        Some(set) => vec![
            Expr::Meta {
                key: MetaKey::Iifname,
                dreg: reg::R1,
            },
            Expr::Lookup { sreg: reg::R1, set },
        ],
    }
}

/// `ip daddr . meta l4proto . th dport @services drop`. A non-first fragment has no transport
/// header, so `th dport` loads nothing and it falls through to the fragment rule.
fn service_rule<'a>(interfaces: Option<&'a SetRef>, services: &'a SetRef) -> Vec<Expr<'a>> {
    let mut e = ipv4_on(interfaces);
    e.extend([
        Expr::Payload {
            base: PayloadBase::Network,
            offset: 16,
            len: 4,
            dreg: reg::R1,
        },
        Expr::Meta {
            key: MetaKey::L4Proto,
            dreg: reg::R32_01,
        },
        Expr::Payload {
            base: PayloadBase::Transport,
            offset: 2,
            len: 2,
            dreg: reg::R32_02,
        },
        Expr::Lookup {
            sreg: reg::R1,
            set: services,
        },
        Expr::Drop,
    ]);
    e
}

/// `ip saddr . meta l4proto . th sport @nat_replies ip daddr != @locals counter drop`.
fn nat_reply_rule<'a>(
    interfaces: Option<&'a SetRef>,
    sets: (&'a SetRef, &'a SetRef),
) -> Vec<Expr<'a>> {
    let (replies, locals) = sets;
    let mut e = ipv4_on(interfaces);
    e.extend([
        Expr::Payload {
            base: PayloadBase::Network,
            offset: 12,
            len: 4,
            dreg: reg::R1,
        },
        Expr::Meta {
            key: MetaKey::L4Proto,
            dreg: reg::R32_01,
        },
        Expr::Payload {
            base: PayloadBase::Transport,
            offset: 0,
            len: 2,
            dreg: reg::R32_02,
        },
        Expr::Lookup {
            sreg: reg::R1,
            set: replies,
        },
    ]);
    e.extend(not_to_the_director(locals));
    e
}

/// `meta l4proto icmp ip saddr . @th,136,8 . @th,240,16 @nat_replies ip daddr != @locals
/// counter drop`: an ICMP error a masquerading real sends about a packet it received on its
/// service port (the quoted packet's protocol and destination port, its IP header taken to
/// be 20 bytes).
fn nat_icmp_rule<'a>(
    interfaces: Option<&'a SetRef>,
    sets: (&'a SetRef, &'a SetRef),
) -> Vec<Expr<'a>> {
    let (replies, locals) = sets;
    let mut e = ipv4_on(interfaces);
    e.extend([
        Expr::Meta {
            key: MetaKey::L4Proto,
            dreg: reg::R1,
        },
        Expr::Cmp {
            sreg: reg::R1,
            op: CmpOp::Eq,
            data: &[IPPROTO_ICMP],
        },
        Expr::Payload {
            base: PayloadBase::Network,
            offset: 12,
            len: 4,
            dreg: reg::R1,
        },
        Expr::Payload {
            base: PayloadBase::Transport,
            offset: 8 + 9,
            len: 1,
            dreg: reg::R32_01,
        },
        Expr::Payload {
            base: PayloadBase::Transport,
            offset: 8 + 22,
            len: 2,
            dreg: reg::R32_02,
        },
        Expr::Lookup {
            sreg: reg::R1,
            set: replies,
        },
    ]);
    e.extend(not_to_the_director(locals));
    e
}

/// `ip saddr . meta l4proto . th sport @nat_replies ip daddr @laddrs th dport LO-HI counter
/// drop`: a FullNAT real's reply to one of uvs's local ports (`ports`: LO and HI, big-endian).
fn fullnat_reply_rule<'a>(
    interfaces: Option<&'a SetRef>,
    sets: (&'a SetRef, &'a SetRef),
    ports: &'a [[u8; 2]; 2],
) -> Vec<Expr<'a>> {
    let (replies, laddrs) = sets;
    let mut e = ipv4_on(interfaces);
    e.extend([
        Expr::Payload {
            base: PayloadBase::Network,
            offset: 12,
            len: 4,
            dreg: reg::R1,
        },
        Expr::Meta {
            key: MetaKey::L4Proto,
            dreg: reg::R32_01,
        },
        Expr::Payload {
            base: PayloadBase::Transport,
            offset: 0,
            len: 2,
            dreg: reg::R32_02,
        },
        Expr::Lookup {
            sreg: reg::R1,
            set: replies,
        },
        Expr::Payload {
            base: PayloadBase::Network,
            offset: 16,
            len: 4,
            dreg: reg::R1,
        },
        Expr::Lookup {
            sreg: reg::R1,
            set: laddrs,
        },
        Expr::Payload {
            base: PayloadBase::Transport,
            offset: 2,
            len: 2,
            dreg: reg::R1,
        },
        Expr::Cmp {
            sreg: reg::R1,
            op: CmpOp::Gte,
            data: &ports[0],
        },
        Expr::Cmp {
            sreg: reg::R1,
            op: CmpOp::Lte,
            data: &ports[1],
        },
        Expr::Counter,
        Expr::Drop,
    ]);
    e
}

/// `ip daddr != @locals counter drop`.
fn not_to_the_director(locals: &SetRef) -> [Expr<'_>; 4] {
    [
        Expr::Payload {
            base: PayloadBase::Network,
            offset: 16,
            len: 4,
            dreg: reg::R1,
        },
        Expr::NotIn {
            sreg: reg::R1,
            set: locals,
        },
        Expr::Counter,
        Expr::Drop,
    ]
}

const IPPROTO_ICMP: u8 = 1;

/// `ip daddr @vips ip frag-off & 0x3fff != 0 counter drop`.
fn fragment_rule<'a>(interfaces: Option<&'a SetRef>, vips: &'a SetRef) -> Vec<Expr<'a>> {
    let mut e = ipv4_on(interfaces);
    e.extend([
        Expr::Payload {
            base: PayloadBase::Network,
            offset: 16,
            len: 4,
            dreg: reg::R1,
        },
        Expr::Lookup {
            sreg: reg::R1,
            set: vips,
        },
        Expr::Payload {
            base: PayloadBase::Network,
            offset: 6,
            len: 2,
            dreg: reg::R1,
        },
        Expr::Bitwise {
            sreg: reg::R1,
            dreg: reg::R1,
            mask: &FRAGMENT_MASK,
            xor: &[0, 0],
        },
        Expr::Cmp {
            sreg: reg::R1,
            op: CmpOp::Neq,
            data: &[0, 0],
        },
        Expr::Counter,
        Expr::Drop,
    ]);
    e
}

/// `iifname { … } arp operation request arp daddr ip @vips counter drop`.
fn arp_rule<'a>(interfaces: &'a SetRef, vips: &'a SetRef) -> Vec<Expr<'a>> {
    vec![
        Expr::Meta {
            key: MetaKey::Iifname,
            dreg: reg::R1,
        },
        Expr::Lookup {
            sreg: reg::R1,
            set: interfaces,
        },
        Expr::Payload {
            base: PayloadBase::Network,
            offset: 6,
            len: 2,
            dreg: reg::R1,
        },
        Expr::Cmp {
            sreg: reg::R1,
            op: CmpOp::Eq,
            data: &ARPOP_REQUEST,
        },
        // The target protocol address, after two 6-byte hardware and two 4-byte addresses'
        // worth of Ethernet/IPv4 ARP (as nft's `arp daddr ip` reads it).
        Expr::Payload {
            base: PayloadBase::Network,
            offset: 24,
            len: 4,
            dreg: reg::R1,
        },
        Expr::Lookup {
            sreg: reg::R1,
            set: vips,
        },
        Expr::Counter,
        Expr::Drop,
    ]
}

/// A service-rule builder: the served-interface set (none in a per-device chain), the set the
/// rule looks up.
type RuleFn = for<'a> fn(Option<&'a SetRef>, &'a SetRef) -> Vec<Expr<'a>>;
/// A NAT-reply rule builder: the served-interface set, and the `nat_replies` and `locals` sets.
type NatRuleFn = for<'a> fn(Option<&'a SetRef>, (&'a SetRef, &'a SetRef)) -> Vec<Expr<'a>>;

fn services_spec() -> SetSpec<'static> {
    SetSpec {
        name: SERVICES,
        key_type: datatype::concat(&[
            datatype::IPV4_ADDR,
            datatype::INET_PROTOCOL,
            datatype::INET_SERVICE,
        ]),
        key_len: 12,
        byte_order: ByteOrder::Mixed,
        counters: true,
    }
}

fn vips_spec() -> SetSpec<'static> {
    addr_set(VIPS)
}

fn addr_set(name: &'static str) -> SetSpec<'static> {
    SetSpec {
        name,
        key_type: datatype::IPV4_ADDR,
        key_len: 4,
        byte_order: ByteOrder::Big,
        counters: false,
    }
}

fn nat_replies_spec() -> SetSpec<'static> {
    SetSpec {
        name: NAT_REPLIES,
        ..services_spec()
    }
}

/// The whole installation, as one transaction: first every `uvs` table there may be (an
/// earlier uvs's, of either hook) goes, then ours come, sets before the rules that use them.
fn install_batch(interfaces: &[String], hook: ServiceHook, w: &Wanted) -> Batch {
    let mut b = Batch::new();
    // Declaring a table first makes the deletion succeed whether or not it exists.
    for f in FAMILIES {
        b.declare_table(f, TABLE);
        b.delete_table(f, TABLE);
    }
    let service_keys: Vec<Vec<u8>> = w.services.iter().map(service_bytes).collect();
    let vip_keys: Vec<Vec<u8>> = w.vips.iter().map(vip_bytes).collect();
    let reply_keys: Vec<Vec<u8>> = w.nat_replies.iter().map(service_bytes).collect();
    let local_keys: Vec<Vec<u8>> = w.locals.iter().map(vip_bytes).collect();
    let laddr_keys: Vec<Vec<u8>> = w.laddrs.iter().map(vip_bytes).collect();
    let fullnat_ports = [
        w.fullnat_ports.0.to_be_bytes(),
        w.fullnat_ports.1.to_be_bytes(),
    ];
    let ifnames: Vec<Vec<u8>> = interfaces.iter().map(|i| ifname_bytes(i)).collect();

    let fam = hook.family();
    b.add_owned_table(fam, TABLE);
    let svc_set = b.add_set(fam, TABLE, &services_spec());
    b.add_elements(fam, TABLE, &svc_set, &service_keys);
    let vip_set = b.add_set(fam, TABLE, &vips_spec());
    b.add_elements(fam, TABLE, &vip_set, &vip_keys);
    b.add_owned_table(Family::Arp, TABLE);
    let arp_vips = b.add_set(Family::Arp, TABLE, &vips_spec());
    b.add_elements(Family::Arp, TABLE, &arp_vips, &vip_keys);

    // Each chain in hook order; in a chain, services first: a forwarded frame is the common
    // case.
    let served = |b: &mut Batch, f: Family| -> Option<SetRef> {
        (!ifnames.is_empty()).then(|| {
            // Anonymous: it lives with the one rule that uses it.
            b.add_anonymous_set(f, TABLE, datatype::IFNAME, 16, ByteOrder::Host, &ifnames)
        })
    };
    let chains: Vec<(String, Option<&str>)> = match hook {
        ServiceHook::Ingress => interfaces
            .iter()
            .enumerate()
            .map(|(i, ifname)| (format!("ingress_{i}"), Some(ifname.as_str())))
            .collect(),
        ServiceHook::Prerouting => vec![("prerouting".to_string(), None)],
    };
    for (chain, device) in &chains {
        b.add_base_chain(
            fam,
            TABLE,
            chain,
            &Hook {
                // NF_NETDEV_INGRESS, NF_INET_PRE_ROUTING
                num: 0,
                priority: PRIORITY,
                device: *device,
            },
        );
        let rules: [(RuleFn, &SetRef, &str); 2] = [
            (service_rule, &svc_set, "forwarded by uvs"),
            (fragment_rule, &vip_set, "fragment to a VIP"),
        ];
        // A netdev chain serves its own device; the ip chain every served interface.
        let on = |b: &mut Batch| match device {
            Some(_) => Some(None),
            None => served(b, fam).map(Some),
        };
        for (rule, set, comment) in rules {
            let Some(on) = on(&mut b) else { continue };
            b.add_rule(fam, TABLE, chain, &rule(on.as_ref(), set), comment);
        }
    }

    b.add_base_chain(
        Family::Arp,
        TABLE,
        "input",
        &Hook {
            // NF_ARP_IN
            num: 0,
            priority: PRIORITY,
            device: None,
        },
    );
    if let Some(on) = served(&mut b, Family::Arp) {
        let rule = arp_rule(&on, &arp_vips);
        b.add_rule(Family::Arp, TABLE, "input", &rule, "answered by uvs");
    }

    // The NAT rules last, appended to the service chains (so everything above is built as nft
    // builds it, set ids included).
    let reply_set = b.add_set(fam, TABLE, &nat_replies_spec());
    b.add_elements(fam, TABLE, &reply_set, &reply_keys);
    let local_set = b.add_set(fam, TABLE, &addr_set(LOCALS));
    b.add_elements(fam, TABLE, &local_set, &local_keys);
    let laddr_set = b.add_set(fam, TABLE, &addr_set(LADDRS));
    b.add_elements(fam, TABLE, &laddr_set, &laddr_keys);
    for (chain, device) in &chains {
        let nat: [(NatRuleFn, &str); 2] = [
            (nat_reply_rule, "a reply uvs rewrites"),
            (nat_icmp_rule, "ICMP about a reply uvs rewrites"),
        ];
        for (rule, comment) in nat {
            let on = match device {
                Some(_) => None,
                None => match served(&mut b, fam) {
                    Some(on) => Some(on),
                    None => continue,
                },
            };
            let sets = (&reply_set, &local_set);
            b.add_rule(fam, TABLE, chain, &rule(on.as_ref(), sets), comment);
        }
        let on = match device {
            Some(_) => None,
            None => match served(&mut b, fam) {
                Some(on) => Some(on),
                None => continue,
            },
        };
        let rule = fullnat_reply_rule(on.as_ref(), (&reply_set, &laddr_set), &fullnat_ports);
        b.add_rule(fam, TABLE, chain, &rule, "a FullNAT reply uvs rewrites");
    }
    b
}

/// The element changes that take the sets from `old` to `new`, as one transaction (empty
/// when nothing changes).
fn update_batch(hook: ServiceHook, old: &Wanted, new: &Wanted) -> Batch {
    let mut b = Batch::new();
    let fam = hook.family();
    fn change<T: Ord>(
        b: &mut Batch,
        f: Family,
        set: &str,
        old: &BTreeSet<T>,
        new: &BTreeSet<T>,
        bytes: fn(&T) -> Vec<u8>,
    ) {
        let set = SetRef::existing(set);
        let gone: Vec<Vec<u8>> = old.difference(new).map(bytes).collect();
        let added: Vec<Vec<u8>> = new.difference(old).map(bytes).collect();
        b.delete_elements(f, TABLE, &set, &gone);
        b.add_elements(f, TABLE, &set, &added);
    }
    change(
        &mut b,
        fam,
        SERVICES,
        &old.services,
        &new.services,
        service_bytes,
    );
    for f in [fam, Family::Arp] {
        change(&mut b, f, VIPS, &old.vips, &new.vips, vip_bytes);
    }
    change(
        &mut b,
        fam,
        NAT_REPLIES,
        &old.nat_replies,
        &new.nat_replies,
        service_bytes,
    );
    change(&mut b, fam, LOCALS, &old.locals, &new.locals, vip_bytes);
    change(&mut b, fam, LADDRS, &old.laddrs, &new.laddrs, vip_bytes);
    b
}

/// What the sets hold.
#[derive(Debug, Default, PartialEq, Eq)]
struct Wanted {
    services: BTreeSet<Key>,
    vips: BTreeSet<Ipv4Addr>,
    nat_replies: BTreeSet<Key>,
    locals: BTreeSet<Ipv4Addr>,
    laddrs: BTreeSet<Ipv4Addr>,
    /// Fixed while uvs runs (installed with the rules).
    fullnat_ports: (u16, u16),
}

/// What the director's kernel must be kept off.
#[derive(Clone, Copy, Debug)]
pub struct Filtered<'a> {
    /// The expanded (protocol, VIP, port) keys uvs forwards.
    pub services: &'a [ServiceKey],
    /// (protocol, real address, port) of the masquerading reals' replies.
    pub nat_replies: &'a [ServiceKey],
    /// The director's own addresses.
    pub locals: &'a [u32],
    /// FullNAT local addresses, and the ports uvs hands out on them.
    pub laddrs: &'a [u32],
    pub fullnat_ports: (u16, u16),
}

fn wanted(f: &Filtered<'_>) -> Wanted {
    let services: BTreeSet<Key> = f.services.iter().map(key_of).collect();
    let vips = services.iter().map(|k| k.0).collect();
    Wanted {
        services,
        vips,
        nat_replies: f.nat_replies.iter().map(key_of).collect(),
        locals: f.locals.iter().map(|a| Ipv4Addr::from(*a)).collect(),
        laddrs: f.laddrs.iter().map(|a| Ipv4Addr::from(*a)).collect(),
        fullnat_ports: f.fullnat_ports,
    }
}

/// uvs's tables in the kernel; they go when this is dropped or the process ends.
#[derive(Debug)]
pub struct KernelFilter {
    sock: NfSocket,
    hook: ServiceHook,
    sets: Wanted,
}

impl KernelFilter {
    /// Removes the tables an earlier instance left (if any) and installs ours, in one
    /// transaction.
    pub fn install(
        interfaces: &[String],
        filtered: &Filtered<'_>,
        hook: ServiceHook,
    ) -> Result<KernelFilter, KernelFilterError> {
        let mut sock = NfSocket::open().map_err(KernelFilterError::Unavailable)?;
        for t in uvs_tables(&mut sock)? {
            let family = t.family().map_or("?", Family::name);
            if t.is_owned() {
                return Err(KernelFilterError::OwnedElsewhere(family));
            }
            log::info!("replacing the nftables table {family} {TABLE} an earlier uvs left behind");
        }
        let sets = wanted(filtered);
        sock.commit(&install_batch(interfaces, hook, &sets))
            .map_err(KernelFilterError::Rejected)?;
        Ok(KernelFilter { sock, hook, sets })
    }

    /// Brings the sets to `filtered`: only the elements that change, in one transaction;
    /// nothing is sent when none does. On an error the kernel and this filter keep the
    /// previous sets.
    pub fn update(&mut self, filtered: &Filtered<'_>) -> Result<(), KernelFilterError> {
        let sets = wanted(filtered);
        let batch = update_batch(self.hook, &self.sets, &sets);
        if batch.is_empty() {
            return Ok(());
        }
        self.sock
            .commit(&batch)
            .map_err(KernelFilterError::Rejected)?;
        self.sets = sets;
        Ok(())
    }
}

/// A change of what the director's kernel must be kept off, element by element: what a
/// publication that touched a few services sends, whatever the number of services.
#[derive(Clone, Copy, Debug)]
pub struct FilterDelta<'a> {
    pub services_added: &'a [ServiceKey],
    pub services_removed: &'a [ServiceKey],
    /// Every VIP (sorted); compared with the installed ones.
    pub vips: &'a [Ipv4Addr],
    pub nat_replies_added: &'a [ServiceKey],
    pub nat_replies_removed: &'a [ServiceKey],
    /// The director's own addresses (a handful; compared whole).
    pub locals: &'a [u32],
    /// FullNAT local addresses (at most a few hundred; compared whole).
    pub laddrs: &'a [u32],
}

/// `set` with `gone` removed and `added` inserted.
fn patch<T: Ord + Copy>(set: &mut BTreeSet<T>, gone: &BTreeSet<T>, added: &BTreeSet<T>) {
    for k in gone {
        set.remove(k);
    }
    set.extend(added.iter().copied());
}

impl KernelFilter {
    /// Applies `delta`: one transaction with only the elements that change (nothing is sent
    /// when none does), costing what changes rather than what the sets hold. On an error the
    /// kernel and this filter keep the previous sets.
    pub fn apply(&mut self, delta: &FilterDelta<'_>) -> Result<(), KernelFilterError> {
        let keys = |v: &[ServiceKey]| -> BTreeSet<Key> { v.iter().map(key_of).collect() };
        let (svc_gone, svc_new) = {
            let (gone, new) = (keys(delta.services_removed), keys(delta.services_added));
            let gone: BTreeSet<Key> = gone
                .difference(&new)
                .filter(|k| self.sets.services.contains(k))
                .copied()
                .collect();
            let new: BTreeSet<Key> = new
                .iter()
                .filter(|k| !self.sets.services.contains(k))
                .copied()
                .collect();
            (gone, new)
        };
        let (nat_gone, nat_new) = {
            let (gone, new) = (
                keys(delta.nat_replies_removed),
                keys(delta.nat_replies_added),
            );
            let gone: BTreeSet<Key> = gone
                .difference(&new)
                .filter(|k| self.sets.nat_replies.contains(k))
                .copied()
                .collect();
            let new: BTreeSet<Key> = new
                .iter()
                .filter(|k| !self.sets.nat_replies.contains(k))
                .copied()
                .collect();
            (gone, new)
        };
        let vips: BTreeSet<Ipv4Addr> = delta.vips.iter().copied().collect();
        let locals: BTreeSet<Ipv4Addr> = delta.locals.iter().map(|a| Ipv4Addr::from(*a)).collect();
        let vips_gone = self.sets.vips.difference(&vips).copied().collect();
        let vips_new = vips.difference(&self.sets.vips).copied().collect();
        let locals_gone = self.sets.locals.difference(&locals).copied().collect();
        let locals_new = locals.difference(&self.sets.locals).copied().collect();
        let laddrs: BTreeSet<Ipv4Addr> = delta.laddrs.iter().map(|a| Ipv4Addr::from(*a)).collect();
        let laddrs_gone = self.sets.laddrs.difference(&laddrs).copied().collect();
        let laddrs_new = laddrs.difference(&self.sets.laddrs).copied().collect();
        // `update_batch` sends old − new and new − old: given disjoint sets, exactly these.
        let old = Wanted {
            services: svc_gone,
            vips: vips_gone,
            nat_replies: nat_gone,
            locals: locals_gone,
            laddrs: laddrs_gone,
            fullnat_ports: self.sets.fullnat_ports,
        };
        let new = Wanted {
            services: svc_new,
            vips: vips_new,
            nat_replies: nat_new,
            locals: locals_new,
            laddrs: laddrs_new,
            fullnat_ports: self.sets.fullnat_ports,
        };
        let batch = update_batch(self.hook, &old, &new);
        if batch.is_empty() {
            return Ok(());
        }
        self.sock
            .commit(&batch)
            .map_err(KernelFilterError::Rejected)?;
        patch(&mut self.sets.services, &old.services, &new.services);
        patch(&mut self.sets.vips, &old.vips, &new.vips);
        patch(
            &mut self.sets.nat_replies,
            &old.nat_replies,
            &new.nat_replies,
        );
        patch(&mut self.sets.locals, &old.locals, &new.locals);
        patch(&mut self.sets.laddrs, &old.laddrs, &new.laddrs);
        Ok(())
    }
}

impl Drop for KernelFilter {
    fn drop(&mut self) {
        // Closing the socket would delete the tables too; deleting them first reports a
        // failure instead of hiding it.
        let mut b = Batch::new();
        b.delete_table(self.hook.family(), TABLE);
        b.delete_table(Family::Arp, TABLE);
        if let Err(e) = self.sock.commit(&b) {
            log::warn!(
                "could not remove the nftables tables {TABLE} (the kernel removes them as uvs exits): {e}"
            );
        }
    }
}

fn uvs_tables(sock: &mut NfSocket) -> Result<Vec<TableInfo>, KernelFilterError> {
    let tables = sock.list_tables().map_err(KernelFilterError::Unavailable)?;
    Ok(tables
        .into_iter()
        .filter(|t| t.name == TABLE && t.family().is_some())
        .collect())
}

/// A service-rule table found in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Installed {
    /// `netdev` (VIPs answered with the interface MAC) or `ip` (with a VIP MAC).
    pub family: &'static str,
    /// Owned by a running process's socket; an unowned one was left by a uvs from before
    /// owner tables, which nothing removes until the next start.
    pub owned: bool,
}

/// uvs's service-rule table in this network namespace, if any.
pub fn installed() -> Result<Option<Installed>, KernelFilterError> {
    let mut sock = NfSocket::open().map_err(KernelFilterError::Unavailable)?;
    let tables = uvs_tables(&mut sock)?;
    Ok([Family::Netdev, Family::Ip].into_iter().find_map(|f| {
        tables
            .iter()
            .find(|t| t.family() == Some(f))
            .map(|t| Installed {
                family: f.name(),
                owned: t.is_owned(),
            })
    }))
}

#[cfg(test)]
mod tests;

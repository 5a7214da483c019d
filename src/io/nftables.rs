//! nf_tables over netlink: a socket of uvs's own, and the messages that build its tables.
//!
//! Why not `nft -f`: a table created with `NFT_TABLE_F_OWNER` (Linux ≥ 5.12) belongs to the
//! netlink socket that created it. The kernel deletes the table when that socket is released
//! — also when the process dies of SIGKILL, an OOM kill or an abort, since the kernel closes
//! every descriptor of a dead process — and refuses changes to it from any other socket
//! (EPERM; `nft flush ruleset` skips it). So whoever holds the socket must be the process whose
//! life the table should share, and `nft` exits as soon as it has loaded a ruleset.
//!
//! Every change is one batch (`NFNL_MSG_BATCH_BEGIN` … `END`), which nf_tables applies as one
//! transaction: all of it or, on any error, none of it. nf_tables handles a batch inside the
//! `sendmsg` call that carries it, so every acknowledgement is queued on the socket by the time
//! `sendmsg` returns (nft reads them the same way).
//!
//! The messages follow what nft 1.0.6 sends for the same ruleset (`nft --debug=mnl`, compared
//! byte for byte in the tests), so `nft list ruleset` prints the tables as if nft had made them.
//! This module knows nothing about load balancing: `kernel_filter` says what to build.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_HDRLEN: usize = 16;
const NLA_HDRLEN: usize = 4;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_MULTI: u16 = 0x2;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
/// In an error message: the original request's payload was left out (`NETLINK_CAP_ACK`).
const NLM_F_CAPPED: u16 = 0x100;
/// In an error message: extended-ack attributes follow (`NETLINK_EXT_ACK`).
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;

const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFNL_SUBSYS_NFTABLES: u16 = 10;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_TABLE_OWNER: u16 = 7;
/// The table goes with the netlink socket that created it.
pub const TABLE_F_OWNER: u32 = 0x2;

const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_HOOK_DEV: u16 = 3;
const NF_ACCEPT: u32 = 1;

const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_EXPR: u16 = 17;
const NFTA_SET_DESC_SIZE: u16 = 1;
const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_CONSTANT: u32 = 0x2;
/// nftnl's set user data: the key's byte order (nft's `enum byteorder`), read back by nft to
/// print the elements.
const NFTNL_UDATA_SET_KEYBYTEORDER: u8 = 0;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NF_DROP: u32 = 0;

const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
/// nftnl's rule user data: the comment nft prints.
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;

const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;

/// Elements per set-element message: a message must fit in one netlink attribute (64 KiB).
const ELEMENTS_PER_MESSAGE: usize = 1024;

/// The address families uvs builds tables in (`NFPROTO_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    Ip,
    Arp,
    Netdev,
}

impl Family {
    fn number(self) -> u8 {
        match self {
            Family::Ip => 2,
            Family::Arp => 3,
            Family::Netdev => 5,
        }
    }

    /// The family as nft names it.
    pub fn name(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Arp => "arp",
            Family::Netdev => "netdev",
        }
    }
}

/// nftables' data type numbers (nft's `enum datatypes`), which nft uses to print set keys.
pub mod datatype {
    pub const IPV4_ADDR: u32 = 7;
    pub const INET_PROTOCOL: u32 = 12;
    pub const INET_SERVICE: u32 = 13;
    pub const IFNAME: u32 = 41;

    /// The type of a concatenation, as nft encodes it: 6 bits per part, the first part highest.
    pub const fn concat(parts: &[u32]) -> u32 {
        let mut t = 0;
        let mut i = 0;
        while i < parts.len() {
            t = (t << 6) | parts[i];
            i += 1;
        }
        t
    }
}

/// How nft should read a set's keys (nft's `enum byteorder`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteOrder {
    /// A concatenation: each part says its own.
    Mixed = 0,
    Host = 1,
    Big = 2,
}

/// nf_tables registers: `REG_1` is the first 16-byte register, `REG32_*` its 4-byte parts
/// (a concatenated key is loaded part by part into consecutive 4-byte registers).
pub mod reg {
    pub const VERDICT: u32 = 0;
    pub const R1: u32 = 1;
    pub const R32_01: u32 = 9;
    pub const R32_02: u32 = 10;
}

#[derive(Clone, Copy, Debug)]
pub enum MetaKey {
    /// The link-layer protocol (`meta protocol`).
    Protocol = 1,
    Iifname = 6,
    /// The transport protocol (`meta l4proto`).
    L4Proto = 16,
}

#[derive(Clone, Copy, Debug)]
pub enum PayloadBase {
    Network = 1,
    Transport = 2,
}

#[derive(Clone, Copy, Debug)]
pub enum CmpOp {
    Eq = 0,
    Neq = 1,
    /// Ordered comparisons are `memcmp`s of the register: big-endian data compares as numbers.
    Lte = 3,
    Gte = 5,
}

/// A set, as a rule or an element message refers to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetRef {
    name: String,
    /// The transaction-local id of a set created in the same batch (0: an existing set). An
    /// anonymous set only gets its name when created, so a rule in the same batch needs this.
    id: u32,
}

impl SetRef {
    /// A set that already exists in the kernel.
    pub fn existing(name: &str) -> SetRef {
        SetRef {
            name: name.to_string(),
            id: 0,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A named set's definition.
pub struct SetSpec<'a> {
    pub name: &'a str,
    pub key_type: u32,
    pub key_len: u32,
    pub byte_order: ByteOrder,
    /// Give every element a counter of its own (nft's `counter` set flag).
    pub counters: bool,
}

/// A base chain's hook.
pub struct Hook<'a> {
    pub num: u32,
    pub priority: i32,
    /// The device of a `netdev` chain.
    pub device: Option<&'a str>,
}

/// One expression of a rule.
#[derive(Clone, Copy, Debug)]
pub enum Expr<'a> {
    Meta {
        key: MetaKey,
        dreg: u32,
    },
    Payload {
        base: PayloadBase,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    Cmp {
        sreg: u32,
        op: CmpOp,
        data: &'a [u8],
    },
    /// `dreg = (sreg & mask) ^ xor`.
    Bitwise {
        sreg: u32,
        dreg: u32,
        mask: &'a [u8],
        xor: &'a [u8],
    },
    Lookup {
        sreg: u32,
        set: &'a SetRef,
    },
    /// The key is *not* in the set (`NFT_LOOKUP_F_INV`).
    NotIn {
        sreg: u32,
        set: &'a SetRef,
    },
    Counter,
    Drop,
}

/// One nf_tables transaction being built.
#[derive(Debug)]
pub struct Batch {
    buf: Vec<u8>,
    /// Offset of each message in `buf` (the batch-begin message first) and what it does, to
    /// name the one the kernel refuses.
    msgs: Vec<(usize, String)>,
    next_set_id: u32,
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    pub fn new() -> Batch {
        let mut b = Batch {
            buf: Vec::with_capacity(4096),
            msgs: Vec::new(),
            next_set_id: 1,
        };
        let start = b.msg_raw(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        b.end_msg(start, "begin the transaction".into());
        b
    }

    /// Messages in the batch, besides its begin and end.
    pub fn len(&self) -> usize {
        self.msgs.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `nft add table`: creates the table if it does not exist, changes nothing if it does.
    /// Followed by [`Batch::delete_table`], it removes a table that may or may not exist.
    pub fn declare_table(&mut self, family: Family, name: &str) {
        let start = self.msg(NFT_MSG_NEWTABLE, NLM_F_CREATE, family);
        put_str(&mut self.buf, NFTA_TABLE_NAME, name);
        self.end_msg(start, format!("declare table {} {name}", family.name()));
    }

    /// Creates a table that belongs to the sending socket (`NFT_TABLE_F_OWNER`); fails if
    /// one of that name exists.
    pub fn add_owned_table(&mut self, family: Family, name: &str) {
        let start = self.msg(NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_EXCL, family);
        put_str(&mut self.buf, NFTA_TABLE_NAME, name);
        put_u32(&mut self.buf, NFTA_TABLE_FLAGS, TABLE_F_OWNER);
        self.end_msg(
            start,
            format!("add table {} {name} owned by uvs's socket", family.name()),
        );
    }

    pub fn delete_table(&mut self, family: Family, name: &str) {
        let start = self.msg(NFT_MSG_DELTABLE, 0, family);
        put_str(&mut self.buf, NFTA_TABLE_NAME, name);
        self.end_msg(start, format!("delete table {} {name}", family.name()));
    }

    /// A `filter` base chain with policy accept.
    pub fn add_base_chain(&mut self, family: Family, table: &str, name: &str, hook: &Hook<'_>) {
        let start = self.msg(NFT_MSG_NEWCHAIN, NLM_F_CREATE, family);
        put_str(&mut self.buf, NFTA_CHAIN_TABLE, table);
        put_str(&mut self.buf, NFTA_CHAIN_NAME, name);
        put_str(&mut self.buf, NFTA_CHAIN_TYPE, "filter");
        put_u32(&mut self.buf, NFTA_CHAIN_POLICY, NF_ACCEPT);
        let h = nest_begin(&mut self.buf, NFTA_CHAIN_HOOK);
        put_u32(&mut self.buf, NFTA_HOOK_HOOKNUM, hook.num);
        put_u32(&mut self.buf, NFTA_HOOK_PRIORITY, hook.priority as u32);
        if let Some(dev) = hook.device {
            put_str(&mut self.buf, NFTA_HOOK_DEV, dev);
        }
        nest_end(&mut self.buf, h);
        let on = hook.device.map(|d| format!(" on {d}")).unwrap_or_default();
        self.end_msg(
            start,
            format!("add chain {} {table} {name}{on}", family.name()),
        );
    }

    /// A named set (a hash: elements are added and removed one by one at run time).
    pub fn add_set(&mut self, family: Family, table: &str, spec: &SetSpec<'_>) -> SetRef {
        let id = self.set_id();
        let start = self.msg(NFT_MSG_NEWSET, NLM_F_CREATE, family);
        put_str(&mut self.buf, NFTA_SET_TABLE, table);
        put_str(&mut self.buf, NFTA_SET_NAME, spec.name);
        put_u32(&mut self.buf, NFTA_SET_FLAGS, 0);
        put_u32(&mut self.buf, NFTA_SET_KEY_TYPE, spec.key_type);
        put_u32(&mut self.buf, NFTA_SET_KEY_LEN, spec.key_len);
        put_u32(&mut self.buf, NFTA_SET_ID, id);
        put_attr(
            &mut self.buf,
            NFTA_SET_USERDATA,
            &byte_order_udata(spec.byte_order),
        );
        if spec.counters {
            let e = nest_begin(&mut self.buf, NFTA_SET_EXPR);
            put_str(&mut self.buf, NFTA_EXPR_NAME, "counter");
            let d = nest_begin(&mut self.buf, NFTA_EXPR_DATA);
            nest_end(&mut self.buf, d);
            nest_end(&mut self.buf, e);
        }
        self.end_msg(
            start,
            format!("add set {} {table} {}", family.name(), spec.name),
        );
        SetRef {
            name: spec.name.to_string(),
            id,
        }
    }

    /// A constant anonymous set with these elements (nft's `{ a, b }` in a rule); it lives as
    /// long as the rule that uses it, which must come in the same batch.
    pub fn add_anonymous_set(
        &mut self,
        family: Family,
        table: &str,
        key_type: u32,
        key_len: u32,
        byte_order: ByteOrder,
        elements: &[Vec<u8>],
    ) -> SetRef {
        let id = self.set_id();
        let start = self.msg(NFT_MSG_NEWSET, NLM_F_CREATE, family);
        put_str(&mut self.buf, NFTA_SET_TABLE, table);
        put_str(&mut self.buf, NFTA_SET_NAME, "__set%d");
        put_u32(
            &mut self.buf,
            NFTA_SET_FLAGS,
            NFT_SET_ANONYMOUS | NFT_SET_CONSTANT,
        );
        put_u32(&mut self.buf, NFTA_SET_KEY_TYPE, key_type);
        put_u32(&mut self.buf, NFTA_SET_KEY_LEN, key_len);
        put_u32(&mut self.buf, NFTA_SET_ID, id);
        let d = nest_begin(&mut self.buf, NFTA_SET_DESC);
        put_u32(&mut self.buf, NFTA_SET_DESC_SIZE, elements.len() as u32);
        nest_end(&mut self.buf, d);
        put_attr(
            &mut self.buf,
            NFTA_SET_USERDATA,
            &byte_order_udata(byte_order),
        );
        self.end_msg(
            start,
            format!("add an anonymous set to {} {table}", family.name()),
        );
        let set = SetRef {
            name: "__set%d".into(),
            id,
        };
        self.add_elements(family, table, &set, elements);
        set
    }

    /// Adds `keys` to `set` (several messages when there are many, all in this transaction).
    pub fn add_elements(&mut self, family: Family, table: &str, set: &SetRef, keys: &[Vec<u8>]) {
        self.elements(NFT_MSG_NEWSETELEM, NLM_F_CREATE, family, table, set, keys);
    }

    /// Removes `keys` from `set`; the transaction fails if one is not in it.
    pub fn delete_elements(&mut self, family: Family, table: &str, set: &SetRef, keys: &[Vec<u8>]) {
        self.elements(NFT_MSG_DELSETELEM, 0, family, table, set, keys);
    }

    fn elements(
        &mut self,
        ty: u16,
        flags: u16,
        family: Family,
        table: &str,
        set: &SetRef,
        keys: &[Vec<u8>],
    ) {
        for chunk in keys.chunks(ELEMENTS_PER_MESSAGE) {
            let start = self.msg(ty, flags, family);
            put_str(&mut self.buf, NFTA_SET_ELEM_LIST_TABLE, table);
            put_str(&mut self.buf, NFTA_SET_ELEM_LIST_SET, &set.name);
            if set.id != 0 {
                put_u32(&mut self.buf, NFTA_SET_ELEM_LIST_SET_ID, set.id);
            }
            let list = nest_begin(&mut self.buf, NFTA_SET_ELEM_LIST_ELEMENTS);
            // Each element nested under its position (nft's numbering; the kernel reads the
            // list without looking at the types).
            for (i, key) in chunk.iter().enumerate() {
                let e = nest_begin(&mut self.buf, i as u16 + 1);
                let k = nest_begin(&mut self.buf, NFTA_SET_ELEM_KEY);
                put_attr(&mut self.buf, NFTA_DATA_VALUE, key);
                nest_end(&mut self.buf, k);
                nest_end(&mut self.buf, e);
            }
            nest_end(&mut self.buf, list);
            let verb = if ty == NFT_MSG_NEWSETELEM {
                "add"
            } else {
                "delete"
            };
            let prep = if ty == NFT_MSG_NEWSETELEM {
                "to"
            } else {
                "from"
            };
            self.end_msg(
                start,
                format!(
                    "{verb} {} element(s) {prep} set {} {table} {}",
                    chunk.len(),
                    family.name(),
                    set.name
                ),
            );
        }
    }

    /// Appends a rule to `chain`, with a comment nft shows.
    pub fn add_rule(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
        exprs: &[Expr<'_>],
        comment: &str,
    ) {
        let start = self.msg(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, family);
        put_str(&mut self.buf, NFTA_RULE_TABLE, table);
        put_str(&mut self.buf, NFTA_RULE_CHAIN, chain);
        let list = nest_begin(&mut self.buf, NFTA_RULE_EXPRESSIONS);
        for e in exprs {
            put_expr(&mut self.buf, e);
        }
        nest_end(&mut self.buf, list);
        let mut udata = vec![NFTNL_UDATA_RULE_COMMENT, (comment.len() + 1) as u8];
        udata.extend_from_slice(comment.as_bytes());
        udata.push(0);
        put_attr(&mut self.buf, NFTA_RULE_USERDATA, &udata);
        self.end_msg(
            start,
            format!(
                "add rule \"{comment}\" to {} {table} {chain}",
                family.name()
            ),
        );
    }

    /// The batch as sent, messages numbered from `first_seq` (the begin message), the end
    /// message appended.
    pub fn encode(&self, first_seq: u32) -> Vec<u8> {
        let mut out = self.buf.clone();
        for (i, (off, _)) in self.msgs.iter().enumerate() {
            let seq = first_seq.wrapping_add(i as u32);
            out[off + 8..off + 12].copy_from_slice(&seq.to_ne_bytes());
        }
        let end_seq = first_seq.wrapping_add(self.msgs.len() as u32);
        let start = out.len();
        push_msg_header(&mut out, NFNL_MSG_BATCH_END, NLM_F_REQUEST, end_seq);
        push_nfgen(&mut out, 0, NFNL_SUBSYS_NFTABLES);
        let len = (out.len() - start) as u32;
        out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        out
    }

    fn set_id(&mut self) -> u32 {
        let id = self.next_set_id;
        self.next_set_id += 1;
        id
    }

    fn msg(&mut self, ty: u16, flags: u16, family: Family) -> usize {
        self.msg_raw(
            (NFNL_SUBSYS_NFTABLES << 8) | ty,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            family.number(),
            0,
        )
    }

    fn msg_raw(&mut self, ty: u16, flags: u16, family: u8, res_id: u16) -> usize {
        let start = self.buf.len();
        push_msg_header(&mut self.buf, ty, flags, 0);
        push_nfgen(&mut self.buf, family, res_id);
        start
    }

    fn end_msg(&mut self, start: usize, what: String) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        self.msgs.push((start, what));
    }
}

fn push_msg_header(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32) {
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    // Port id 0: the message is for the kernel.
    buf.extend_from_slice(&0u32.to_ne_bytes());
}

/// `struct nfgenmsg`: family, version 0, resource id (big-endian).
fn push_nfgen(buf: &mut Vec<u8>, family: u8, res_id: u16) {
    buf.push(family);
    buf.push(0);
    buf.extend_from_slice(&res_id.to_be_bytes());
}

fn pad(buf: &mut Vec<u8>) {
    while buf.len() % 4 != 0 {
        buf.push(0);
    }
}

fn put_attr(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = (NLA_HDRLEN + data.len()) as u16;
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(data);
    pad(buf);
}

fn put_str(buf: &mut Vec<u8>, ty: u16, s: &str) {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    put_attr(buf, ty, &v);
}

/// nf_tables' integer attributes are big-endian.
fn put_u32(buf: &mut Vec<u8>, ty: u16, v: u32) {
    put_attr(buf, ty, &v.to_be_bytes());
}

fn nest_begin(buf: &mut Vec<u8>, ty: u16) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    start
}

fn nest_end(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

fn put_data_value(buf: &mut Vec<u8>, ty: u16, value: &[u8]) {
    let n = nest_begin(buf, ty);
    put_attr(buf, NFTA_DATA_VALUE, value);
    nest_end(buf, n);
}

fn byte_order_udata(order: ByteOrder) -> [u8; 6] {
    let v = (order as u32).to_ne_bytes();
    [NFTNL_UDATA_SET_KEYBYTEORDER, 4, v[0], v[1], v[2], v[3]]
}

fn put_expr(buf: &mut Vec<u8>, e: &Expr<'_>) {
    let name = match e {
        Expr::Meta { .. } => "meta",
        Expr::Payload { .. } => "payload",
        Expr::Cmp { .. } => "cmp",
        Expr::Bitwise { .. } => "bitwise",
        Expr::Lookup { .. } | Expr::NotIn { .. } => "lookup",
        Expr::Counter => "counter",
        Expr::Drop => "immediate",
    };
    let elem = nest_begin(buf, NFTA_LIST_ELEM);
    put_str(buf, NFTA_EXPR_NAME, name);
    let data = nest_begin(buf, NFTA_EXPR_DATA);
    // Attribute numbers are each expression's own (`NFTA_META_*`, `NFTA_PAYLOAD_*`, …), in
    // the order nft sends them.
    match *e {
        Expr::Meta { key, dreg } => {
            put_u32(buf, 2, key as u32);
            put_u32(buf, 1, dreg);
        }
        Expr::Payload {
            base,
            offset,
            len,
            dreg,
        } => {
            put_u32(buf, 1, dreg);
            put_u32(buf, 2, base as u32);
            put_u32(buf, 3, offset);
            put_u32(buf, 4, len);
        }
        Expr::Cmp { sreg, op, data } => {
            put_u32(buf, 1, sreg);
            put_u32(buf, 2, op as u32);
            put_data_value(buf, 3, data);
        }
        Expr::Bitwise {
            sreg,
            dreg,
            mask,
            xor,
        } => {
            put_u32(buf, 1, sreg);
            put_u32(buf, 2, dreg);
            // NFT_BITWISE_MASK_XOR
            put_u32(buf, 6, 0);
            put_u32(buf, 3, mask.len() as u32);
            put_data_value(buf, 4, mask);
            put_data_value(buf, 5, xor);
        }
        Expr::Lookup { sreg, set } => {
            put_u32(buf, 2, sreg);
            put_str(buf, 1, &set.name);
            if set.id != 0 {
                put_u32(buf, 4, set.id);
            }
        }
        Expr::NotIn { sreg, set } => {
            put_u32(buf, 2, sreg);
            put_str(buf, 1, &set.name);
            if set.id != 0 {
                put_u32(buf, 4, set.id);
            }
            // NFTA_LOOKUP_FLAGS: NFT_LOOKUP_F_INV
            put_u32(buf, 5, 1);
        }
        Expr::Counter => {}
        Expr::Drop => {
            put_u32(buf, 1, reg::VERDICT);
            let d = nest_begin(buf, 2);
            let v = nest_begin(buf, NFTA_DATA_VERDICT);
            put_u32(buf, NFTA_VERDICT_CODE, NF_DROP);
            nest_end(buf, v);
            nest_end(buf, d);
        }
    }
    nest_end(buf, data);
    nest_end(buf, elem);
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("nf_tables refused to {what}: {source}{}", detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        what: String,
        source: io::Error,
        /// The kernel's extended-ack message, when it gave one.
        detail: Option<String>,
    },
    #[error("nf_tables sent a malformed answer: {0}")]
    Malformed(&'static str),
    #[error(
        "nf_tables acknowledged {acked} of {sent} messages; the transaction's outcome is unknown"
    )]
    Unanswered { acked: usize, sent: usize },
}

impl NftError {
    /// The errno of a refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NftError::Refused { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

fn sys(what: &'static str) -> NftError {
    NftError::Sys {
        what,
        source: io::Error::last_os_error(),
    }
}

/// A table as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableInfo {
    /// `NFPROTO_*`; [`TableInfo::family`] names the ones uvs uses.
    pub family: u8,
    pub name: String,
    pub flags: u32,
    /// The netlink port id of the owning socket, for an owned table.
    pub owner: Option<u32>,
}

impl TableInfo {
    pub fn family(&self) -> Option<Family> {
        [Family::Ip, Family::Arp, Family::Netdev]
            .into_iter()
            .find(|f| f.number() == self.family)
    }

    pub fn is_owned(&self) -> bool {
        self.flags & TABLE_F_OWNER != 0
    }
}

/// A netlink socket to nf_tables. Tables it creates as owned live as long as it does.
#[derive(Debug)]
pub struct NfSocket {
    fd: OwnedFd,
    seq: u32,
}

impl NfSocket {
    pub fn open() -> Result<NfSocket, NftError> {
        // CLOEXEC: a health-check or notify command must not inherit the socket, or an owned
        // table would outlive uvs for as long as that command runs.
        // SAFETY: plain syscall with constant arguments.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(sys("socket(AF_NETLINK, NETLINK_NETFILTER)"));
        }
        // SAFETY: `raw` was just returned by socket() and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain old data; all-zero is a valid value.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `sa` is a valid sockaddr_nl and the length matches it.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(sys("bind(AF_NETLINK)"));
        }
        // Errors name the refused message by its header alone, and carry the kernel's text
        // when it has one. Old kernels lack the options; errors are still reported without.
        let one: libc::c_int = 1;
        for opt in [libc::NETLINK_CAP_ACK, libc::NETLINK_EXT_ACK] {
            let _ = set_int(&fd, libc::SOL_NETLINK, opt, one);
        }
        // Every acknowledgement of a batch is queued while it is processed, before it is read.
        let _ = set_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 1 << 20);
        Ok(NfSocket { fd, seq: 1 })
    }

    /// The socket's netlink port id (what the kernel records as an owned table's owner).
    pub fn port_id(&self) -> Result<u32, NftError> {
        // SAFETY: sockaddr_nl is plain old data; all-zero is a valid value.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: `sa` and `len` are live and writable, `len` holds `sa`'s size.
        let rc = unsafe {
            libc::getsockname(
                self.fd.as_raw_fd(),
                (&mut sa as *mut libc::sockaddr_nl).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(sys("getsockname(AF_NETLINK)"));
        }
        Ok(sa.nl_pid)
    }

    /// Sends `batch` as one transaction and waits for its verdict: `Ok` when the kernel
    /// applied all of it; on a refusal nothing of it was applied.
    pub fn commit(&mut self, batch: &Batch) -> Result<(), NftError> {
        let first = self.next_seq(batch.msgs.len() as u32 + 1);
        let bytes = batch.encode(first);
        // nft does the same: the whole batch must fit in the send buffer.
        let want = libc::c_int::try_from(bytes.len() + 4096).unwrap_or(libc::c_int::MAX);
        let _ = set_int(&self.fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, want);
        self.send(&bytes)?;
        let mut verdicts: Vec<Option<i32>> = vec![None; batch.msgs.len()];
        let mut details: Vec<Option<String>> = vec![None; batch.msgs.len()];
        let mut buf = vec![0u8; 1 << 16];
        while let Some(n) = self.recv(&mut buf, false)? {
            for m in Messages::new(&buf[..n]) {
                let (hdr, payload) = m?;
                if hdr.ty != NLMSG_ERROR {
                    continue;
                }
                let (errno, seq, detail) = parse_error(&hdr, payload)?;
                let i = seq.wrapping_sub(first) as usize;
                if i < verdicts.len() {
                    verdicts[i] = Some(errno);
                    details[i] = detail;
                }
            }
        }
        // The lowest refused message is the cause; later ones often fail because of it.
        if let Some(i) = verdicts.iter().position(|v| v.is_some_and(|e| e != 0)) {
            let errno = verdicts[i].unwrap_or(0);
            let what = if i == 0 {
                "commit the transaction".to_string()
            } else {
                batch.msgs[i].1.clone()
            };
            return Err(NftError::Refused {
                what,
                source: io::Error::from_raw_os_error(errno),
                detail: details[i].take(),
            });
        }
        let acked = verdicts.iter().skip(1).filter(|v| v.is_some()).count();
        if acked != batch.len() {
            return Err(NftError::Unanswered {
                acked,
                sent: batch.len(),
            });
        }
        Ok(())
    }

    /// Every nftables table in the socket's network namespace.
    pub fn list_tables(&mut self) -> Result<Vec<TableInfo>, NftError> {
        let seq = self.next_seq(1);
        let mut req = Vec::with_capacity(NLMSG_HDRLEN + 4);
        push_msg_header(
            &mut req,
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE,
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
        );
        // NFPROTO_UNSPEC: every family.
        push_nfgen(&mut req, 0, 0);
        let len = req.len() as u32;
        req[..4].copy_from_slice(&len.to_ne_bytes());
        self.send(&req)?;
        let mut tables = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let Some(n) = self.recv(&mut buf, true)? else {
                return Err(NftError::Malformed("the table dump ended without its end"));
            };
            for m in Messages::new(&buf[..n]) {
                let (hdr, payload) = m?;
                if hdr.seq != seq {
                    continue;
                }
                match hdr.ty {
                    NLMSG_DONE => return Ok(tables),
                    NLMSG_ERROR => {
                        let (errno, _, detail) = parse_error(&hdr, payload)?;
                        return Err(NftError::Refused {
                            what: "list the tables".into(),
                            source: io::Error::from_raw_os_error(errno),
                            detail,
                        });
                    }
                    t if t == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE => {
                        tables.push(parse_table(payload)?);
                    }
                    _ => {}
                }
                if hdr.flags & NLM_F_MULTI == 0 {
                    return Ok(tables);
                }
            }
        }
    }

    fn next_seq(&mut self, count: u32) -> u32 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(count);
        s
    }

    fn send(&self, bytes: &[u8]) -> Result<(), NftError> {
        // SAFETY: sockaddr_nl is plain old data; all-zero (port 0) addresses the kernel.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: `bytes` and `sa` are live for the duration of the call, lengths match.
            let rc = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    0,
                    (&sa as *const libc::sockaddr_nl).cast(),
                    size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if rc >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(NftError::Sys {
                    what: "sending to nf_tables",
                    source: e,
                });
            }
        }
    }

    /// One datagram; `Ok(None)` when nothing is queued and `block` is false.
    fn recv(&self, buf: &mut [u8], block: bool) -> Result<Option<usize>, NftError> {
        let flags = libc::MSG_TRUNC | if block { 0 } else { libc::MSG_DONTWAIT };
        loop {
            // SAFETY: `buf` is a live, writable slice of the given length.
            let rc = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    flags,
                )
            };
            if rc >= 0 {
                let n = rc as usize;
                if n > buf.len() {
                    return Err(NftError::Malformed("a message larger than 64 KiB"));
                }
                return Ok(Some(n));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(None),
                _ => {
                    return Err(NftError::Sys {
                        what: "receiving from nf_tables",
                        source: e,
                    });
                }
            }
        }
    }
}

fn set_int(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: `v` is a live c_int for the duration of the call and the length matches it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[derive(Clone, Copy, Debug)]
struct Header {
    ty: u16,
    flags: u16,
    seq: u32,
}

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn header(b: &[u8]) -> Option<Header> {
    Some(Header {
        ty: read_u16(b, 4)?,
        flags: read_u16(b, 6)?,
        seq: read_u32(b, 8)?,
    })
}

/// The netlink messages of a datagram: header and payload each.
struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Messages<'a> {
    fn new(b: &'a [u8]) -> Self {
        Messages { rest: b }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<(Header, &'a [u8]), NftError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let b = self.rest;
        let parsed = read_u32(b, 0).and_then(|len| {
            let len = len as usize;
            if len < NLMSG_HDRLEN || len > b.len() {
                return None;
            }
            Some((header(b)?, len))
        });
        let Some((hdr, len)) = parsed else {
            self.rest = &[];
            return Some(Err(NftError::Malformed("a message header")));
        };
        let payload = &b[NLMSG_HDRLEN..len];
        let step = len.next_multiple_of(4).min(b.len());
        self.rest = &b[step..];
        Some(Ok((hdr, payload)))
    }
}

/// The attributes of a payload: type (without flag bits) and value each.
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = read_u16(b, 0)? as usize;
        let ty = read_u16(b, 2)? & 0x3fff;
        if len < NLA_HDRLEN || len > b.len() {
            return None;
        }
        let value = &b[NLA_HDRLEN..len];
        b = &b[len.next_multiple_of(4).min(b.len())..];
        Some((ty, value))
    })
}

/// `struct nlmsgerr`: the errno (negative, 0 for an acknowledgement), the header of the
/// message it answers, then — with `NETLINK_EXT_ACK` — attributes, a text among them.
fn parse_error(hdr: &Header, p: &[u8]) -> Result<(i32, u32, Option<String>), NftError> {
    let err = read_u32(p, 0).ok_or(NftError::Malformed("an error message"))? as i32;
    let orig = p
        .get(4..4 + NLMSG_HDRLEN)
        .and_then(header)
        .ok_or(NftError::Malformed("an error message"))?;
    let mut detail = None;
    if hdr.flags & NLM_F_ACK_TLVS != 0 {
        let mut at = 4 + NLMSG_HDRLEN;
        if hdr.flags & NLM_F_CAPPED == 0 {
            let orig_len = read_u32(p, 4).unwrap_or(0) as usize;
            at = 4 + orig_len.max(NLMSG_HDRLEN);
        }
        if let Some(tlvs) = p.get(at..) {
            detail = attrs(tlvs)
                .find(|(t, _)| *t == NLMSGERR_ATTR_MSG)
                .map(|(_, v)| c_string(v));
        }
    }
    Ok((-err, orig.seq, detail))
}

fn c_string(v: &[u8]) -> String {
    let end = v.iter().position(|&c| c == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

fn parse_table(p: &[u8]) -> Result<TableInfo, NftError> {
    let family = *p.first().ok_or(NftError::Malformed("a table message"))?;
    let mut t = TableInfo {
        family,
        name: String::new(),
        flags: 0,
        owner: None,
    };
    for (ty, v) in attrs(p.get(4..).unwrap_or_default()) {
        let be32 = || {
            v.get(..4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        match ty {
            NFTA_TABLE_NAME => t.name = c_string(v),
            NFTA_TABLE_FLAGS => t.flags = be32().unwrap_or(0),
            NFTA_TABLE_OWNER => t.owner = be32(),
            _ => {}
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(bytes: &[u8]) -> Vec<(Header, Vec<u8>)> {
        Messages::new(bytes)
            .map(|m| m.map(|(h, p)| (h, p.to_vec())).unwrap())
            .collect()
    }

    #[test]
    fn a_batch_is_framed_and_numbered_for_one_transaction() {
        let mut b = Batch::new();
        assert!(b.is_empty());
        b.declare_table(Family::Netdev, "t");
        b.delete_table(Family::Netdev, "t");
        assert_eq!(b.len(), 2);
        let m = messages(&b.encode(7));
        let kinds: Vec<_> = m.iter().map(|(h, _)| (h.ty, h.seq)).collect();
        assert_eq!(
            kinds,
            [(16, 7), (0x0a00, 8), (0x0a02, 9), (17, 10)],
            "begin, the two messages, end; consecutive sequence numbers"
        );
        // Begin and end name the nf_tables subsystem (big-endian res_id) and ask for no ack;
        // every message in between asks for one.
        assert_eq!(m[0].1, [0, 0, 0, 10]);
        assert_eq!(m[3].1, [0, 0, 0, 10]);
        assert_eq!(m[0].0.flags, NLM_F_REQUEST);
        assert_eq!(m[1].0.flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE);
        assert_eq!(m[2].0.flags, NLM_F_REQUEST | NLM_F_ACK);
        // The table message: netdev family, the name NUL-terminated and padded.
        assert_eq!(m[1].1, [5, 0, 0, 0, 6, 0, 1, 0, b't', 0, 0, 0]);
    }

    #[test]
    fn an_owned_table_carries_the_owner_flag_and_must_be_new() {
        let mut b = Batch::new();
        b.add_owned_table(Family::Arp, "uvs");
        let m = messages(&b.encode(0));
        assert_eq!(
            m[1].0.flags,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        );
        assert_eq!(
            m[1].1,
            [
                3, 0, 0, 0, 8, 0, 1, 0, b'u', b'v', b's', 0, 8, 0, 2, 0, 0, 0, 0, 2
            ]
        );
    }

    #[test]
    fn many_elements_are_split_into_messages_of_one_transaction() {
        let mut b = Batch::new();
        let keys: Vec<Vec<u8>> = (0..2500u32).map(|i| i.to_be_bytes().to_vec()).collect();
        b.add_elements(Family::Ip, "t", &SetRef::existing("s"), &keys);
        assert_eq!(b.len(), 3);
        let m = messages(&b.encode(0));
        assert!(m.iter().all(|(_, p)| p.len() < 65536));
        assert_eq!(m.len(), 5);
    }

    fn error_message(errno: i32, seq: u32, text: Option<&str>) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&(-errno).to_ne_bytes());
        push_msg_header(&mut p, 0x0a03, NLM_F_REQUEST, seq);
        if let Some(t) = text {
            put_str(&mut p, NLMSGERR_ATTR_MSG, t);
        }
        let mut m = Vec::new();
        let flags = NLM_F_CAPPED | if text.is_some() { NLM_F_ACK_TLVS } else { 0 };
        push_msg_header(&mut m, NLMSG_ERROR, flags, seq);
        m.extend_from_slice(&p);
        let len = m.len() as u32;
        m[..4].copy_from_slice(&len.to_ne_bytes());
        m
    }

    #[test]
    fn an_error_names_the_message_it_answers_and_the_kernels_text() {
        let m = error_message(libc::ENODEV, 42, Some("hook device"));
        let (h, p) = messages(&m).remove(0);
        assert_eq!(
            parse_error(&h, &p).unwrap(),
            (libc::ENODEV, 42, Some("hook device".to_string()))
        );
        let m = error_message(0, 43, None);
        let (h, p) = messages(&m).remove(0);
        assert_eq!(parse_error(&h, &p).unwrap(), (0, 43, None));
        // Cut short: refused, not read past its end.
        let (h, _) = messages(&m).remove(0);
        assert!(parse_error(&h, &[0, 0, 0, 0, 1]).is_err());
        let mut bad = m.clone();
        bad[..4].copy_from_slice(&999u32.to_ne_bytes());
        assert!(Messages::new(&bad).next().unwrap().is_err());
    }

    #[test]
    fn a_listed_table_gives_its_family_name_flags_and_owner() {
        let mut p = vec![5, 0, 0, 0];
        put_str(&mut p, NFTA_TABLE_NAME, "uvs");
        put_u32(&mut p, NFTA_TABLE_FLAGS, TABLE_F_OWNER);
        put_u32(&mut p, NFTA_TABLE_OWNER, 4242);
        let t = parse_table(&p).unwrap();
        assert_eq!(t.family(), Some(Family::Netdev));
        assert_eq!(
            (t.name.as_str(), t.is_owned(), t.owner),
            ("uvs", true, Some(4242))
        );
        let t = parse_table(&[7, 0, 0, 0]).unwrap();
        assert_eq!((t.family(), t.is_owned(), t.owner), (None, false, None));
    }

    fn in_private_netns(f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(move || {
            if !crate::io::enter_private_netns() {
                eprintln!("skipping: needs root");
                return;
            }
            f()
        })
        .join()
        .unwrap();
    }

    fn tables() -> Vec<(Option<Family>, String, bool)> {
        let mut s = NfSocket::open().unwrap();
        let mut t: Vec<_> = s
            .list_tables()
            .unwrap()
            .into_iter()
            .map(|t| (t.family(), t.name.clone(), t.is_owned()))
            .collect();
        t.sort();
        t
    }

    #[test]
    fn an_owned_table_goes_when_its_socket_closes() {
        in_private_netns(|| {
            let mut owner = NfSocket::open().unwrap();
            let mut b = Batch::new();
            b.add_owned_table(Family::Netdev, "mine");
            b.declare_table(Family::Ip, "plain");
            owner.commit(&b).unwrap();
            assert_eq!(
                tables(),
                [
                    (Some(Family::Ip), "plain".to_string(), false),
                    (Some(Family::Netdev), "mine".to_string(), true),
                ]
            );
            // Another socket may neither change nor delete it.
            let mut other = NfSocket::open().unwrap();
            let mut b = Batch::new();
            b.delete_table(Family::Netdev, "mine");
            let e = other.commit(&b).unwrap_err();
            assert_eq!(e.errno(), Some(libc::EPERM), "{e}");
            drop(owner);
            assert_eq!(tables(), [(Some(Family::Ip), "plain".to_string(), false)]);
        });
    }

    #[test]
    fn a_refused_message_is_named_and_nothing_of_its_batch_is_applied() {
        in_private_netns(|| {
            let mut s = NfSocket::open().unwrap();
            let mut b = Batch::new();
            b.add_owned_table(Family::Netdev, "t");
            b.add_rule(Family::Netdev, "t", "nochain", &[Expr::Counter], "x");
            let e = s.commit(&b).unwrap_err();
            assert_eq!(e.errno(), Some(libc::ENOENT), "{e}");
            assert!(
                e.to_string()
                    .starts_with("nf_tables refused to add rule \"x\" to netdev t nochain: "),
                "{e}"
            );
            assert_eq!(tables(), []);
            // The socket stays usable.
            let mut b = Batch::new();
            b.add_owned_table(Family::Netdev, "t");
            s.commit(&b).unwrap();
            assert_eq!(tables().len(), 1);
        });
    }
}

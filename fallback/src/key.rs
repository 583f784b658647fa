//! The flow key: every header field the datapath can match on, packed into
//! fixed 64-bit words so that masking, hashing and comparing are word loops.
//!
//! A [`FlowKey`] is used both as a key (values extracted from a packet) and as
//! a mask (1 bits = the field's bit matters). Fields are reached through
//! [`Field`], whose layout table says which word and bits hold it.

use std::fmt;

/// Number of 64-bit words in a key.
pub const KEY_WORDS: usize = 12;

/// [`FlowKey::hash64`]'s odd multipliers, one per word.
const HASH_K: [u64; KEY_WORDS] = [
    0x9e37_79b9_7f4a_7c15,
    0xc2b2_ae3d_27d4_eb4f,
    0x1656_67b1_9e37_79f9,
    0x85eb_ca77_c2b2_ae63,
    0x27d4_eb2f_1656_67c5,
    0xff51_afd7_ed55_8ccd,
    0xc4ce_b9fe_1a85_ec53,
    0x94d0_49bb_1331_11eb,
    0xbf58_476d_1ce4_e5b9,
    0xd6e8_feb8_6659_fd93,
    0xa076_1d64_78bd_642f,
    0xe703_7ed1_a0b4_28db,
];

/// Word `i`'s term in [`FlowKey::hash64`]'s sum.
#[inline(always)]
const fn hash_term(i: usize, w: u64) -> u64 {
    (w ^ i as u64).wrapping_mul(HASH_K[i]).rotate_left(23)
}

/// [`FlowKey::hash64`]'s final mix of the terms' sum.
#[inline(always)]
const fn hash_finish(mut h: u64) -> u64 {
    h ^= h >> 31;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^ (h >> 29)
}

/// EtherTypes the parser and the flow syntax know.
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const VLAN: u16 = 0x8100;
    pub const QINQ: u16 = 0x88a8;
    pub const IPV6: u16 = 0x86dd;
}

/// IP protocol numbers.
pub mod ipproto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
}

/// `nw_frag` bits, as OVS defines them.
pub mod frag {
    /// The packet is a fragment (first or later).
    pub const ANY: u8 = 1;
    /// The packet is a fragment with a non-zero offset.
    pub const LATER: u8 = 2;
    /// Both bits: what "nw_frag is un-wildcarded" means.
    pub const MASK: u8 = ANY | LATER;
}

/// The VLAN-present bit in `vlan_tci` (the 802.1Q CFI/DEI position, used by
/// OVS to say "a VLAN header is there").
pub const VLAN_CFI: u16 = 0x1000;
pub const VLAN_VID_MASK: u16 = 0x0fff;
pub const VLAN_PCP_MASK: u16 = 0xe000;

/// A match field of the flow key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    InPort,
    DlType,
    VlanTci,
    DlDst,
    NwProto,
    NwTos,
    DlSrc,
    NwTtl,
    NwFrag,
    NwSrc,
    NwDst,
    TpSrc,
    TpDst,
    TcpFlags,
    Ipv6Src,
    Ipv6Dst,
    ArpSha,
    ArpTha,
    /// The 802.1Q priority (PCP) bits of `VlanTci`, for set actions only:
    /// it aliases `VlanTci`'s top 3 bits, so it is not in [`Field::ALL`].
    VlanPcp,
    /// The ECN bits of `NwTos`, for set actions only (aliases `NwTos`'s low
    /// 2 bits; not in [`Field::ALL`]).
    NwEcn,
    /// OpenFlow 1.3's 64-bit pipeline metadata (`write_metadata`): zero
    /// when a packet enters, never part of a megaflow (xlate wildcards
    /// it), and not in [`Field::ALL`] (the packet fields).
    Metadata,
}

/// Where a field lives: word index, bit shift inside the word, width in bits.
/// 128-bit fields take two whole words (`word` holds the high half).
#[derive(Clone, Copy, Debug)]
struct Layout {
    word: usize,
    shift: u32,
    bits: u32,
}

impl Field {
    pub const ALL: [Field; 18] = [
        Field::InPort,
        Field::DlType,
        Field::VlanTci,
        Field::DlDst,
        Field::NwProto,
        Field::NwTos,
        Field::DlSrc,
        Field::NwTtl,
        Field::NwFrag,
        Field::NwSrc,
        Field::NwDst,
        Field::TpSrc,
        Field::TpDst,
        Field::TcpFlags,
        Field::Ipv6Src,
        Field::Ipv6Dst,
        Field::ArpSha,
        Field::ArpTha,
    ];

    const fn layout(self) -> Layout {
        let (word, shift, bits) = match self {
            Field::InPort => (0, 0, 32),
            Field::DlType => (0, 32, 16),
            Field::VlanTci => (0, 48, 16),
            Field::DlDst => (1, 0, 48),
            Field::NwProto => (1, 48, 8),
            Field::NwTos => (1, 56, 8),
            Field::DlSrc => (2, 0, 48),
            Field::NwTtl => (2, 48, 8),
            Field::NwFrag => (2, 56, 8),
            Field::NwSrc => (3, 0, 32),
            Field::NwDst => (3, 32, 32),
            Field::TpSrc => (4, 0, 16),
            Field::TpDst => (4, 16, 16),
            Field::TcpFlags => (4, 32, 16),
            Field::Ipv6Src => (5, 0, 128),
            Field::Ipv6Dst => (7, 0, 128),
            Field::ArpSha => (9, 0, 48),
            Field::ArpTha => (10, 0, 48),
            Field::VlanPcp => (0, 61, 3),
            Field::NwEcn => (1, 56, 2),
            Field::Metadata => (11, 0, 64),
        };
        Layout { word, shift, bits }
    }

    /// Where the field sits: its key word and the bit shift inside it
    /// (128-bit fields: the word of the high half, shift 0).
    pub const fn position(self) -> (usize, u32) {
        let l = self.layout();
        (l.word, l.shift)
    }

    /// Width of the field in bits.
    pub const fn bits(self) -> u32 {
        self.layout().bits
    }

    /// All-ones value of the field's width.
    pub const fn full_mask(self) -> u128 {
        let bits = self.bits();
        if bits == 128 {
            u128::MAX
        } else {
            (1u128 << bits) - 1
        }
    }

    /// The name used in ovs-ofctl match syntax.
    pub const fn name(self) -> &'static str {
        match self {
            Field::InPort => "in_port",
            Field::DlType => "dl_type",
            Field::VlanTci => "vlan_tci",
            Field::DlDst => "dl_dst",
            Field::NwProto => "nw_proto",
            Field::NwTos => "nw_tos",
            Field::DlSrc => "dl_src",
            Field::NwTtl => "nw_ttl",
            Field::NwFrag => "nw_frag",
            Field::NwSrc => "nw_src",
            Field::NwDst => "nw_dst",
            Field::TpSrc => "tp_src",
            Field::TpDst => "tp_dst",
            Field::TcpFlags => "tcp_flags",
            Field::Ipv6Src => "ipv6_src",
            Field::Ipv6Dst => "ipv6_dst",
            Field::ArpSha => "arp_sha",
            Field::ArpTha => "arp_tha",
            Field::VlanPcp => "vlan_pcp",
            Field::NwEcn => "nw_ecn",
            Field::Metadata => "metadata",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A flow key or a flow mask.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub words: [u64; KEY_WORDS],
}

impl FlowKey {
    pub const ZERO: FlowKey = FlowKey {
        words: [0; KEY_WORDS],
    };

    /// Reads a field (right-aligned).
    #[inline]
    pub fn get(&self, f: Field) -> u128 {
        let l = f.layout();
        if l.bits == 128 {
            ((self.words[l.word] as u128) << 64) | self.words[l.word + 1] as u128
        } else {
            ((self.words[l.word] >> l.shift) & (u64::MAX >> (64 - l.bits))) as u128
        }
    }

    /// Writes a field; bits above the field's width are ignored.
    #[inline]
    pub fn set(&mut self, f: Field, v: u128) {
        let l = f.layout();
        if l.bits == 128 {
            self.words[l.word] = (v >> 64) as u64;
            self.words[l.word + 1] = v as u64;
        } else {
            let m = (u64::MAX >> (64 - l.bits)) << l.shift;
            self.words[l.word] = (self.words[l.word] & !m) | (((v as u64) << l.shift) & m);
        }
    }

    /// Sets a field to all ones (used on masks: "this field matters").
    #[inline]
    pub fn set_exact(&mut self, f: Field) {
        self.set(f, f.full_mask());
    }

    /// ORs bits into a field (used on masks).
    #[inline]
    pub fn or_field(&mut self, f: Field, bits: u128) {
        let cur = self.get(f);
        self.set(f, cur | bits);
    }

    /// `self & mask`, word by word.
    #[inline]
    pub fn masked(&self, mask: &FlowKey) -> FlowKey {
        let mut out = FlowKey::ZERO;
        for i in 0..KEY_WORDS {
            out.words[i] = self.words[i] & mask.words[i];
        }
        out
    }

    /// `self | other`, word by word (union of two masks).
    #[inline]
    pub fn or(&mut self, other: &FlowKey) {
        for i in 0..KEY_WORDS {
            self.words[i] |= other.words[i];
        }
    }

    /// True when `(self & mask) == masked_value` (`masked_value` already masked).
    #[inline]
    pub fn matches(&self, masked_value: &FlowKey, mask: &FlowKey) -> bool {
        let mut diff = 0u64;
        for i in 0..KEY_WORDS {
            diff |= (self.words[i] & mask.words[i]) ^ masked_value.words[i];
        }
        diff == 0
    }

    /// True when every bit is zero.
    pub fn is_zero(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// True when every 1 bit of `self` is also set in `other` (mask inclusion).
    pub fn is_subset_of(&self, other: &FlowKey) -> bool {
        self.words
            .iter()
            .zip(other.words.iter())
            .all(|(a, b)| a & !b == 0)
    }

    /// A 64-bit hash of the whole key (for the EMC when the NIC gave no RSS
    /// hash). Each word is multiplied by its own odd constant and the
    /// products summed: the multiplies are independent (no dependent chain
    /// through eleven of them), then one final mix.
    #[inline]
    pub fn hash64(&self) -> u64 {
        let mut h: u64 = 0;
        for (i, w) in self.words.iter().enumerate() {
            h = h.wrapping_add(hash_term(i, *w));
        }
        hash_finish(h)
    }

    /// [`FlowKey::hash64`] of a key whose words other than `words` are
    /// zero, given `zero_terms` = [`FlowKey::hash_terms_of_zero_words`] of
    /// the same `words`: a zero word's term is a constant, so only the
    /// present words are multiplied (the common-case parse fills five of
    /// twelve).
    #[inline]
    pub fn hash64_of_words(&self, words: &[usize], zero_terms: u64) -> u64 {
        debug_assert_eq!(zero_terms, Self::hash_terms_of_zero_words(words));
        debug_assert!((0..KEY_WORDS).all(|i| words.contains(&i) || self.words[i] == 0));
        let mut h = zero_terms;
        for &i in words {
            h = h.wrapping_add(hash_term(i, self.words[i]));
        }
        hash_finish(h)
    }

    /// The sum of [`FlowKey::hash64`]'s terms for zero words at every
    /// position but `words` (a constant for [`FlowKey::hash64_of_words`]).
    pub const fn hash_terms_of_zero_words(words: &[usize]) -> u64 {
        let mut h: u64 = 0;
        let mut i = 0;
        while i < KEY_WORDS {
            let mut present = false;
            let mut j = 0;
            while j < words.len() {
                present |= words[j] == i;
                j += 1;
            }
            if !present {
                h = h.wrapping_add(hash_term(i, 0));
            }
            i += 1;
        }
        h
    }

    /// Word-by-word equality without a `memcmp` call (the EMC's compare).
    #[inline]
    pub fn same_as(&self, other: &FlowKey) -> bool {
        let mut diff = 0u64;
        for i in 0..KEY_WORDS {
            diff |= self.words[i] ^ other.words[i];
        }
        diff == 0
    }

    // Typed accessors for the hot paths and for readability.
    #[inline]
    pub fn in_port(&self) -> u32 {
        self.words[0] as u32
    }
    #[inline]
    pub fn dl_type(&self) -> u16 {
        (self.words[0] >> 32) as u16
    }
    #[inline]
    pub fn vlan_tci(&self) -> u16 {
        (self.words[0] >> 48) as u16
    }
    #[inline]
    pub fn nw_proto(&self) -> u8 {
        (self.words[1] >> 48) as u8
    }
    #[inline]
    pub fn nw_frag(&self) -> u8 {
        (self.words[2] >> 56) as u8
    }
    pub fn dl_src(&self) -> [u8; 6] {
        mac_from_u64(self.get(Field::DlSrc) as u64)
    }
    pub fn dl_dst(&self) -> [u8; 6] {
        mac_from_u64(self.get(Field::DlDst) as u64)
    }
    pub fn is_ip(&self) -> bool {
        matches!(self.dl_type(), ethertype::IPV4 | ethertype::IPV6)
    }
}

impl fmt::Debug for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("FlowKey");
        for field in Field::ALL {
            let v = self.get(field);
            if v != 0 {
                s.field(field.name(), &format_args!("{v:#x}"));
            }
        }
        s.finish()
    }
}

/// A MAC address as the low 48 bits of a u64 (network byte order).
pub fn mac_to_u64(mac: [u8; 6]) -> u64 {
    mac.iter().fold(0u64, |acc, b| (acc << 8) | *b as u64)
}

/// The inverse of [`mac_to_u64`].
pub fn mac_from_u64(v: u64) -> [u8; 6] {
    let b = v.to_be_bytes();
    [b[2], b[3], b[4], b[5], b[6], b[7]]
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(v: u64) -> String {
    let m = mac_from_u64(v);
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_do_not_overlap() {
        for a in Field::ALL {
            let mut k = FlowKey::ZERO;
            k.set_exact(a);
            for b in Field::ALL {
                if a == b {
                    continue;
                }
                assert_eq!(k.get(b), 0, "{a} overlaps {b}");
            }
            assert_eq!(k.get(a), a.full_mask());
        }
    }

    #[test]
    fn set_truncates_to_width() {
        let mut k = FlowKey::ZERO;
        k.set(Field::TpSrc, 0x1_2345);
        assert_eq!(k.get(Field::TpSrc), 0x2345);
        assert_eq!(k.get(Field::TpDst), 0);
    }

    #[test]
    fn mac_roundtrip() {
        let m = [0x2e, 0xa9, 0xbe, 0x9e, 0x4d, 0x07];
        assert_eq!(mac_from_u64(mac_to_u64(m)), m);
        assert_eq!(fmt_mac(mac_to_u64(m)), "2e:a9:be:9e:4d:07");
    }

    #[test]
    fn masked_match() {
        let mut k = FlowKey::ZERO;
        k.set(Field::NwSrc, 0x0a01_0203);
        let mut m = FlowKey::ZERO;
        m.set(Field::NwSrc, 0xff00_0000);
        let v = k.masked(&m);
        let mut other = FlowKey::ZERO;
        other.set(Field::NwSrc, 0x0a09_0909);
        assert!(other.matches(&v, &m));
        other.set(Field::NwSrc, 0x0b09_0909);
        assert!(!other.matches(&v, &m));
    }
}

//! A path-compressed binary prefix trie over one field, holding the
//! prefixes (value, length) of a table's rules, so that a lookup can prove
//! with few bits of a key that no rule's prefix of some length matches it.
//!
//! Values are left-aligned in a `u128` (bit 0 of the field is bit 127), so
//! 16-, 32- and 128-bit fields share the code. Nodes sit behind `Arc`s and
//! are copied on write along the changed path only, so a snapshot of the
//! trie costs one pointer.

use std::sync::Arc;

/// The longest segment one node holds. A longer one is a chain of nodes
/// (each without rules and with one child), which a lookup walks to the
/// same answer. 16 bits keep a node at 24 bytes, 40 with its `Arc` header
/// (a 128-bit segment made it 56: a million-rule table has about two nodes
/// per distinct prefix).
const MAX_SEGMENT: u32 = 16;

#[derive(Clone, Debug)]
struct Node {
    /// This node's segment of the prefix, left-aligned; bits past `len` are
    /// 0.
    bits: u16,
    /// Segment length in bits, at most [`MAX_SEGMENT`] (0 only for a root
    /// that branches at once).
    len: u8,
    /// Rules whose prefix ends exactly here.
    n_rules: u32,
    kids: [Option<Arc<Node>>; 2],
}

impl Node {
    #[inline]
    fn bits(&self) -> u128 {
        (self.bits as u128) << (128 - MAX_SEGMENT)
    }

    /// Takes the segment from the top of `v` (left-aligned, `len` bits).
    #[inline]
    fn set_bits(&mut self, v: u128) {
        self.bits = (v >> (128 - MAX_SEGMENT)) as u16;
    }

    fn is_leaf(&self) -> bool {
        self.kids[0].is_none() && self.kids[1].is_none()
    }
}

/// The top `n` bits set.
#[inline]
pub fn top_bits(n: u32) -> u128 {
    if n == 0 {
        0
    } else {
        u128::MAX << (128 - n.min(128))
    }
}

/// `len` bits of `v` from bit `ofs`, left-aligned.
#[inline]
fn segment(v: u128, ofs: u32, len: u32) -> u128 {
    if len == 0 {
        0
    } else {
        (v << ofs) & top_bits(len)
    }
}

#[inline]
fn bit_at(v: u128, ofs: u32) -> usize {
    ((v >> (127 - ofs)) & 1) as usize
}

/// Leading bits on which `node`'s segment and `v` from `ofs` agree.
#[inline]
fn equal_bits(node: &Node, v: u128, ofs: u32) -> u32 {
    let len = node.len as u32;
    let diff = segment(v, ofs, len) ^ node.bits();
    diff.leading_zeros().min(len)
}

/// What a trie lookup found for one key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrieMatch {
    /// Bit `p - 1` is set when some rule's `p`-bit prefix matches the key.
    pub plens: u128,
    /// Leading bits of the key that the answer depends on: every value
    /// sharing them gets the same `plens`.
    pub bits: u32,
}

impl TrieMatch {
    pub fn has_plen(&self, plen: u32) -> bool {
        plen > 0 && self.plens & (1u128 << (plen - 1)) != 0
    }
}

#[derive(Clone, Debug, Default)]
pub struct Trie {
    root: Option<Arc<Node>>,
}

impl Trie {
    /// Adds one rule's prefix (`v` left-aligned, `plen` in 1..=128).
    pub fn insert(&mut self, v: u128, plen: u32) {
        insert(&mut self.root, v & top_bits(plen), 0, plen);
    }

    /// Removes one rule's prefix; false when it was not there.
    pub fn remove(&mut self, v: u128, plen: u32) -> bool {
        remove(&mut self.root, v & top_bits(plen), 0, plen)
    }

    /// Walks the key `v` (left-aligned, `width` bits) down the trie.
    pub fn lookup(&self, v: u128, width: u32) -> TrieMatch {
        let mut m = TrieMatch::default();
        let mut node = self.root.as_deref();
        let mut prev: Option<&Node> = None;
        let mut ofs = 0u32;
        while let Some(n) = node {
            let eq = equal_bits(n, v, ofs);
            ofs += eq;
            if eq < n.len as u32 {
                // The key leaves the trie at bit `ofs`: that bit decides.
                m.bits = ofs + 1;
                return m;
            }
            if n.n_rules > 0 && ofs > 0 {
                m.plens |= 1u128 << (ofs - 1);
            }
            if ofs >= width {
                m.bits = width;
                return m;
            }
            prev = Some(n);
            node = n.kids[bit_at(v, ofs)].as_deref();
        }
        // Fell off a branch: the bit that chose the missing side decides,
        // unless the last node had no children at all.
        m.bits = match prev {
            Some(p) if !p.is_leaf() => ofs + 1,
            _ => ofs,
        };
        m
    }

    /// Nodes and their heap bytes (for the memory estimate).
    pub fn heap_bytes(&self) -> usize {
        fn walk(n: &Option<Arc<Node>>) -> usize {
            match n {
                None => 0,
                Some(a) => std::mem::size_of::<Node>() + 16 + walk(&a.kids[0]) + walk(&a.kids[1]),
            }
        }
        walk(&self.root)
    }
}

/// The path from bit `ofs` to a new prefix's end: one node, or a chain of
/// them when the rest is longer than [`MAX_SEGMENT`].
fn leaf(v: u128, ofs: u32, plen: u32) -> Arc<Node> {
    let len = (plen - ofs).min(MAX_SEGMENT);
    let mut n = Node {
        bits: 0,
        len: len as u8,
        n_rules: 0,
        kids: [None, None],
    };
    n.set_bits(segment(v, ofs, len));
    if ofs + len == plen {
        n.n_rules = 1;
    } else {
        n.kids[bit_at(v, ofs + len)] = Some(leaf(v, ofs + len, plen));
    }
    Arc::new(n)
}

fn insert(slot: &mut Option<Arc<Node>>, v: u128, ofs: u32, plen: u32) {
    let Some(arc) = slot else {
        *slot = Some(leaf(v, ofs, plen));
        return;
    };
    let node = Arc::make_mut(arc);
    let rest = plen - ofs;
    let eq = equal_bits(node, v, ofs).min(rest);
    if eq == node.len as u32 {
        if eq == rest {
            node.n_rules += 1;
        } else {
            let b = bit_at(v, ofs + eq);
            insert(&mut node.kids[b], v, ofs + eq, plen);
        }
        return;
    }
    // Split the node after `eq` bits: a new parent holds the common part.
    let mut tail = node.clone();
    tail.set_bits(node.bits() << eq);
    tail.len -= eq as u8;
    let tail_bit = bit_at(node.bits(), eq);
    let mut parent = Node {
        bits: 0,
        len: eq as u8,
        n_rules: 0,
        kids: [None, None],
    };
    parent.set_bits(node.bits() & top_bits(eq));
    parent.kids[tail_bit] = Some(Arc::new(tail));
    if eq == rest {
        parent.n_rules = 1;
    } else {
        parent.kids[1 - tail_bit] = Some(leaf(v, ofs + eq, plen));
    }
    *node = parent;
}

fn remove(slot: &mut Option<Arc<Node>>, v: u128, ofs: u32, plen: u32) -> bool {
    let Some(arc) = slot else {
        return false;
    };
    let len = arc.len as u32;
    if ofs + len > plen || equal_bits(arc, v, ofs) < len {
        return false;
    }
    let node = Arc::make_mut(arc);
    if ofs + len == plen {
        if node.n_rules == 0 {
            return false;
        }
        node.n_rules -= 1;
    } else {
        let b = bit_at(v, ofs + len);
        if !remove(&mut node.kids[b], v, ofs + len, plen) {
            return false;
        }
    }
    if node.n_rules == 0 {
        match (&node.kids[0], &node.kids[1]) {
            (None, None) => *slot = None,
            (Some(only), None) | (None, Some(only))
                if node.len as u32 + only.len as u32 <= MAX_SEGMENT =>
            {
                // Merge the single child into this node.
                let mut merged = (**only).clone();
                merged.set_bits(node.bits() | (merged.bits() >> node.len));
                merged.len += node.len;
                *node = merged;
            }
            _ => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v32(x: u32) -> u128 {
        (x as u128) << 96
    }

    /// Reference: which prefix lengths of `rules` match `key`.
    fn plens(rules: &[(u32, u32)], key: u32) -> u128 {
        let mut p = 0u128;
        for &(v, len) in rules {
            let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            if key & m == v & m {
                p |= 1 << (len - 1);
            }
        }
        p
    }

    #[test]
    fn lookup_agrees_with_a_scan_and_its_bits_decide() {
        let mut rng = testbed::traffic::Rng::new(0x1234_5678_9abc_def1);
        let mut next = || rng.next_u64();
        for round in 0..50 {
            let mut trie = Trie::default();
            let mut rules: Vec<(u32, u32)> = Vec::new();
            for _ in 0..(1 + round * 3) {
                let len = 1 + (next() % 32) as u32;
                // Few distinct top bits so that prefixes share paths.
                let v = ((next() as u32) & 0xf0f0_0f0f) & (u32::MAX << (32 - len));
                trie.insert(v32(v), len);
                rules.push((v, len));
            }
            // Remove a third of them again.
            for i in (0..rules.len()).rev().step_by(3) {
                let (v, len) = rules.remove(i);
                assert!(trie.remove(v32(v), len));
            }
            for _ in 0..200 {
                let key = (next() as u32) & 0xf0f0_0f0f;
                let m = trie.lookup(v32(key), 32);
                assert_eq!(m.plens, plens(&rules, key), "key {key:#x} rules {rules:x?}");
                // Any key sharing the decided bits gets the same answer.
                let keep = if m.bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - m.bits)
                };
                let other = (key & keep) | (next() as u32 & !keep);
                assert_eq!(plens(&rules, other), m.plens, "bits {}", m.bits);
            }
        }
    }

    /// Reference for 128-bit prefixes (left-aligned values).
    fn plens128(rules: &[(u128, u32)], key: u128) -> u128 {
        let mut p = 0u128;
        for &(v, len) in rules {
            if (key ^ v) & top_bits(len) == 0 {
                p |= 1 << (len - 1);
            }
        }
        p
    }

    #[test]
    fn long_prefixes_chain_and_agree_with_a_scan() {
        let mut rng = testbed::traffic::Rng::new(0x0bad_cafe_f00d_1234);
        let mut next = || rng.next_u64();
        for round in 0..40 {
            let mut trie = Trie::default();
            let mut rules: Vec<(u128, u32)> = Vec::new();
            // Few distinct bits (a sparse pattern over all 128) so that
            // long prefixes share long paths and chains split and merge.
            let pattern: u128 = 0x8000_0000_0000_0001_0000_0000_8000_0001;
            let value = |next: &mut dyn FnMut() -> u64| {
                let r = ((next() as u128) << 64) | next() as u128;
                (r & pattern) | 0x2001_0db8 << 96
            };
            for _ in 0..(1 + round * 2) {
                let len = 1 + (next() % 128) as u32;
                let v = value(&mut next) & top_bits(len);
                trie.insert(v, len);
                rules.push((v, len));
            }
            for i in (0..rules.len()).rev().step_by(2) {
                let (v, len) = rules.remove(i);
                assert!(trie.remove(v, len));
            }
            for _ in 0..100 {
                let key = value(&mut next);
                let m = trie.lookup(key, 128);
                assert_eq!(m.plens, plens128(&rules, key), "key {key:#x}");
                let keep = top_bits(m.bits);
                let other = (key & keep) | (value(&mut next) & !keep);
                assert_eq!(plens128(&rules, other), m.plens, "bits {}", m.bits);
            }
            for (v, len) in rules.drain(..) {
                assert!(trie.remove(v, len));
            }
            assert!(trie.root.is_none());
        }
    }

    #[test]
    fn empty_after_removing_everything() {
        let mut t = Trie::default();
        t.insert(v32(0x0a00_0000), 8);
        t.insert(v32(0x0a01_0000), 16);
        t.insert(v32(0x0a01_0000), 16);
        let snap = t.clone();
        assert!(t.remove(v32(0x0a01_0000), 16));
        assert!(t.remove(v32(0x0a01_0000), 16));
        assert!(!t.remove(v32(0x0a01_0000), 16));
        assert!(t.remove(v32(0x0a00_0000), 8));
        assert!(t.root.is_none());
        assert_eq!(
            snap.lookup(v32(0x0a01_0203), 32).plens,
            (1 << 7) | (1 << 15)
        );
    }
}

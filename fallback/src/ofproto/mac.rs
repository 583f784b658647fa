//! The MAC learning table behind the NORMAL action.

use hashbrown::HashMap;

/// OVS's defaults: 2048 entries, 300 s aging.
pub const DEFAULT_MAX_ENTRIES: usize = 2048;
pub const DEFAULT_AGING_MS: u64 = 300_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MacEntry {
    port: u32,
    used_ms: u64,
}

/// A source MAC to learn, produced by xlate and applied by the caller (xlate
/// itself stays free of side effects).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacLearn {
    pub mac: u64,
    pub vlan: u16,
    pub port: u32,
}

/// (MAC, VLAN) → port.
#[derive(Clone, Debug)]
pub struct MacTable {
    entries: HashMap<(u64, u16), MacEntry>,
    max_entries: usize,
    aging_ms: u64,
    /// Bumped whenever a lookup could now give another answer.
    version: u64,
}

impl Default for MacTable {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ENTRIES, DEFAULT_AGING_MS)
    }
}

impl MacTable {
    pub fn new(max_entries: usize, aging_ms: u64) -> Self {
        MacTable {
            entries: HashMap::new(),
            max_entries: max_entries.max(1),
            aging_ms,
            version: 0,
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn lookup(&self, mac: u64, vlan: u16) -> Option<u32> {
        self.entries.get(&(mac, vlan)).map(|e| e.port)
    }

    /// The (MAC, VLAN) pairs whose [`MacTable::lookup`] answer differs
    /// between `self` and `newer` (learned, moved or aged out), for
    /// revalidating only the megaflows that asked for them.
    pub fn changed_answers(&self, newer: &MacTable) -> Vec<(u64, u16)> {
        let mut out: Vec<(u64, u16)> = newer
            .entries
            .iter()
            .filter(|(k, e)| self.entries.get(*k).map(|o| o.port) != Some(e.port))
            .map(|(k, _)| *k)
            .collect();
        out.extend(
            self.entries
                .keys()
                .filter(|k| !newer.entries.contains_key(*k))
                .copied(),
        );
        out
    }

    /// Learns (or refreshes) an entry; returns true when the table's answer
    /// changed (new entry or moved port), which calls for revalidation.
    pub fn learn(&mut self, l: MacLearn, now_ms: u64) -> bool {
        if let Some(e) = self.entries.get_mut(&(l.mac, l.vlan)) {
            e.used_ms = now_ms;
            if e.port == l.port {
                return false;
            }
            e.port = l.port;
            self.version += 1;
            return true;
        }
        if self.entries.len() >= self.max_entries {
            // Evict the least recently used entry.
            if let Some(k) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used_ms)
                .map(|(k, _)| *k)
            {
                self.entries.remove(&k);
            }
        }
        self.entries.insert(
            (l.mac, l.vlan),
            MacEntry {
                port: l.port,
                used_ms: now_ms,
            },
        );
        self.version += 1;
        true
    }

    /// Drops entries idle for longer than the aging time; true if any went.
    pub fn expire(&mut self, now_ms: u64) -> bool {
        let before = self.entries.len();
        let aging = self.aging_ms;
        self.entries
            .retain(|_, e| now_ms.saturating_sub(e.used_ms) <= aging);
        let changed = self.entries.len() != before;
        if changed {
            self.version += 1;
        }
        changed
    }

    /// Forgets every entry on a port (port removed).
    pub fn flush_port(&mut self, port: u32) {
        let before = self.entries.len();
        self.entries.retain(|_, e| e.port != port);
        if self.entries.len() != before {
            self.version += 1;
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learn_move_expire() {
        let mut t = MacTable::new(2, 1000);
        let l = |mac, port| MacLearn { mac, vlan: 0, port };
        assert!(t.learn(l(1, 1), 0));
        assert!(!t.learn(l(1, 1), 10));
        assert!(t.learn(l(1, 2), 20));
        assert_eq!(t.lookup(1, 0), Some(2));
        assert_eq!(t.lookup(1, 5), None);
        t.learn(l(2, 1), 30);
        t.learn(l(3, 1), 40); // evicts mac 1 (least recently used)
        assert_eq!(t.len(), 2);
        assert_eq!(t.lookup(1, 0), None);
        assert!(t.expire(1035));
        assert_eq!(t.len(), 1);
        t.flush_port(1);
        assert!(t.is_empty());
    }
}

//! Tokenising (as OVS's `ofputil_parse_key_value` does it) and the
//! numbers and addresses inside values.

use super::*;

// ---------------------------------------------------------------------------
// Tokenising, as OVS's ofputil_parse_key_value does it.

/// One `key=value`, `key:value`, `key(value)` or bare `key`.
#[derive(Debug, Clone, Copy)]
pub(super) struct KeyValue<'a> {
    pub(super) key: &'a str,
    pub(super) value: &'a str,
    /// Whether a value was given at all (`nw_src` versus `nw_src=`).
    pub(super) has_value: bool,
    /// The whole token, for error messages.
    pub(super) token: &'a str,
}

pub(super) struct KeyValues<'a> {
    pub(super) rest: &'a str,
}

impl<'a> KeyValues<'a> {
    pub(super) fn new(s: &'a str) -> Self {
        KeyValues { rest: s }
    }
}

pub(super) fn is_delimiter(c: char) -> bool {
    matches!(c, ',' | ' ' | '\t' | '\r' | '\n')
}

/// Length of a value ending at one of `delims` (or the end), skipping over
/// balanced parentheses.
pub(super) fn value_len(s: &str, delims: &[char]) -> usize {
    let bytes = s.as_bytes();
    let mut n = 0;
    while n < bytes.len() {
        let c = bytes[n] as char;
        if delims.contains(&c) {
            return n;
        }
        if c == '(' {
            let mut level = 0i32;
            while n < bytes.len() {
                match bytes[n] {
                    b'(' => level += 1,
                    b')' => level -= 1,
                    _ => {}
                }
                n += 1;
                if level <= 0 {
                    break;
                }
            }
        } else {
            n += 1;
        }
    }
    n
}

impl<'a> Iterator for KeyValues<'a> {
    type Item = KeyValue<'a>;

    fn next(&mut self) -> Option<KeyValue<'a>> {
        let s = self.rest.trim_start_matches(is_delimiter);
        if s.is_empty() {
            self.rest = s;
            return None;
        }
        let key_len = s
            .find(|c: char| matches!(c, ':' | '=' | '(') || is_delimiter(c))
            .unwrap_or(s.len());
        let key = &s[..key_len];
        let delim = s[key_len..].chars().next();
        let after_key = &s[key_len + delim.map_or(0, char::len_utf8)..];
        let delims: &[char] = match delim {
            Some(':') | Some('=') => &[',', ' ', '\t', '\r', '\n'],
            Some('(') => &[')'],
            _ => {
                self.rest = after_key;
                return Some(KeyValue {
                    key,
                    value: "",
                    has_value: false,
                    token: key,
                });
            }
        };
        let vlen = value_len(after_key, delims);
        let value = &after_key[..vlen];
        let consumed_delim = after_key[vlen..].chars().next().map_or(0, char::len_utf8);
        let token_len = s.len() - after_key.len() + vlen + usize::from(delim == Some('('));
        let token = &s[..token_len.min(s.len())];
        self.rest = &after_key[vlen + consumed_delim..];
        Some(KeyValue {
            key,
            value,
            has_value: true,
            token,
        })
    }
}

/// Splits a flow at its action list, as OVS does: the first "action"
/// (usually `actions=`) ends the match; the actions follow its `=`.
pub(super) fn split_actions(s: &str) -> Option<(&str, &str)> {
    let at = s.find("action")?;
    let after = &s[at..];
    let eq = after.find('=')?;
    Some((&s[..at], &after[eq + 1..]))
}

// ---------------------------------------------------------------------------
// Numbers and addresses

/// An unsigned integer as C's strtoull with base 0 reads it: `0x` hex,
/// a leading `0` octal, else decimal. `None` when malformed or too large.
pub(super) fn parse_uint(s: &str) -> Option<u128> {
    let (digits, radix) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (h, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u128::from_str_radix(digits, radix).ok()
}

pub(super) fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A MAC address as OVS scans it: six 1- or 2-digit hex bytes.
pub(super) fn parse_mac(s: &str) -> Option<u64> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(&parts) {
        if part.is_empty() || part.len() > 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    Some(mac_to_u64(mac))
}

pub(super) fn parse_ipv4(s: &str) -> Option<u32> {
    s.parse::<Ipv4Addr>().ok().map(u32::from)
}

pub(super) fn parse_ipv6(s: &str) -> Option<u128> {
    s.parse::<Ipv6Addr>().ok().map(u128::from)
}

/// The mask of the first `len` bits of a `bits`-wide field.
pub(super) fn prefix_mask(bits: u32, len: u32) -> u128 {
    let full = u128::MAX >> (128 - bits);
    full & !full.checked_shr(len).unwrap_or(0)
}

/// `Some(prefix length)` when `mask` (of `bits` width) is a CIDR mask.
pub(super) fn cidr_len(mask: u128, bits: u32) -> Option<u32> {
    let ones = mask.count_ones();
    (prefix_mask(bits, ones) == mask).then_some(ones)
}

/// IPv6 text as glibc's inet_ntop prints it (what OVS prints).
pub(super) fn fmt_ipv6(v: u128) -> String {
    let words: Vec<u16> = (0..8).map(|i| (v >> (112 - 16 * i)) as u16).collect();
    // Longest run of zero words (first one on ties); runs of one don't count.
    let (mut best_base, mut best_len) = (None, 0usize);
    let mut i = 0;
    while i < 8 {
        if words[i] == 0 {
            let start = i;
            while i < 8 && words[i] == 0 {
                i += 1;
            }
            if i - start > best_len {
                best_base = Some(start);
                best_len = i - start;
            }
        } else {
            i += 1;
        }
    }
    if best_len < 2 {
        best_base = None;
    }
    let mut out = String::new();
    let mut i = 0;
    while i < 8 {
        if Some(i) == best_base {
            if i == 0 {
                out.push(':');
            }
            out.push(':');
            i += best_len;
            continue;
        }
        if i == 6
            && best_base == Some(0)
            && (best_len == 6 || (best_len == 5 && words[5] == 0xffff))
        {
            let _ = write!(out, "{}", Ipv4Addr::from(v as u32));
            break;
        }
        let _ = write!(out, "{:x}", words[i]);
        if i < 7 {
            out.push(':');
        }
        i += 1;
    }
    out
}

//! One audited check as a fixed-size, plain-bytes record: what travels through the
//! shared-memory queue. Pure Rust, no Postgres types, so the encoding is unit-tested.
//! Text fields have fixed capacities; longer values are cut at a character boundary
//! (docs/AUDIT.md lists the limits).

/// Byte capacities of the text fields.
pub const FEATURE_MAX: usize = 96;
pub const USER_ID_MAX: usize = 96;
pub const USER_AGENT_MAX: usize = 128;
/// The longest inet text is 49 bytes ("ffff:...:255.255.255.255/128").
pub const IP_MAX: usize = 64;

/// A text field stored inline: a length byte (0..=N, or NONE for SQL NULL) and the bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct InlineText<const N: usize> {
    len: u8,
    bytes: [u8; N],
}

const NONE: u8 = u8::MAX;

impl<const N: usize> InlineText<N> {
    pub fn new(value: Option<&str>) -> Self {
        const { assert!(N < NONE as usize) };
        let mut t = InlineText { len: NONE, bytes: [0; N] };
        if let Some(v) = value {
            let v = truncate(v, N);
            t.bytes[..v.len()].copy_from_slice(v.as_bytes());
            t.len = v.len() as u8;
        }
        t
    }

    pub fn get(&self) -> Option<&str> {
        if self.len == NONE {
            return None;
        }
        let bytes = self.bytes.get(..self.len as usize)?;
        // Written from a &str cut at a char boundary, so this holds; a record never fails
        // to decode for it, it just loses the field.
        std::str::from_utf8(bytes).ok()
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// What a check decided, as recorded. `reason` is `Reason::ordinal()` (0: none).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Record {
    /// The database the check ran in: the writer only writes its own database's records.
    pub database_oid: u32,
    pub result: bool,
    pub cached: bool,
    pub reason: u8,
    /// Microseconds since 2000-01-01, Postgres' timestamptz.
    pub checked_at: i64,
    pub workspace_id: [u8; 16],
    pub feature: InlineText<FEATURE_MAX>,
    pub user_id: InlineText<USER_ID_MAX>,
    pub user_agent: InlineText<USER_AGENT_MAX>,
    pub ip_address: InlineText<IP_MAX>,
}

/// Accept exactly what `inet` accepts in its plain form: an IPv4 or IPv6 address with an
/// optional `/bits` netmask. Anything else is `None`, so the writer's `::inet` cast cannot
/// fail on a value that passed here (Rust's address grammar is stricter than Postgres').
pub fn valid_inet(s: &str) -> Option<&str> {
    let s = s.trim();
    let (addr, bits) = match s.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let max_bits = match addr.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(_) => 32,
        std::net::IpAddr::V6(_) => 128,
    };
    if let Some(b) = bits {
        if b.is_empty() || !b.bytes().all(|c| c.is_ascii_digit()) || b.len() > 3 {
            return None;
        }
        if b.parse::<u32>().ok()? > max_bits {
            return None;
        }
    }
    (s.len() <= IP_MAX).then_some(s)
}

/// The queue's memory per record; docs/AUDIT.md quotes it.
pub const RECORD_SIZE: usize = 424;
const _: () = assert!(std::mem::size_of::<Record>() == RECORD_SIZE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_text_round_trips_null_empty_and_values() {
        assert_eq!(InlineText::<8>::new(None).get(), None);
        assert_eq!(InlineText::<8>::new(Some("")).get(), Some(""));
        assert_eq!(InlineText::<8>::new(Some("psql")).get(), Some("psql"));
        assert_eq!(InlineText::<8>::new(Some("12345678")).get(), Some("12345678"));
    }

    #[test]
    fn long_text_is_cut_on_a_char_boundary() {
        assert_eq!(InlineText::<4>::new(Some("abcdef")).get(), Some("abcd"));
        // "é" is two bytes: 3 bytes of "aéé" would split the second one.
        assert_eq!(InlineText::<4>::new(Some("aéé")).get(), Some("aé"));
        assert_eq!(truncate("€", 2), "");
    }

    #[test]
    fn inet_validation_accepts_addresses_and_netmasks_only() {
        assert_eq!(valid_inet("10.0.0.1"), Some("10.0.0.1"));
        assert_eq!(valid_inet(" 10.0.0.0/8 "), Some("10.0.0.0/8"));
        assert_eq!(valid_inet("::1"), Some("::1"));
        assert_eq!(valid_inet("2001:db8::/32"), Some("2001:db8::/32"));
        assert_eq!(valid_inet("10.0.0.1/33"), None);
        assert_eq!(valid_inet("10.0.0.1/"), None);
        assert_eq!(valid_inet("10.0.0.1/+8"), None);
        assert_eq!(valid_inet("not an ip"), None);
        assert_eq!(valid_inet("10.0.0"), None);
        assert_eq!(valid_inet("fe80::1%eth0"), None);
        assert_eq!(valid_inet(""), None);
    }
}

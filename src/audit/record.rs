//! One audited check as a fixed-size, plain-bytes record: what travels through the
//! shared-memory queue. Pure Rust, no Postgres types, so the encoding is unit-tested.
//! Text fields have fixed capacities; longer values are cut at a character boundary
//! (docs/AUDIT.md lists the limits).

/// Byte capacities of the text fields.
pub const FEATURE_MAX: usize = 96;
pub const USER_ID_MAX: usize = 96;
pub const USER_AGENT_MAX: usize = 128;
/// The longest inet text is 49 bytes ("ffff:...:255.255.255.255/128"); values are stored in
/// PostgreSQL's canonical form (inet_out), which never exceeds that.
pub const IP_MAX: usize = 64;
/// A role name is at most NAMEDATALEN - 1 = 63 bytes.
pub const ROLE_MAX: usize = 63;

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
    /// The database role of the session (`session_user`), whatever identity it asserted.
    pub session_role: InlineText<ROLE_MAX>,
    /// The connection's own address (`inet_client_addr()`), whatever address it asserted.
    pub connection_addr: InlineText<IP_MAX>,
    /// The units a `consume` or `refund` moved; none for a check.
    pub quantity: Quantity,
}

/// An optional quantity as plain bytes: `i64::MIN` (never a valid quantity, which is at
/// least 1) stands for SQL NULL.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quantity(i64);

impl Quantity {
    pub fn get(self) -> Option<i64> {
        (self.0 != i64::MIN).then_some(self.0)
    }
}

impl From<Option<i64>> for Quantity {
    fn from(q: Option<i64>) -> Self {
        Quantity(q.unwrap_or(i64::MIN))
    }
}

/// The record's size (docs/AUDIT.md quotes it); a queue entry adds its stamp, in 576 bytes.
pub const RECORD_SIZE: usize = 560;
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
    fn quantity_round_trips_none_and_values() {
        assert_eq!(Quantity::from(None).get(), None);
        assert_eq!(Quantity::from(Some(1)).get(), Some(1));
        assert_eq!(Quantity::from(Some(i64::MAX)).get(), Some(i64::MAX));
    }

}

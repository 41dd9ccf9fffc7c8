//! Audit records as the input of a binary `COPY ... FROM`: what the writer hands to
//! PostgreSQL's bulk-insert path (the one COPY uses: rows buffered and inserted a page at a
//! time, one WAL record per page rather than per row), instead of building arrays for an
//! `INSERT ... SELECT unnest(...)` that PostgreSQL would take apart again row by row.
//! Pure Rust: the byte layout is PostgreSQL's documented binary COPY format (header, then per
//! row a field count and each field's length and bytes in the type's binary send format,
//! then a trailer) and is unit-tested here.

use super::record::Record;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The columns, in the order each row carries them (`id` is left to its identity default).
pub const COLUMNS: [&std::ffi::CStr; 12] = [
    c"checked_at",
    c"workspace_id",
    c"user_id",
    c"feature",
    c"result",
    c"reason",
    c"cached",
    c"user_agent",
    c"ip_address",
    c"session_role",
    c"connection_addr",
    c"quantity",
];

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Append the binary COPY stream of `rows` to `out` (cleared first); `reason` gives the code
/// stored for a record's reason ordinal.
pub fn encode(rows: &[Record], reason: impl Fn(u8) -> Option<&'static str>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(SIGNATURE);
    out.extend_from_slice(&0i32.to_be_bytes()); // flags: no OIDs
    out.extend_from_slice(&0i32.to_be_bytes()); // header extension: none
    // Most rows of a batch share their addresses: each distinct one is parsed once in a row.
    let mut last: Option<(&str, Option<InetBinary>)> = None;
    for r in rows {
        out.extend_from_slice(&(COLUMNS.len() as i16).to_be_bytes());
        field(out, Some(&r.checked_at.to_be_bytes()));
        field(out, Some(&r.workspace_id));
        field(out, r.user_id.get().map(str::as_bytes));
        field(out, r.feature.get().map(str::as_bytes));
        field(out, Some(&[r.result as u8]));
        field(out, reason(r.reason).map(str::as_bytes));
        field(out, Some(&[r.cached as u8]));
        field(out, r.user_agent.get().map(str::as_bytes));
        inet_field(out, r.ip_address.get(), &mut last);
        field(out, r.session_role.get().map(str::as_bytes));
        inet_field(out, r.connection_addr.get(), &mut last);
        field(out, r.quantity.get().map(i64::to_be_bytes).as_ref().map(|b| &b[..]));
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
}

fn field(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(v) => {
            out.extend_from_slice(&(v.len() as i32).to_be_bytes());
            out.extend_from_slice(v);
        }
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
    }
}

/// An inet in its binary send format. The records hold PostgreSQL's canonical text of the
/// address (`inet_out`), which always parses; should one ever not, the row is sent with the
/// text itself, which PostgreSQL then refuses for that row alone (the writer logs and drops
/// it) rather than storing a wrong address.
fn inet_field<'a>(out: &mut Vec<u8>, text: Option<&'a str>, last: &mut Option<(&'a str, Option<InetBinary>)>) {
    let Some(text) = text else { return field(out, None) };
    if last.as_ref().is_none_or(|(t, _)| *t != text) {
        *last = Some((text, inet_binary(text)));
    }
    match last {
        Some((_, Some(b))) => field(out, Some(b.as_bytes())),
        _ => field(out, Some(text.as_bytes())),
    }
}

/// inet_send's layout: family (PGSQL_AF_INET = 2, PGSQL_AF_INET6 = 3), bits, is_cidr (0),
/// address length, address bytes.
pub struct InetBinary {
    bytes: [u8; 20],
    len: usize,
}

impl InetBinary {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

pub fn inet_binary(text: &str) -> Option<InetBinary> {
    let (addr, bits) = match text.split_once('/') {
        Some((a, b)) => (a, Some(b.parse::<u8>().ok()?)),
        None => (text, None),
    };
    let mut bytes = [0u8; 20];
    let len = if let Ok(v4) = addr.parse::<Ipv4Addr>() {
        let bits = bits.unwrap_or(32);
        if bits > 32 {
            return None;
        }
        bytes[..4].copy_from_slice(&[2, bits, 0, 4]);
        bytes[4..8].copy_from_slice(&v4.octets());
        8
    } else {
        let v6 = addr.parse::<Ipv6Addr>().ok()?;
        let bits = bits.unwrap_or(128);
        if bits > 128 {
            return None;
        }
        bytes[..4].copy_from_slice(&[3, bits, 0, 16]);
        bytes[4..20].copy_from_slice(&v6.octets());
        20
    };
    Some(InetBinary { bytes, len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::{InlineText, Quantity};

    fn record() -> Record {
        Record {
            database_oid: 5,
            result: true,
            cached: false,
            reason: 0,
            checked_at: 0x0102_0304_0506_0708,
            workspace_id: [7; 16],
            feature: InlineText::new(Some("ccp-05")),
            user_id: InlineText::new(None),
            user_agent: InlineText::new(Some("ua")),
            ip_address: InlineText::new(Some("10.0.0.1")),
            session_role: InlineText::new(Some("app")),
            connection_addr: InlineText::new(None),
            quantity: Quantity::from(Some(3)),
        }
    }

    #[test]
    fn a_row_is_laid_out_as_binary_copy_expects() {
        let mut out = Vec::new();
        encode(&[record()], |_| None, &mut out);
        let mut expected = Vec::new();
        expected.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend_from_slice(&[0, 12]);
        expected.extend_from_slice(&[0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]); // checked_at
        expected.extend_from_slice(&[0, 0, 0, 16]);
        expected.extend_from_slice(&[7; 16]); // workspace_id
        expected.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]); // user_id NULL
        expected.extend_from_slice(&[0, 0, 0, 6]);
        expected.extend_from_slice(b"ccp-05");
        expected.extend_from_slice(&[0, 0, 0, 1, 1]); // result
        expected.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]); // reason NULL
        expected.extend_from_slice(&[0, 0, 0, 1, 0]); // cached
        expected.extend_from_slice(&[0, 0, 0, 2]);
        expected.extend_from_slice(b"ua");
        expected.extend_from_slice(&[0, 0, 0, 8, 2, 32, 0, 4, 10, 0, 0, 1]); // ip_address
        expected.extend_from_slice(&[0, 0, 0, 3]);
        expected.extend_from_slice(b"app");
        expected.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]); // connection_addr NULL
        expected.extend_from_slice(&[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 3]); // quantity
        expected.extend_from_slice(&[0xff, 0xff]); // trailer
        assert_eq!(out, expected);
    }

    #[test]
    fn reason_codes_and_null_quantity_are_encoded() {
        let mut r = record();
        r.reason = 2;
        r.quantity = Quantity::from(None);
        let mut out = Vec::new();
        encode(&[r], |n| (n == 2).then_some("TIER_INSUFFICIENT"), &mut out);
        let needle = [&[0u8, 0, 0, 17][..], b"TIER_INSUFFICIENT"].concat();
        assert!(out.windows(needle.len()).any(|w| w == needle));
        // The last field (quantity) is NULL, then the trailer.
        assert_eq!(&out[out.len() - 6..], &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn inet_canonical_forms_encode_like_inet_send() {
        assert_eq!(inet_binary("127.0.0.1").unwrap().as_bytes(), &[2, 32, 0, 4, 127, 0, 0, 1]);
        assert_eq!(inet_binary("10.1.0.0/16").unwrap().as_bytes(), &[2, 16, 0, 4, 10, 1, 0, 0]);
        let v6 = inet_binary("::1").unwrap();
        assert_eq!(&v6.as_bytes()[..4], &[3, 128, 0, 16]);
        assert_eq!(v6.as_bytes()[19], 1);
        let mapped = inet_binary("::ffff:1.2.3.4").unwrap();
        assert_eq!(&mapped.as_bytes()[14..20], &[0xff, 0xff, 1, 2, 3, 4]);
        assert_eq!(inet_binary("2001:db8::/32").unwrap().as_bytes()[..6], [3, 32, 0, 16, 0x20, 0x01]);
        assert!(inet_binary("10.0.0.1/33").is_none());
        assert!(inet_binary("not an address").is_none());
    }
}

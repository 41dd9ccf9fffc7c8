//! `Stripe-Signature` header verification.
//!
//! Mirrors stripe-python 16.1.0 `stripe/_webhook.py`
//! (`WebhookSignature._get_timestamp_and_signatures` + `verify_header`), cross-read
//! against stripe-node 23.1.0 `Webhooks.ts` (`parseHeader`, `parseEventDetails`,
//! `validateComputedSignature`). What both SDKs do, and so what we do:
//! - header split on `,`; each item split on `=`; the value is the text between the
//!   first and the second `=` (python `split("=", 2)[1]`, node `split('=')[1]`);
//! - the HMAC input is `"<parsed integer t>.<payload>"`, i.e. the *re-formatted*
//!   timestamp (`t=007` signs `7.`), lowercase hex, compared as strings;
//! - check order: timestamp/signatures parse -> any `v1` present -> signature match
//!   -> tolerance; other schemes (`v0`, ...) are ignored;
//! - tolerance only rejects timestamps older than `now - tolerance`; a timestamp in
//!   the future, however far, is accepted; tolerance 0 disables the check.
//!
//! Where the SDKs disagree we take the stricter reading (see `parse_header`,
//! `parse_timestamp`, and the negative-tolerance note in `verify`).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

const EXPECTED_SCHEME: &str = "v1";

/// Largest `Stripe-Signature` header accepted (8 KiB). A real one, `t=` and a few `v1=` and
/// `v0=` values of 64 hex digits each, is well under 1 KiB; a larger one is refused (54000)
/// before it is parsed.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// Why a header was rejected. Carries no input data, so neither the secret nor the
/// payload can leak through `Debug`/`Display`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    NoTimestampOrSignatures,
    NoExpectedScheme,
    NoMatch,
    OutsideTolerance,
}

impl SignatureError {
    /// The SDK's message. stripe-python appends ` v1` to the second and ` (<t>)` to
    /// the fourth; stripe-node uses these texts as they are (plus advice text on
    /// `NoMatch`).
    pub fn message(&self) -> &'static str {
        match self {
            SignatureError::NoTimestampOrSignatures => {
                "Unable to extract timestamp and signatures from header"
            }
            SignatureError::NoExpectedScheme => "No signatures found with expected scheme",
            SignatureError::NoMatch => {
                "No signatures found matching the expected signature for payload"
            }
            SignatureError::OutsideTolerance => "Timestamp outside the tolerance zone",
        }
    }
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for SignatureError {}

/// Verifies `header` for `payload` against every secret in `secrets` (rotation:
/// several may be active). Returns the header's timestamp.
///
/// `secrets` that are empty or only whitespace are never used: the SDKs refuse
/// such a secret outright ("No webhook secret value was provided"); having no
/// variant for that, we let it match nothing, so it ends in `NoMatch`.
///
/// Tolerance: `tolerance_secs == 0` disables the age check (both SDKs). A negative
/// tolerance is applied as python does (`if tolerance and t < now - tolerance`),
/// which rejects nearly everything (fail closed); node would skip the check.
pub fn verify(
    payload: &[u8],
    header: &str,
    secrets: &[&[u8]],
    tolerance_secs: i64,
    now_unix: i64,
) -> Result<i64, SignatureError> {
    let parsed = parse_header(header)?;
    if parsed.signatures.is_empty() {
        return Err(SignatureError::NoExpectedScheme);
    }

    let mut matched = false;
    for secret in secrets.iter().filter(|s| !is_blank_secret(s)) {
        let Some(expected) = try_compute_signature(payload, secret, parsed.timestamp) else {
            continue;
        };
        for sig in &parsed.signatures {
            // No early exit: the work done does not depend on which one matched.
            matched |= constant_time_eq(expected.as_bytes(), sig.as_bytes());
        }
    }
    if !matched {
        return Err(SignatureError::NoMatch);
    }

    // i128: no overflow for any i64 inputs.
    if tolerance_secs != 0
        && (parsed.timestamp as i128) < (now_unix as i128) - (tolerance_secs as i128)
    {
        return Err(SignatureError::OutsideTolerance);
    }
    Ok(parsed.timestamp)
}

/// `t=<timestamp>,v1=<hex>`, the form of python's
/// `WebhookSignature.generate_signature_header` / node's `generateTestHeaderString`.
pub fn sign_header(payload: &[u8], secret: &[u8], timestamp: i64) -> String {
    format!(
        "t={},{}={}",
        timestamp,
        EXPECTED_SCHEME,
        compute_signature(payload, secret, timestamp)
    )
}

struct ParsedHeader<'a> {
    timestamp: i64,
    signatures: Vec<&'a str>,
}

/// Python semantics, which are the stricter of the two SDKs:
/// - the *first* `t` item gives the timestamp (node: the last);
/// - a `t` or `v1` item with no `=` at all fails the whole parse (python raises
///   IndexError, reported as "Unable to extract..."; node would keep `undefined`).
///
/// Keys are compared exactly: ` t=1` has key ` t` and is not a timestamp.
fn parse_header(header: &str) -> Result<ParsedHeader<'_>, SignatureError> {
    let mut timestamp_text: Option<&str> = None;
    let mut signatures = Vec::new();
    for item in header.split(',') {
        let mut parts = item.split('=');
        let key = parts.next().unwrap_or("");
        let value = parts.next();
        if key == "t" {
            let value = value.ok_or(SignatureError::NoTimestampOrSignatures)?;
            if timestamp_text.is_none() {
                timestamp_text = Some(value);
            }
        } else if key == EXPECTED_SCHEME {
            signatures.push(value.ok_or(SignatureError::NoTimestampOrSignatures)?);
        }
    }
    let text = timestamp_text.ok_or(SignatureError::NoTimestampOrSignatures)?;
    let timestamp = parse_timestamp(text).ok_or(SignatureError::NoTimestampOrSignatures)?;
    Ok(ParsedHeader {
        timestamp,
        signatures,
    })
}

/// Accepts what both `int()` (python) and `parseInt(_, 10)` (node) accept alike:
/// optional ASCII whitespace around, an optional sign, ASCII digits. Rejected
/// although one SDK takes it: `1_000` and non-ASCII digits (python), trailing
/// junk like `12abc` (node), and values outside i64 (python has big integers).
fn parse_timestamp(text: &str) -> Option<i64> {
    let t = text.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\x0b');
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // i64's FromStr takes exactly: optional sign then ASCII digits.
    t.parse::<i64>().ok()
}

/// The SDKs' blank check: empty after stripping ` \t\r\n\f\v`.
fn is_blank_secret(secret: &[u8]) -> bool {
    secret
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'\x0c' | b'\x0b'))
}

/// `None` never happens for HMAC (any key length is valid); handled anyway so
/// that no panic path exists and verification fails closed.
fn try_compute_signature(payload: &[u8], secret: &[u8], timestamp: i64) -> Option<String> {
    let mut mac = HmacSha256::new_from_slice(secret).ok()?;
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    Some(hex::encode(mac.finalize().into_bytes()))
}

fn compute_signature(payload: &[u8], secret: &[u8], timestamp: i64) -> String {
    try_compute_signature(payload, secret, timestamp).unwrap_or_default()
}

/// Equality whose time depends only on the lengths (like python's
/// `hmac.compare_digest`). Compared as strings, not decoded bytes, so an
/// upper-case hex signature fails just as it does in the SDKs.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test_secret";
    const OTHER: &[u8] = b"whsec_other_secret";
    const PAYLOAD: &[u8] = br#"{"id":"evt_1","object":"event"}"#;
    const NOW: i64 = 1_700_000_000;

    fn sig(payload: &[u8], secret: &[u8], t: i64) -> String {
        compute_signature(payload, secret, t)
    }

    #[test]
    fn valid_header_returns_timestamp() {
        let h = sign_header(PAYLOAD, SECRET, NOW);
        assert_eq!(verify(PAYLOAD, &h, &[SECRET], 300, NOW), Ok(NOW));
    }

    #[test]
    fn sign_header_has_sdk_shape() {
        let h = sign_header(PAYLOAD, SECRET, 12345);
        let (t, v1) = h.split_once(',').unwrap();
        assert_eq!(t, "t=12345");
        let hexsig = v1.strip_prefix("v1=").unwrap();
        assert_eq!(hexsig.len(), 64);
        assert!(hexsig
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    }

    #[test]
    fn known_answer_hmac() {
        // From python's hmac/hashlib, independent of this code.
        assert_eq!(
            sign_header(b"", b"key", 0),
            "t=0,v1=85841b4efc3cd7776c3c8f9b7cca9e281c550e5d19889d78e9e669c6337f000d"
        );
        assert_eq!(
            sign_header(br#"{"a":1}"#, b"whsec_test", 1_700_000_000),
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
    }

    #[test]
    fn tampered_body_is_no_match() {
        let h = sign_header(PAYLOAD, SECRET, NOW);
        let tampered = br#"{"id":"evt_2","object":"event"}"#;
        assert_eq!(
            verify(tampered, &h, &[SECRET], 300, NOW),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn wrong_secret_is_no_match() {
        let h = sign_header(PAYLOAD, OTHER, NOW);
        assert_eq!(
            verify(PAYLOAD, &h, &[SECRET], 300, NOW),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn tampered_timestamp_is_no_match() {
        let good = sig(PAYLOAD, SECRET, NOW);
        let h = format!("t={},v1={}", NOW + 1, good);
        assert_eq!(
            verify(PAYLOAD, &h, &[SECRET], 300, NOW),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn old_timestamp_is_outside_tolerance() {
        let t = NOW - 301;
        let h = sign_header(PAYLOAD, SECRET, t);
        assert_eq!(
            verify(PAYLOAD, &h, &[SECRET], 300, NOW),
            Err(SignatureError::OutsideTolerance)
        );
    }

    #[test]
    fn timestamp_exactly_at_tolerance_edge_is_accepted() {
        // python: t < now - tolerance rejects; equality passes.
        let t = NOW - 300;
        let h = sign_header(PAYLOAD, SECRET, t);
        assert_eq!(verify(PAYLOAD, &h, &[SECRET], 300, NOW), Ok(t));
    }

    #[test]
    fn future_timestamp_is_accepted() {
        let t = NOW + 10 * 365 * 86400;
        let h = sign_header(PAYLOAD, SECRET, t);
        assert_eq!(verify(PAYLOAD, &h, &[SECRET], 300, NOW), Ok(t));
    }

    #[test]
    fn zero_tolerance_disables_age_check() {
        let h = sign_header(PAYLOAD, SECRET, 1);
        assert_eq!(verify(PAYLOAD, &h, &[SECRET], 0, NOW), Ok(1));
    }

    #[test]
    fn negative_tolerance_rejects_current_timestamp_like_python() {
        let h = sign_header(PAYLOAD, SECRET, NOW);
        assert_eq!(
            verify(PAYLOAD, &h, &[SECRET], -300, NOW),
            Err(SignatureError::OutsideTolerance)
        );
    }

    #[test]
    fn signature_checked_before_tolerance() {
        let h = sign_header(PAYLOAD, OTHER, 1);
        assert_eq!(
            verify(PAYLOAD, &h, &[SECRET], 300, NOW),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn v0_only_header_is_no_expected_scheme() {
        let h = format!("t={},v0={}", NOW, sig(PAYLOAD, SECRET, NOW));
        assert_eq!(
            verify(PAYLOAD, &h, &[SECRET], 300, NOW),
            Err(SignatureError::NoExpectedScheme)
        );
    }

    #[test]
    fn timestamp_only_is_no_expected_scheme() {
        let h = format!("t={NOW}");
        assert_eq!(
            verify(PAYLOAD, &h, &[SECRET], 300, NOW),
            Err(SignatureError::NoExpectedScheme)
        );
    }

    #[test]
    fn v0_with_valid_v1_is_accepted() {
        let good = sig(PAYLOAD, SECRET, NOW);
        let h = format!("t={NOW},v0=deadbeef,v1={good}");
        assert_eq!(verify(PAYLOAD, &h, &[SECRET], 300, NOW), Ok(NOW));
    }

    #[test]
    fn several_v1_with_one_valid_is_accepted() {
        let good = sig(PAYLOAD, SECRET, NOW);
        let bad = sig(PAYLOAD, OTHER, NOW);
        for h in [
            format!("t={NOW},v1={bad},v1={good}"),
            format!("t={NOW},v1={good},v1={bad}"),
            format!("t={NOW},v1=,v1=zz,v1={good},v0={bad}"),
        ] {
            assert_eq!(verify(PAYLOAD, &h, &[SECRET], 300, NOW), Ok(NOW), "{h}");
        }
    }

    #[test]
    fn several_v1_none_valid_is_no_match() {
        let bad = sig(PAYLOAD, OTHER, NOW);
        let h = format!("t={NOW},v1={bad},v1=00");
        assert_eq!(
            verify(PAYLOAD, &h, &[SECRET], 300, NOW),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn two_secrets_rotation_either_accepted() {
        let secrets: [&[u8]; 2] = [SECRET, OTHER];
        for s in [SECRET, OTHER] {
            let h = sign_header(PAYLOAD, s, NOW);
            assert_eq!(verify(PAYLOAD, &h, &secrets, 300, NOW), Ok(NOW));
        }
        let h = sign_header(PAYLOAD, b"whsec_third", NOW);
        assert_eq!(
            verify(PAYLOAD, &h, &secrets, 300, NOW),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn header_signed_with_both_secrets_is_accepted() {
        let h = format!(
            "t={NOW},v1={},v1={}",
            sig(PAYLOAD, OTHER, NOW),
            sig(PAYLOAD, SECRET, NOW)
        );
        assert_eq!(verify(PAYLOAD, &h, &[SECRET], 300, NOW), Ok(NOW));
    }

    #[test]
    fn no_secrets_is_no_match() {
        let h = sign_header(PAYLOAD, SECRET, NOW);
        assert_eq!(
            verify(PAYLOAD, &h, &[], 300, NOW),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn blank_secrets_never_match_even_if_used_to_sign() {
        for blank in [&b""[..], b" ", b"\t\r\n"] {
            let h = sign_header(PAYLOAD, blank, NOW);
            assert_eq!(
                verify(PAYLOAD, &h, &[blank], 300, NOW),
                Err(SignatureError::NoMatch)
            );
        }
    }

    #[test]
    fn empty_and_whitespace_headers_are_unparseable() {
        for h in ["", " ", ",", ",,,", "\t\n", "v1=abc", "v0=abc,v1=abc"] {
            assert_eq!(
                verify(PAYLOAD, h, &[SECRET], 300, NOW),
                Err(SignatureError::NoTimestampOrSignatures),
                "{h:?}"
            );
        }
    }

    #[test]
    fn key_with_surrounding_space_is_not_t() {
        let good = sig(PAYLOAD, SECRET, NOW);
        let h = format!(" t={NOW},v1={good}");
        assert_eq!(
            verify(PAYLOAD, &h, &[SECRET], 300, NOW),
            Err(SignatureError::NoTimestampOrSignatures)
        );
        let h = format!("t={NOW}, v1={good}");
        assert_eq!(
            verify(PAYLOAD, &h, &[SECRET], 300, NOW),
            Err(SignatureError::NoExpectedScheme)
        );
    }

    #[test]
    fn non_numeric_timestamps_are_unparseable() {
        let good = sig(PAYLOAD, SECRET, NOW);
        for t in [
            "",
            "abc",
            "12abc",
            "1_000",
            "1.5",
            "0x10",
            "+",
            "-",
            "+-1",
            "1 2",
            "١٢٣",
            "99999999999999999999",
            "9223372036854775808",
            "NaN",
        ] {
            let h = format!("t={t},v1={good}");
            assert_eq!(
                verify(PAYLOAD, &h, &[SECRET], 300, NOW),
                Err(SignatureError::NoTimestampOrSignatures),
                "{t:?}"
            );
        }
    }

    #[test]
    fn t_or_v1_without_equals_is_unparseable() {
        let good = sig(PAYLOAD, SECRET, NOW);
        for h in [
            "t".to_string(),
            format!("t={NOW},t,v1={good}"),
            format!("t={NOW},v1,v1={good}"),
            format!("t={NOW},v1={good},v1"),
        ] {
            assert_eq!(
                verify(PAYLOAD, &h, &[SECRET], 300, NOW),
                Err(SignatureError::NoTimestampOrSignatures),
                "{h:?}"
            );
        }
        // Items with other keys and no '=' are ignored, as in python.
        let h = format!("t={NOW},junk,v1={good}");
        assert_eq!(verify(PAYLOAD, &h, &[SECRET], 300, NOW), Ok(NOW));
    }

    #[test]
    fn timestamp_is_normalised_before_signing() {
        // The SDKs sign "<int(t)>.<payload>": t=+007 signs "7.".
        let good = sig(PAYLOAD, SECRET, 7);
        for t in ["7", "+7", "007", " 7 ", "\t7"] {
            let h = format!("t={t},v1={good}");
            assert_eq!(verify(PAYLOAD, &h, &[SECRET], 0, NOW), Ok(7), "{t:?}");
        }
        let neg = sig(PAYLOAD, SECRET, -5);
        let h = format!("t=-05,v1={neg}");
        assert_eq!(verify(PAYLOAD, &h, &[SECRET], 0, NOW), Ok(-5));
    }

    #[test]
    fn first_t_wins() {
        let good = sig(PAYLOAD, SECRET, NOW);
        let h = format!("t={NOW},t=1,v1={good}");
        assert_eq!(verify(PAYLOAD, &h, &[SECRET], 300, NOW), Ok(NOW));
        let h = format!("t=1,t={NOW},v1={good}");
        assert_eq!(
            verify(PAYLOAD, &h, &[SECRET], 300, NOW),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn value_stops_at_second_equals() {
        let good = sig(PAYLOAD, SECRET, NOW);
        let h = format!("t={NOW}=junk,v1={good}=junk");
        assert_eq!(verify(PAYLOAD, &h, &[SECRET], 300, NOW), Ok(NOW));
    }

    #[test]
    fn uppercase_hex_signature_is_no_match() {
        let good = sig(PAYLOAD, SECRET, NOW).to_uppercase();
        let h = format!("t={NOW},v1={good}");
        assert_eq!(
            verify(PAYLOAD, &h, &[SECRET], 300, NOW),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn extreme_values_do_not_panic() {
        for t in [i64::MIN, i64::MAX, 0, -1] {
            let h = sign_header(PAYLOAD, SECRET, t);
            for (tol, now) in [(i64::MAX, i64::MIN), (i64::MIN, i64::MAX), (1, i64::MAX)] {
                let _ = verify(PAYLOAD, &h, &[SECRET], tol, now);
            }
        }
        let h = sign_header(PAYLOAD, SECRET, i64::MIN);
        assert_eq!(
            verify(PAYLOAD, &h, &[SECRET], 1, i64::MAX),
            Err(SignatureError::OutsideTolerance)
        );
    }

    #[test]
    fn non_utf8_payload_is_signed_as_raw_bytes() {
        let payload = [0xff, 0xfe, 0x00, 0x80];
        let h = sign_header(&payload, SECRET, NOW);
        assert_eq!(verify(&payload, &h, &[SECRET], 300, NOW), Ok(NOW));
    }

    #[test]
    fn messages_are_the_sdk_texts() {
        use SignatureError::*;
        assert_eq!(
            NoTimestampOrSignatures.message(),
            "Unable to extract timestamp and signatures from header"
        );
        assert_eq!(
            NoExpectedScheme.message(),
            "No signatures found with expected scheme"
        );
        assert_eq!(
            NoMatch.message(),
            "No signatures found matching the expected signature for payload"
        );
        assert_eq!(
            OutsideTolerance.message(),
            "Timestamp outside the tolerance zone"
        );
    }
}

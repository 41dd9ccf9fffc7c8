//! Which build of the library this process runs. After a package upgrade a running server keeps
//! serving with the build it loaded at start until it is restarted (docs/OPERATIONS.md), so a
//! DBA needs to tell "installed" from "running": `entitlements.library_version()` says what runs.
//!
//! The build is a fixed-size stamp inside the library file: `PGENT-BUILD:` and then text padded
//! with NUL bytes. scripts/install.sh writes the commit, profile and time into the copy it
//! installs (same length, so nothing else in the file moves); the same bytes are what
//! `grep -ao 'PGENT-BUILD:[[:print:]]*' pg_entitlements.so` shows for the file on disk.

use pgrx::prelude::*;

/// Length of the marker that starts the stamp, `PGENT-BUILD:`.
const MARKER_LEN: usize = 12;
/// Length of the whole stamp; scripts/install.sh writes at most STAMP_LEN - MARKER_LEN bytes
/// after the marker (`STAMP_TEXT_LEN` there).
const STAMP_LEN: usize = 64;

/// `#[used]`: kept in the library even if the optimiser saw no reader, so every build carries it.
#[used]
static BUILD_STAMP: [u8; STAMP_LEN] = padded(b"PGENT-BUILD:unstamped");

const fn padded(text: &[u8]) -> [u8; STAMP_LEN] {
    let mut out = [0u8; STAMP_LEN];
    let mut i = 0;
    while i < text.len() {
        out[i] = text[i];
        i += 1;
    }
    out
}

/// The text after the marker, up to the first NUL.
fn stamp_text(stamp: &[u8; STAMP_LEN]) -> String {
    let text = &stamp[MARKER_LEN..];
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    String::from_utf8_lossy(&text[..end]).into_owned()
}

/// The build this process has mapped, read from the library's own bytes.
fn running_build() -> String {
    // SAFETY: BUILD_STAMP is an initialised, aligned static that lives as long as the library.
    // The read is volatile because the compiler knows the value it compiled in and would fold
    // it; the point is to read the bytes of the mapped file, which the installer rewrote.
    let stamp = unsafe { std::ptr::read_volatile(&raw const BUILD_STAMP) };
    stamp_text(&stamp)
}

/// The extension version and build of the library this backend runs (not necessarily the
/// file now installed: see docs/OPERATIONS.md).
#[pg_extern(stable, parallel_safe)]
fn library_version() -> TableIterator<'static, (name!(version, String), name!(build, String))> {
    TableIterator::once((env!("CARGO_PKG_VERSION").to_owned(), running_build()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_starts_with_the_marker_the_installer_looks_for() {
        assert_eq!(&BUILD_STAMP[..MARKER_LEN], b"PGENT-BUILD:");
        assert_eq!(running_build(), "unstamped");
    }

    #[test]
    fn the_text_ends_at_the_first_nul_or_at_the_end() {
        assert_eq!(stamp_text(&padded(b"PGENT-BUILD:abc1234 release 2026-11-26T20:00:00Z")), "abc1234 release 2026-11-26T20:00:00Z");
        assert_eq!(stamp_text(&[b'x'; STAMP_LEN]), "x".repeat(STAMP_LEN - MARKER_LEN));
    }
}

//! The one reader of the kernel's records (the proc connector's messages,
//! the eBPF program's ring buffer records): host-order integers and C
//! strings at offsets. Total: past the end of the bytes an integer reads 0
//! and a string empty, so callers check lengths once and never panic.

/// The `N` bytes at `at`, when `b` holds them.
fn array_at<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// The host-order `u16` at `at` (0 past the end).
pub(crate) fn u16_at(b: &[u8], at: usize) -> u16 {
    array_at(b, at).map_or(0, u16::from_ne_bytes)
}

/// The host-order `u32` at `at` (0 past the end).
pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    array_at(b, at).map_or(0, u32::from_ne_bytes)
}

/// The host-order `u64` at `at` (0 past the end).
pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    array_at(b, at).map_or(0, u64::from_ne_bytes)
}

/// The bytes before the first NUL (all of them without one), lossily UTF-8.
pub(crate) fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(b.get(..end).unwrap_or_default()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_and_strings_at_offsets_and_past_the_end() {
        let b = [1u8, 0, 0, 0, 2, 0, 0, 0, b'h', b'i', 0, b'x'];
        assert_eq!(u32_at(&b, 0), u32::from_ne_bytes([1, 0, 0, 0]));
        assert_eq!(u16_at(&b, 4), u16::from_ne_bytes([2, 0]));
        assert_eq!(u64_at(&b, 0), u64::from_ne_bytes([1, 0, 0, 0, 2, 0, 0, 0]));
        assert_eq!(
            (u32_at(&b, 9), u64_at(&b, 5), u16_at(&b, usize::MAX)),
            (0, 0, 0)
        );
        assert_eq!(c_string(&b[8..]), "hi");
        assert_eq!(c_string(b"no nul"), "no nul");
        assert_eq!(c_string(&[0xff, 0]), "\u{fffd}");
    }
}

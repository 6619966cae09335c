//! Decimal digits written straight into a buffer, without a formatter or
//! an allocation: for heads built on every request.

use bytes::BufMut;

/// Appends `n` in decimal.
pub(crate) fn put(out: &mut impl BufMut, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    #[test]
    fn digits_as_display_writes_them() {
        for n in [0, 7, 10, 99, 65_535, 1_000_000_007, u64::MAX] {
            let mut out = Vec::new();
            super::put(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
        }
    }
}

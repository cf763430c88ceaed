//! Go's float formatting, as the reference renders values (spec §8.3, §9.2).
//!
//! Go's `strconv.FormatFloat(f, 'g', -1, 64)` prints the shortest decimal digit string that
//! parses back to the same `f64`, laid out in exponent form (`d.ddde±XX`, exponent with a sign
//! and at least two digits) iff the decimal exponent `x` of the first digit satisfies
//! `x < -4 || x >= 6` (for the shortest precision Go fixes the threshold at 6), and in plain
//! decimal form otherwise. Rust's `{:e}` gives the same shortest round-trip digits (both pick
//! the closest shortest candidate), so only the layout is done here.
//!
//! Everything writes into a caller's buffer without allocating.

use std::fmt::Write as _;

/// Appends `f` as the text format renders it: `1`, `0`, `-1` exactly (so `-0` is `0`),
/// `NaN`, `+Inf`, `-Inf`, otherwise Go's `strconv.FormatFloat(f, 'g', -1, 64)`.
pub fn write_text(out: &mut Vec<u8>, f: f64) {
    if f == 1.0 {
        out.push(b'1');
    } else if f == 0.0 {
        // Also -0.
        out.push(b'0');
    } else if f == -1.0 {
        out.extend_from_slice(b"-1");
    } else {
        write_go(out, f);
    }
}

/// Go's `fmt.Sprint(f)` (`%v`), as `/api/v1/metrics` renders values: the same shortest `'g'`
/// rule as [`write_text`] but without the `1`/`0`/`-1` special cases (so `-0` is `-0`).
pub fn go_sprint(f: f64) -> String {
    let mut out = Vec::with_capacity(24);
    write_go(&mut out, f);
    // Only ASCII is ever written.
    String::from_utf8(out).unwrap_or_default()
}

/// Appends Go's `strconv.FormatFloat(f, 'g', -1, 64)` (identical to `fmt.Sprint(f)`):
/// `NaN`, `+Inf`, `-Inf`, `-0`, otherwise the shortest round-trip digits in Go's layout.
pub fn write_go(out: &mut Vec<u8>, f: f64) {
    if f.is_nan() {
        out.extend_from_slice(b"NaN");
        return;
    }
    if f.is_infinite() {
        out.extend_from_slice(if f > 0.0 { b"+Inf" } else { b"-Inf" });
        return;
    }
    if f.is_sign_negative() {
        out.push(b'-');
    }
    let mut digits = [0u8; 32];
    let (nd, exp) = shortest(f.abs(), &mut digits);
    layout(out, &digits[..nd], exp);
}

/// Go's `'g'` layout of the shortest digits `digits` (no leading or trailing zeros, at least
/// one digit) with decimal exponent `exp` of the first digit.
fn layout(out: &mut Vec<u8>, digits: &[u8], exp: i32) {
    if digits.is_empty() {
        out.push(b'0');
        return;
    }
    if !(-4..6).contains(&exp) {
        // %e: d[.ddd]e±dd
        out.push(digits[0]);
        if digits.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        out.push(b'e');
        out.push(if exp < 0 { b'-' } else { b'+' });
        let e = exp.unsigned_abs();
        if e < 10 {
            out.push(b'0');
        }
        write_u64(out, u64::from(e));
    } else if exp >= 0 {
        // %f with the point after exp+1 digits.
        let int_len = (exp + 1) as usize;
        if digits.len() <= int_len {
            out.extend_from_slice(digits);
            out.resize(out.len() + (int_len - digits.len()), b'0');
        } else {
            out.extend_from_slice(&digits[..int_len]);
            out.push(b'.');
            out.extend_from_slice(&digits[int_len..]);
        }
    } else {
        // 0.000ddd
        out.extend_from_slice(b"0.");
        out.resize(out.len() + (-exp - 1) as usize, b'0');
        out.extend_from_slice(digits);
    }
}

/// The shortest round-trip decimal digits of a finite non-negative `a` (closest to `a` among
/// the shortest), written to `digits`; returns their number and the decimal exponent of the
/// first digit. Zero is `("0", 0)`.
fn shortest(a: f64, digits: &mut [u8; 32]) -> (usize, i32) {
    if a == 0.0 {
        digits[0] = b'0';
        return (1, 0);
    }
    if let Some(r) = shortest_fast(a, digits) {
        return r;
    }
    shortest_fmt(a, digits)
}

/// `10^k` for `k` in `0..=21`, as integers and as (exactly representable) floats.
const POW10: [u128; 22] = {
    let mut t = [1u128; 22];
    let mut i = 1;
    while i < 22 {
        t[i] = t[i - 1] * 10;
        i += 1;
    }
    t
};

/// Exact fast paths for the common cases, or `None`:
///
/// * integers below 2^53 are their own shortest digits (the gap to the neighbours is at most
///   1, so no shorter decimal rounds to them);
/// * other values in `[2^-60, 2^52)` that are not powers of two (whose rounding interval is
///   asymmetric), with exact 128-bit integer arithmetic: at decimal precision `k` the
///   candidate is the integer `m` nearest to `a·10^k`; it parses back to `a` iff `m/10^k`
///   lies in `a`'s rounding interval (ends included iff the mantissa is even, as
///   round-half-even parsing does). Because the interval is symmetric, some `k`-digit
///   decimal lies in it iff the nearest one does, and that is monotone in `k`, so a binary
///   search finds the smallest `k`, i.e. the shortest digits, and `m` is the closest of
///   them. Exact ties between two candidates fall back to the general path.
fn shortest_fast(a: f64, digits: &mut [u8; 32]) -> Option<(usize, i32)> {
    const TWO53: f64 = 9_007_199_254_740_992.0;
    if a < TWO53 && a.fract() == 0.0 {
        let (nd, exp) = u64_digits(a as u64, digits);
        return Some((nd, exp));
    }
    let bits = a.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    // Below 2^-60, subnormal, a power of two, or at least 2^52: fall back.
    if !(1023 - 60..1023 + 52).contains(&biased) || frac == 0 {
        return None;
    }
    let mant = frac | (1u64 << 52);
    // a = mant · 2^-shift, shift in 1..=112.
    let shift = (1075 - biased) as u32;
    let half = 1u128 << (shift - 1);
    let mask = (1u128 << shift) - 1;
    let even = mant.is_multiple_of(2);
    // The nearest candidate `m` at precision k if it parses back to `a`, with whether it is
    // an exact tie with the next one (equally far, so equally inside or outside).
    let probe = |k: usize| -> Option<(u128, bool)> {
        let p10 = POW10[k];
        // mant < 2^53 and 10^k < 2^70: p < 2^123.
        let p = match u64::try_from(p10) {
            Ok(small) => u128::from(mant) * u128::from(small),
            Err(_) => u128::from(mant) * p10,
        };
        let mut m = p >> shift;
        let rem = p & mask;
        if rem > half {
            m += 1;
        }
        // Inside the rounding interval: (2·mant − 1)·10^k ≤ m·2^(shift+1) ≤ (2·mant + 1)·10^k,
        // i.e. |m·2^(shift+1) − 2p| ≤ 10^k (strict for an odd mantissa). m·2^(shift+1) is
        // within 2^(shift+1) of 2p < 2^124, so it fits.
        if m.leading_zeros() <= shift + 1 {
            return None;
        }
        let scaled = m << (shift + 1);
        let dist = scaled.abs_diff(2 * p);
        let inside = if even { dist <= p10 } else { dist < p10 };
        inside.then_some((m, rem == half))
    };
    // 10^k ≥ 2^(shift+1) guarantees a candidate inside (the interval is 2^-shift wide).
    let guaranteed = (shift as usize + 1) * 30103 / 100_000 + 1;
    let mut hi = guaranteed.min(POW10.len() - 1);
    let mut best = probe(hi)?;
    let mut lo = 1;
    while lo < hi {
        let mid = (lo + hi) / 2;
        match probe(mid) {
            Some(r) => {
                hi = mid;
                best = r;
            }
            None => lo = mid + 1,
        }
    }
    let (m, tie) = best;
    if tie {
        return None;
    }
    let m = u64::try_from(m).ok()?;
    let (nd, exp) = u64_digits(m, digits);
    Some((nd, exp - hi as i32))
}

/// Digits of `v > 0` without trailing zeros, and the decimal exponent of the first digit.
fn u64_digits(v: u64, digits: &mut [u8; 32]) -> (usize, i32) {
    let mut buf = [0u8; 20];
    let i = decimal(v, &mut buf);
    let all = &buf[i..];
    let exp = all.len() as i32 - 1;
    let mut nd = all.len();
    while nd > 1 && all[nd - 1] == b'0' {
        nd -= 1;
    }
    digits[..nd].copy_from_slice(&all[..nd]);
    (nd, exp)
}

/// The general path: Rust's `{:e}` (shortest round-trip digits, closest to `a`).
fn shortest_fmt(a: f64, digits: &mut [u8; 32]) -> (usize, i32) {
    let mut buf = StackBuf::new();
    if write!(buf, "{a:e}").is_err() {
        // Cannot happen (the longest `{:e}` of an f64 is 24 bytes); degrade gracefully.
        digits[0] = b'0';
        return (1, 0);
    }
    let s = buf.as_bytes();
    // `{:e}` of a finite positive f64: `d[.ddd]e[-]x`.
    let epos = s.iter().position(|&b| b == b'e').unwrap_or(s.len());
    let mut exp: i32 = 0;
    let mut neg_exp = false;
    for &b in s.get(epos + 1..).unwrap_or(&[]) {
        match b {
            b'-' => neg_exp = true,
            b'0'..=b'9' => exp = exp.saturating_mul(10).saturating_add(i32::from(b - b'0')),
            _ => {}
        }
    }
    if neg_exp {
        exp = -exp;
    }
    let mut nd = 0;
    for &b in &s[..epos] {
        if b.is_ascii_digit() && nd < digits.len() {
            digits[nd] = b;
            nd += 1;
        }
    }
    while nd > 1 && digits[nd - 1] == b'0' {
        nd -= 1;
    }
    if nd == 0 {
        digits[0] = b'0';
        return (1, 0);
    }
    (nd, exp)
}

/// Appends the decimal form of `v`.
pub(crate) fn write_u64(out: &mut Vec<u8>, v: u64) {
    let mut buf = [0u8; 20];
    let i = decimal(v, &mut buf);
    out.extend_from_slice(&buf[i..]);
}

/// "00" to "99".
const PAIRS: [u8; 200] = {
    let mut t = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        t[2 * i] = b'0' + (i / 10) as u8;
        t[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    t
};

/// Writes the decimal digits of `v` at the end of `buf`, two at a time; returns where they
/// start.
fn decimal(mut v: u64, buf: &mut [u8; 20]) -> usize {
    let mut i = buf.len();
    while v >= 100 {
        let r = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        buf[i] = PAIRS[r];
        buf[i + 1] = PAIRS[r + 1];
    }
    if v >= 10 {
        let r = v as usize * 2;
        i -= 2;
        buf[i] = PAIRS[r];
        buf[i + 1] = PAIRS[r + 1];
    } else {
        i -= 1;
        buf[i] = b'0' + v as u8;
    }
    i
}

/// A fixed-size `fmt::Write` target, so formatting needs no heap allocation.
struct StackBuf {
    buf: [u8; 48],
    len: usize,
}

impl StackBuf {
    fn new() -> Self {
        StackBuf {
            buf: [0; 48],
            len: 0,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::fmt::Write for StackBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let b = s.as_bytes();
        let end = self.len.checked_add(b.len()).ok_or(std::fmt::Error)?;
        if end > self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(b);
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text(f: f64) -> String {
        let mut v = Vec::new();
        write_text(&mut v, f);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn spec_examples() {
        // Spec §8.3 examples, observed on the reference.
        assert_eq!(text(1e3), "1000");
        assert_eq!(text(100000.0), "100000");
        assert_eq!(text(1000000.0), "1e+06");
        assert_eq!(text(1234567.0), "1.234567e+06");
        assert_eq!(text(0.0001), "0.0001");
        assert_eq!(text(0.00001), "1e-05");
        assert_eq!(text(123456789012345678.0), "1.2345678901234568e+17");
        assert_eq!(text(1e-320), "1e-320");
        assert_eq!(text(0.5), "0.5");
        assert_eq!(text(3.0), "3");
        assert_eq!(text(1.7952741025850446e9), "1.7952741025850446e+09");
    }

    #[test]
    fn text_special_cases() {
        assert_eq!(text(1.0), "1");
        assert_eq!(text(0.0), "0");
        assert_eq!(text(-0.0), "0");
        assert_eq!(text(-1.0), "-1");
        assert_eq!(text(f64::NAN), "NaN");
        assert_eq!(text(f64::INFINITY), "+Inf");
        assert_eq!(text(f64::NEG_INFINITY), "-Inf");
    }

    #[test]
    fn sprint_cases() {
        assert_eq!(go_sprint(1.0), "1");
        assert_eq!(go_sprint(0.0), "0");
        assert_eq!(go_sprint(-0.0), "-0");
        assert_eq!(go_sprint(-1.0), "-1");
        assert_eq!(go_sprint(f64::NAN), "NaN");
        assert_eq!(go_sprint(-f64::NAN), "NaN");
        assert_eq!(go_sprint(f64::INFINITY), "+Inf");
        assert_eq!(go_sprint(f64::NEG_INFINITY), "-Inf");
        assert_eq!(go_sprint(-1e-7), "-1e-07");
        assert_eq!(go_sprint(1234567.0), "1.234567e+06");
        assert_eq!(go_sprint(1.7952741025850446e9), "1.7952741025850446e+09");
    }

    #[test]
    fn go_layout_table() {
        // Expected strings are Go's strconv.FormatFloat(f, 'g', -1, 64).
        let cases: &[(f64, &str)] = &[
            (5e-324, "5e-324"),
            (f64::MIN_POSITIVE, "2.2250738585072014e-308"),
            (f64::MAX, "1.7976931348623157e+308"),
            (-f64::MAX, "-1.7976931348623157e+308"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1.0 / 3.0, "0.3333333333333333"),
            (2.0 / 3.0, "0.6666666666666666"),
            (9.223372036854776e18, "9.223372036854776e+18"),
            (100.0, "100"),
            (123456.0, "123456"),
            (999999.0, "999999"),
            (999999.5, "999999.5"),
            (1e21, "1e+21"),
            (1e22, "1e+22"),
            (1e100, "1e+100"),
            (1.5e-7, "1.5e-07"),
            (1e-4, "0.0001"),
            (1.5e-4, "0.00015"),
            (-1.5e-4, "-0.00015"),
            (0.001, "0.001"),
            (0.1, "0.1"),
            (0.25, "0.25"),
            (2.5, "2.5"),
            (-2.5, "-2.5"),
            (12.345, "12.345"),
            (123456.7, "123456.7"),
            (1e6, "1e+06"),
            (1.5e6, "1.5e+06"),
            (1e7, "1e+07"),
            (-1e7, "-1e+07"),
            (10.0, "10"),
            (-10.0, "-10"),
            (2.0, "2"),
            (-2.0, "-2"),
            (1e-5, "1e-05"),
            (1.2e-9, "1.2e-09"),
            (1e-10, "1e-10"),
            (1e-100, "1e-100"),
            (4294967296.0, "4.294967296e+09"),
            (0.000123, "0.000123"),
            (123456789.0, "1.23456789e+08"),
            (3.14158, "3.14158"),
        ];
        for &(f, want) in cases {
            let mut v = Vec::new();
            write_go(&mut v, f);
            assert_eq!(std::str::from_utf8(&v).unwrap(), want, "for {f:e}");
        }
    }

    #[test]
    fn u64_decimal() {
        for v in [0u64, 1, 9, 10, 99, 100, 12345, u64::MAX] {
            let mut o = Vec::new();
            write_u64(&mut o, v);
            assert_eq!(String::from_utf8(o).unwrap(), v.to_string());
        }
    }

    fn check_layout(s: &str) {
        // Go's shape: exponent form iff x < -4 || x >= 6, exponent with sign and ≥ 2 digits.
        let body = s.strip_prefix('-').unwrap_or(s);
        if let Some((m, e)) = body.split_once('e') {
            assert!(e.starts_with('+') || e.starts_with('-'), "{s}");
            assert!(e.len() >= 3, "{s}");
            let x: i32 = e.parse().unwrap();
            assert!(!(-4..6).contains(&x), "{s}");
            assert!(!m.starts_with('0'), "{s}");
        } else {
            let (int, frac) = body.split_once('.').unwrap_or((body, ""));
            assert!(!frac.ends_with('0'), "{s}");
            let x = if int != "0" {
                int.len() as i32 - 1
            } else {
                -(frac.bytes().take_while(|&b| b == b'0').count() as i32) - 1
            };
            assert!((-4..6).contains(&x) || body == "0", "{s}");
        }
    }

    fn both(a: f64) -> (Option<Vec<u8>>, Vec<u8>) {
        let mut d = [0u8; 32];
        let fast = shortest_fast(a, &mut d).map(|(n, e)| {
            let mut v = d[..n].to_vec();
            v.extend_from_slice(format!("e{e}").as_bytes());
            v
        });
        let mut d = [0u8; 32];
        let (n, e) = shortest_fmt(a, &mut d);
        let mut slow = d[..n].to_vec();
        slow.extend_from_slice(format!("e{e}").as_bytes());
        (fast, slow)
    }

    #[test]
    fn fast_path_agrees_on_decimals() {
        let mut hits = 0;
        for m in (1u64..2_000_000).step_by(29) {
            for k in 0..12 {
                let a = m as f64 / 10f64.powi(k);
                let (fast, slow) = both(a);
                if let Some(fast) = fast {
                    hits += 1;
                    assert_eq!(fast, slow, "{a:e}");
                }
            }
        }
        assert!(hits > 500_000, "{hits}");
        for a in [
            0.1 + 0.2,
            1.0 / 3.0,
            2.0 / 3.0,
            0.001,
            1e-4,
            123456.7,
            999999.5,
            4503599627370495.5,
        ] {
            let (fast, slow) = both(a);
            if let Some(fast) = fast {
                assert_eq!(fast, slow, "{a:e}");
            }
        }
    }

    #[test]
    fn fast_path_covers_typical_values() {
        let mut d = [0u8; 32];
        for i in 0..10_000 {
            for a in [
                i as f64 * 1.37 + 0.001,
                i as f64 / 7.0,
                1.7e9 + i as f64 * 0.123456789,
                i as f64 * 1e-3,
                (i as f64).sqrt() * 1e-4 + 1e-4,
            ] {
                if a != 0.0 && (a.to_bits() & ((1 << 52) - 1)) != 0 {
                    assert!(shortest_fast(a, &mut d).is_some(), "{a:e}");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn fast_path_agrees(bits in any::<u64>(), scaled in 0.0..1e7f64, k in 0i32..8) {
            for a in [f64::from_bits(bits).abs(), scaled, (scaled * 1000.0).round() / 10f64.powi(k)] {
                if a.is_finite() && a > 0.0 {
                    let (fast, slow) = both(a);
                    if let Some(fast) = fast {
                        prop_assert_eq!(fast, slow, "{:e}", a);
                    }
                }
            }
        }

        #[test]
        fn round_trips(bits in any::<u64>()) {
            let f = f64::from_bits(bits);
            let s = go_sprint(f);
            if f.is_nan() {
                prop_assert_eq!(s, "NaN");
            } else {
                let back: f64 = s.replace("+Inf", "inf").replace("-Inf", "-inf").parse().unwrap();
                prop_assert_eq!(back.to_bits(), f.to_bits(), "{}", s);
                if f.is_finite() {
                    check_layout(&s);
                    // Shortest: the same number of significant digits as Rust's `{:e}`.
                    let rust = format!("{:e}", f.abs());
                    let m = rust.split('e').next().unwrap().replace('.', "");
                    let ours: String = s.split('e').next().unwrap()
                        .chars().filter(|c| c.is_ascii_digit()).collect();
                    let ours = ours.trim_start_matches('0').trim_end_matches('0');
                    let m = m.trim_end_matches('0');
                    if f != 0.0 { prop_assert_eq!(ours, m, "{}", s); }
                }
            }
            let t = text(f);
            if f.is_nan() {
                prop_assert_eq!(t, "NaN");
            } else {
                let back: f64 = t.replace("+Inf", "inf").replace("-Inf", "-inf").parse().unwrap();
                if f == 0.0 { prop_assert_eq!(t, "0"); } else { prop_assert_eq!(back.to_bits(), f.to_bits()); }
            }
        }

        #[test]
        fn round_trips_normal_range(f in -1e9f64..1e9) {
            let s = go_sprint(f);
            let back: f64 = s.parse().unwrap();
            prop_assert_eq!(back.to_bits(), f.to_bits(), "{}", s);
            check_layout(&s);
        }

        #[test]
        fn integers(i in -10_000_000i64..10_000_000) {
            let f = i as f64;
            let s = go_sprint(f);
            prop_assert_eq!(s.parse::<f64>().unwrap(), f);
            check_layout(&s);
        }
    }
}

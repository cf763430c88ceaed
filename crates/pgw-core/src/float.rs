//! Go's float formatting, as the reference renders values (spec §8.3, §9.2).

/// Appends `f` as the text format renders it: `1`, `0`, `-1` exactly (so `-0` is `0`),
/// `NaN`, `+Inf`, `-Inf`, otherwise Go's `strconv.FormatFloat(f, 'g', -1, 64)`.
pub fn write_text(out: &mut Vec<u8>, f: f64) {
    let _ = (out, f);
    todo!("float::write_text")
}

/// Go's `fmt.Sprint(f)` (`%v`), as `/api/v1/metrics` renders values: the same shortest `'g'`
/// rule as [`write_text`] but without the `1`/`0`/`-1` special cases (so `-0` is `-0`).
pub fn go_sprint(f: f64) -> String {
    let _ = f;
    todo!("float::go_sprint")
}

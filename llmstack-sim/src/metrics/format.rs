//! Number and label formatting of the text exposition.
//!
//! Floats print as prometheus_client's Go-style floats; label values are escaped.

use std::fmt::Write as _;

/// prometheus_client's `floatToGoString`: Python `repr`, switched to exponent notation
/// when more than six digits precede the decimal point.
pub fn format_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    let s = py_repr(v);
    if v > 0.0
        && !s.contains('e')
        && let Some(dot) = s.find('.')
        && dot > 6
    {
        let mantissa = format!("{}.{}{}", &s[..1], &s[1..dot], &s[dot + 1..]);
        let mantissa = mantissa.trim_end_matches(['0', '.']);
        return format!("{mantissa}e+0{}", dot - 1);
    }
    s
}

/// Python's `repr(float)`: shortest round-trip digits, positional for exponents in
/// `-4..16`, else `d.ddde±XX`.
fn py_repr(v: f64) -> String {
    if v == 0.0 {
        return if v.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let sci = format!("{v:e}");
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let neg = mant.starts_with('-');
    let digits: String = mant.chars().filter(char::is_ascii_digit).collect();
    let mut out = String::with_capacity(digits.len() + 8);
    if neg {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        let point = exp + 1;
        if point <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-point) as usize));
            out.push_str(&digits);
        } else if point as usize >= digits.len() {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', point as usize - digits.len()));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..point as usize]);
            out.push('.');
            out.push_str(&digits[point as usize..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    out
}

/// A label value with `\`, `"` and newlines escaped, as the text format requires.
pub(super) fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_prometheus_client() {
        assert_eq!(format_float(12.0), "12.0");
        assert_eq!(format_float(0.2734), "0.2734");
        assert_eq!(format_float(183_552.0), "183552.0");
        assert_eq!(format_float(1_795_481_992.456), "1.795481992456e+09");
        assert_eq!(format_float(1_795_481_990.123), "1.795481990123e+09");
        assert_eq!(format_float(1_234_567.0), "1.234567e+06");
        assert_eq!(format_float(1e10), "1e+010");
        assert_eq!(format_float(0.0), "0.0");
        assert_eq!(format_float(5e-5), "5e-05");
        assert_eq!(format_float(0.001), "0.001");
        assert_eq!(format_float(f64::INFINITY), "+Inf");
        assert_eq!(format_float(-3.5), "-3.5");
        assert_eq!(format_float(1e16), "1e+16");
    }
}

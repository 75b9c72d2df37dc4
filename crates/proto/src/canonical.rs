//! Canonical JSON: the exact bytes that get signed and digested.
//!
//! fedmsg signs `json.dumps(body, sort_keys=True, separators=(',', ':'))` with
//! Python's default `ensure_ascii=True`. Every implementation on the bus has to
//! produce the same bytes for the same value, or signatures made by one side do
//! not verify on the other. This module reproduces Python's output for every
//! JSON value we can hold:
//!
//! - object keys sorted by code point (Python sorts `str` by code point, which
//!   for valid UTF-8 is the same as byte order);
//! - strings escaped as Python's `ensure_ascii` encoder does: `\"`, `\\`, the
//!   short escapes `\b \f \n \r \t`, every other character outside `' '..='~'`
//!   as lowercase `\uXXXX`, astral characters as a surrogate pair;
//! - integers of any size kept digit for digit (serde_json's
//!   `arbitrary_precision` keeps them as text), `-0` normalised to `0` as
//!   Python's `int` does;
//! - floats in Python's `repr` form: shortest round-trip digits, fixed notation
//!   when the decimal exponent is in `-4..16`, otherwise `1e-05` / `1e+16`.
//!
//! Values Python would print but JSON cannot carry (`NaN`, `Infinity`, which a
//! literal such as `1e400` becomes once parsed) are refused with
//! [`CanonicalError::NonFinite`]: such a body cannot be signed reproducibly.

use serde_json::{Map, Number, Value};

/// Why a value has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CanonicalError {
    /// A number overflows an IEEE double (Python would print `Infinity`).
    #[error("number {0} is not a finite double")]
    NonFinite(String),
    /// A number's text is not a JSON number.
    #[error("malformed number {0:?}")]
    BadNumber(String),
}

/// The canonical encoding of `value` as a `String`.
pub fn to_string(value: &Value) -> Result<String, CanonicalError> {
    let mut out = String::with_capacity(256);
    write_value(&mut out, value)?;
    Ok(out)
}

/// The canonical encoding of an object given as a map, leaving out the keys in
/// `skip`. This is how the signed part of an envelope is produced without
/// cloning the body to remove `signature` and `certificate`.
pub fn object_to_string_without(
    map: &Map<String, Value>,
    skip: &[&str],
) -> Result<String, CanonicalError> {
    let mut out = String::with_capacity(256);
    write_object(&mut out, map, skip)?;
    Ok(out)
}

fn write_value(out: &mut String, value: &Value) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(out, n)?,
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item)?;
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map, &[])?,
    }
    Ok(())
}

fn write_object(
    out: &mut String,
    map: &Map<String, Value>,
    skip: &[&str],
) -> Result<(), CanonicalError> {
    // serde_json's Map is a BTreeMap unless some crate in the build turns on
    // `preserve_order`; sorting here keeps us correct either way.
    let mut entries: Vec<(&String, &Value)> = map
        .iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.push('{');
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(out, key);
        out.push(':');
        write_value(out, value)?;
    }
    out.push('}');
    Ok(())
}

/// Appends `s` as a Python `ensure_ascii` JSON string literal.
pub fn write_str(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, ch) in s.char_indices() {
        let plain = (' '..='~').contains(&ch) && ch != '"' && ch != '\\';
        if plain {
            continue;
        }
        out.push_str(&s[start..i]);
        start = i + ch.len_utf8();
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            _ => {
                let mut units = [0u16; 2];
                for unit in ch.encode_utf16(&mut units) {
                    push_u_escape(out, *unit);
                }
            }
        }
    }
    out.push_str(&s[start..bytes.len()]);
    out.push('"');
}

fn push_u_escape(out: &mut String, unit: u16) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push_str("\\u");
    for shift in [12, 8, 4, 0] {
        out.push(HEX[((unit >> shift) & 0xf) as usize] as char);
    }
}

fn write_number(out: &mut String, n: &Number) -> Result<(), CanonicalError> {
    let text = n.as_str();
    let is_integer = !text.contains(['.', 'e', 'E']);
    if is_integer {
        write_integer(out, text)
    } else {
        let value: f64 = text
            .parse()
            .map_err(|_| CanonicalError::BadNumber(text.to_owned()))?;
        if !value.is_finite() {
            return Err(CanonicalError::NonFinite(text.to_owned()));
        }
        write_python_float(out, value);
        Ok(())
    }
}

fn write_integer(out: &mut String, text: &str) -> Result<(), CanonicalError> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CanonicalError::BadNumber(text.to_owned()));
    }
    let trimmed = digits.trim_start_matches('0');
    if trimmed.is_empty() {
        out.push('0');
        return Ok(());
    }
    if negative {
        out.push('-');
    }
    out.push_str(trimmed);
    Ok(())
}

/// Appends `value` formatted the way Python's `float.__repr__` does.
pub fn write_python_float(out: &mut String, value: f64) {
    let mut buffer = ryu::Buffer::new();
    let shortest = buffer.format_finite(value);
    let (negative, unsigned) = match shortest.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, shortest),
    };
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (unsigned, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    // Decimal digits d1 d2 ... with the value being 0.d1d2... * 10^decpt.
    let mut digits: String = format!("{int_part}{frac_part}");
    let mut decpt = int_part.len() as i32 + exponent;
    let leading = digits.len() - digits.trim_start_matches('0').len();
    digits.drain(..leading);
    decpt -= leading as i32;
    let kept = digits.trim_end_matches('0').len();
    digits.truncate(kept);

    if negative {
        out.push('-');
    }
    if digits.is_empty() {
        out.push_str("0.0");
        return;
    }
    let ndigits = digits.len() as i32;
    if decpt <= -4 || decpt > 16 {
        out.push_str(&digits[..1]);
        if ndigits > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let exp = decpt - 1;
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        let magnitude = exp.unsigned_abs();
        if magnitude < 10 {
            out.push('0');
        }
        out.push_str(&magnitude.to_string());
    } else if decpt <= 0 {
        out.push_str("0.");
        for _ in 0..(-decpt) {
            out.push('0');
        }
        out.push_str(&digits);
    } else if decpt < ndigits {
        out.push_str(&digits[..decpt as usize]);
        out.push('.');
        out.push_str(&digits[decpt as usize..]);
    } else {
        out.push_str(&digits);
        for _ in 0..(decpt - ndigits) {
            out.push('0');
        }
        out.push_str(".0");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canon(text: &str) -> String {
        let value: Value = serde_json::from_str(text).expect("test input is JSON");
        to_string(&value).expect("canonical")
    }

    fn float(value: f64) -> String {
        let mut s = String::new();
        write_python_float(&mut s, value);
        s
    }

    #[test]
    fn floats_follow_python_repr() {
        let cases: &[(f64, &str)] = &[
            (1e-05, "1e-05"),
            (1e+16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (0.1, "0.1"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
            (1.0, "1.0"),
            (0.0001, "0.0001"),
            (123.456, "123.456"),
            (1.5e300, "1.5e+300"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (-2.5e-7, "-2.5e-07"),
            (12345678901234567.0, "1.2345678901234568e+16"),
            (0.3, "0.3"),
            (100.0, "100.0"),
        ];
        for (value, expected) in cases {
            assert_eq!(float(*value), *expected, "repr of {value:e}");
        }
    }

    #[test]
    fn keys_sorted_compact_separators() {
        assert_eq!(
            canon(r#"{"b": 1, "a": [1, 2, {"d": null, "c": true}]}"#),
            r#"{"a":[1,2,{"c":true,"d":null}],"b":1}"#
        );
    }

    #[test]
    fn strings_escaped_like_ensure_ascii() {
        let value = json!("é\u{1F600}\"\\\n\r\t\u{08}\u{0c}\u{01}\u{7f}/<>");
        assert_eq!(
            to_string(&value).unwrap(),
            r#""\u00e9\ud83d\ude00\"\\\n\r\t\b\f\u0001\u007f/<>""#
        );
    }

    #[test]
    fn big_and_negative_zero_integers() {
        assert_eq!(
            canon("123456789012345678901234567890"),
            "123456789012345678901234567890"
        );
        assert_eq!(canon("-0"), "0");
        assert_eq!(canon("-17"), "-17");
    }

    #[test]
    fn floats_from_text_are_reformatted() {
        assert_eq!(
            canon("[1.10, 1E5, 2.5e-5, 1e16]"),
            "[1.1,100000.0,2.5e-05,1e+16]"
        );
    }

    #[test]
    fn overflowing_float_is_refused() {
        let value: Value = serde_json::from_str("1e400").unwrap();
        assert!(matches!(
            to_string(&value),
            Err(CanonicalError::NonFinite(_))
        ));
    }

    #[test]
    fn skip_keys() {
        let value = json!({"a": 1, "signature": "x", "certificate": "y", "b": 2});
        let map = value.as_object().unwrap();
        assert_eq!(
            object_to_string_without(map, &["signature", "certificate"]).unwrap(),
            r#"{"a":1,"b":2}"#
        );
    }
}

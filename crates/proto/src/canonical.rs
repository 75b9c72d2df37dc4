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
//!
//! ## Number text, received and sent
//!
//! Several texts denote one double (`0.1`, `0.10`,
//! `0.1000000000000000000000001`), and the signature covers only the
//! canonical one. With `arbitrary_precision` a parsed body keeps the text as
//! it arrived, so a handler reading it would see a value the signer never
//! signed (a relay could rewrite `0.1` into the longer literal and the
//! signature would still verify). Hence two rules:
//!
//! - **Received bodies** are signed and digested with [`signed_bytes`],
//!   which refuses any number whose text is not already canonical
//!   ([`CanonicalError::NotCanonicalNumber`]). Python peers write floats with
//!   `repr` and integers digit for digit, which is exactly the canonical
//!   text, so nothing a fedmsg peer writes is refused; a handler therefore
//!   only ever sees the number text the signature covers.
//! - **Outgoing payloads** go through [`normalise_numbers`] first: a number
//!   whose text denotes the same decimal value as its canonical form
//!   (`1.10`, `1E5`) is rewritten to it; one that a double cannot hold
//!   exactly (`9007199254740993.0`, `0.1000000000000000000000001`) is refused
//!   with [`CanonicalError::InexactNumber`] instead of being signed as
//!   another value.
//!
//! ## Depth
//!
//! Values nest at most [`MAX_DEPTH`] arrays/objects deep (the envelope
//! itself is the first level). Every walk here is recursive and stops at
//! that bound, so a value built in code with any depth cannot overflow the
//! stack here; the envelope decoder applies the same bound before parsing.

use serde_json::{Map, Number, Value};

/// The deepest nesting of arrays and objects accepted anywhere, counting
/// the envelope object as level 1 (so a `msg` may nest 511 levels).
///
/// Python 3.11's `json` writes and reads up to about 990 levels (its
/// recursion limit); serde_json's default stops at 128, which used to drop
/// bodies Python peers accept. 512 keeps the deepest parse within about
/// 1 MiB of stack in a debug build (about 2 KiB a level; release needs a
/// fifth of that), so it is safe on any thread with the usual 2 MiB stack.
pub const MAX_DEPTH: usize = 512;

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
    /// A received number is not written in its canonical form, so the
    /// signature covers another text than the one a handler would read.
    #[error("number {text} is not written canonically (signed as {canonical})")]
    NotCanonicalNumber {
        /// The text as received (cut to 64 characters).
        text: String,
        /// What the signature covers.
        canonical: String,
    },
    /// An outgoing number that a double cannot hold exactly: it would be
    /// signed, sent and read as `nearest`.
    #[error(
        "number {text} cannot be sent exactly: as a double it is {nearest}; \
         send it as a string, or as an integer without a fraction"
    )]
    InexactNumber {
        /// The text given (cut to 64 characters).
        text: String,
        /// The canonical text of the nearest double.
        nearest: String,
    },
    /// Arrays and objects nest deeper than [`MAX_DEPTH`].
    #[error("nested more than {limit} levels deep")]
    TooDeep {
        /// [`MAX_DEPTH`].
        limit: usize,
    },
}

impl CanonicalError {
    /// A short stable name for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            CanonicalError::NotCanonicalNumber { .. } => "non_canonical_number",
            CanonicalError::InexactNumber { .. } => "inexact_number",
            CanonicalError::TooDeep { .. } => "too_deep",
            CanonicalError::NonFinite(_) | CanonicalError::BadNumber(_) => "not_canonicalisable",
        }
    }
}

/// How number texts that are not canonical are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Numbers {
    /// Re-formatted (a general-purpose canonical form of any value).
    Reformat,
    /// Refused (received bodies: see the module doc).
    Strict,
}

/// The canonical encoding of `value` as a `String`. Number texts are
/// re-formatted to their canonical form.
pub fn to_string(value: &Value) -> Result<String, CanonicalError> {
    let mut out = String::with_capacity(256);
    write_value(&mut out, value, 0, Numbers::Reformat)?;
    Ok(out)
}

/// The canonical encoding of an object given as a map, leaving out the keys in
/// `skip`, number texts re-formatted. See [`signed_bytes`] for bodies that
/// are signed or verified.
pub fn object_to_string_without(
    map: &Map<String, Value>,
    skip: &[&str],
) -> Result<String, CanonicalError> {
    let mut out = String::with_capacity(256);
    write_object(&mut out, map, skip, 1, Numbers::Reformat, None)?;
    Ok(out)
}

/// The bytes a signature covers: the canonical encoding of `map` without the
/// keys in `skip`, refusing any number whose text is not already canonical
/// ([`CanonicalError::NotCanonicalNumber`]), so that what is verified and
/// what a handler reads are the same text. This is how the signed part of an
/// envelope is produced without cloning the body to remove `signature` and
/// `certificate`.
pub fn signed_bytes(map: &Map<String, Value>, skip: &[&str]) -> Result<String, CanonicalError> {
    let mut out = String::with_capacity(256);
    write_object(&mut out, map, skip, 1, Numbers::Strict, None)?;
    Ok(out)
}

/// Where one top-level key of an object stands in its canonical text (see
/// [`signed_bytes_marked`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// The key was written: the byte range of its member, `"key":value`.
    Member(std::ops::Range<usize>),
    /// The key was left out (or is absent): the offset at which its member
    /// would stand, for [`insert_members`].
    Gap(usize),
}

/// [`signed_bytes`], and the [`Place`] of each key in `marks`: enough to
/// add members to the text, or take one out, without serialising the
/// object again (a message is canonicalised once; its body on the wire and
/// the text Python gilmsg signed are derived from that one text).
pub fn signed_bytes_marked(
    map: &Map<String, Value>,
    skip: &[&str],
    marks: &[&str],
) -> Result<(String, Vec<Place>), CanonicalError> {
    let mut out = String::with_capacity(256);
    let mut marker = Marker {
        marks,
        places: vec![None; marks.len()],
    };
    write_object(&mut out, map, skip, 1, Numbers::Strict, Some(&mut marker))?;
    // Every mark is placed by the end of the object (at its end, if not
    // before).
    let end = out.len() - 1;
    let places = marker
        .places
        .into_iter()
        .map(|p| p.unwrap_or(Place::Gap(end)))
        .collect();
    Ok((out, places))
}

/// `object` (canonical text from [`signed_bytes_marked`]) with string
/// members added: each `(gap, key, value)` becomes `"key":"value"` at the
/// gap [`Place::Gap`] gave for `key`. The result is what serialising the
/// object with those members would have written.
pub fn insert_members(object: &str, members: &[(usize, &str, &str)]) -> String {
    // Gaps lie between `{` and `}`; clamping keeps a bad one in bounds.
    let last = object.len().saturating_sub(1).max(1);
    let mut sorted: Vec<(usize, &str, &str)> = members
        .iter()
        .map(|&(gap, key, value)| (gap.clamp(1, last), key, value))
        .collect();
    sorted.sort_unstable();
    let extra: usize = members.iter().map(|(_, k, v)| k.len() + v.len() + 8).sum();
    let mut out = String::with_capacity(object.len() + extra);
    let mut copied = 0;
    let mut i = 0;
    while i < sorted.len() {
        let gap = sorted[i].0;
        out.push_str(&object[copied..gap]);
        copied = gap;
        // Right after `{` the members are followed by a comma unless the
        // object ends there; anywhere else they follow one.
        let first = gap == 1;
        let mut n = 0;
        while i < sorted.len() && sorted[i].0 == gap {
            let (_, key, value) = sorted[i];
            if n > 0 || !first {
                out.push(',');
            }
            write_str(&mut out, key);
            out.push(':');
            write_str(&mut out, value);
            n += 1;
            i += 1;
        }
        if first && object.as_bytes().get(gap) != Some(&b'}') {
            out.push(',');
        }
    }
    out.push_str(&object[copied..]);
    out
}

/// `object` (canonical text) without the member at `range` (a
/// [`Place::Member`]) and the comma that separated it.
pub fn remove_member(object: &str, range: std::ops::Range<usize>) -> String {
    let bytes = object.as_bytes();
    let (start, end) = if range.start <= 1 {
        let comma = usize::from(bytes.get(range.end) == Some(&b','));
        (range.start, range.end + comma)
    } else {
        (range.start - 1, range.end)
    };
    let mut out = String::with_capacity(object.len());
    out.push_str(&object[..start]);
    out.push_str(&object[end..]);
    out
}

/// Rewrites every number in `value` to its canonical text where that denotes
/// the same decimal value (`1.10` -> `1.1`, `1E5` -> `100000.0`, `-0` ->
/// `0`), and refuses one that a double cannot hold exactly
/// ([`CanonicalError::InexactNumber`]): for a payload about to be signed.
/// `depth` is the nesting level of the container holding `value` (1 for an
/// envelope's `msg`, 0 for a value on its own).
pub fn normalise_numbers(value: &mut Value, depth: usize) -> Result<(), CanonicalError> {
    match value {
        Value::Number(n) => {
            let mut canonical = String::new();
            write_number(&mut canonical, n, Numbers::Reformat)?;
            if canonical != n.as_str() {
                // Integers are kept digit for digit: only `-0` changes, and
                // it is the same integer.
                let integer = !n.as_str().contains(['.', 'e', 'E']);
                if !integer && !same_decimal_value(n.as_str(), &canonical) {
                    return Err(CanonicalError::InexactNumber {
                        text: cut(n.as_str()),
                        nearest: canonical,
                    });
                }
                *n = canonical
                    .parse()
                    .map_err(|_| CanonicalError::BadNumber(canonical.clone()))?;
            }
        }
        Value::Array(items) => {
            let depth = enter(depth)?;
            for item in items {
                normalise_numbers(item, depth)?;
            }
        }
        Value::Object(map) => {
            let depth = enter(depth)?;
            for item in map.values_mut() {
                normalise_numbers(item, depth)?;
            }
        }
        Value::Null | Value::Bool(_) | Value::String(_) => {}
    }
    Ok(())
}

/// One level deeper, or [`CanonicalError::TooDeep`] past [`MAX_DEPTH`].
fn enter(depth: usize) -> Result<usize, CanonicalError> {
    let deeper = depth + 1;
    if deeper > MAX_DEPTH {
        return Err(CanonicalError::TooDeep { limit: MAX_DEPTH });
    }
    Ok(deeper)
}

/// At most 64 characters of a number's text, for error messages (a number
/// literal can be as long as the body).
fn cut(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

/// Whether two JSON number texts denote the same decimal value (the sign of
/// zero included, as Python's floats keep it).
fn same_decimal_value(a: &str, b: &str) -> bool {
    match (decimal(a), decimal(b)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// A number text as (negative, significant digits, exponent) with
/// value = digits x 10^exponent, trailing and leading zeros removed; zero
/// has no digits. `None` for an exponent beyond `i64`.
fn decimal(text: &str) -> Option<(bool, String, i64)> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i64>().ok()?),
        None => (unsigned, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let frac_len = i64::try_from(frac_part.len()).ok()?;
    let mut exponent = exponent.checked_sub(frac_len)?;
    let all = format!("{int_part}{frac_part}");
    let significant = all.trim_start_matches('0');
    let digits = significant.trim_end_matches('0');
    if digits.is_empty() {
        return Some((negative, String::new(), 0));
    }
    let trailing = i64::try_from(significant.len() - digits.len()).ok()?;
    exponent = exponent.checked_add(trailing)?;
    Some((negative, digits.to_owned(), exponent))
}

fn write_value(
    out: &mut String,
    value: &Value,
    depth: usize,
    numbers: Numbers,
) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(out, n, numbers)?,
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            let depth = enter(depth)?;
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item, depth, numbers)?;
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map, &[], enter(depth)?, numbers, None)?,
    }
    Ok(())
}

/// Writes an object that sits at nesting level `depth` (already counted),
/// without the keys in `skip`, recording with `marker` (if any: only a
/// top-level object is ever marked) where the keys it asks for stand.
fn write_object(
    out: &mut String,
    map: &Map<String, Value>,
    skip: &[&str],
    depth: usize,
    numbers: Numbers,
    mut marker: Option<&mut Marker<'_>>,
) -> Result<(), CanonicalError> {
    // serde_json's Map is a BTreeMap unless some crate in the build turns on
    // `preserve_order`; sorting here keeps us correct either way. Keys sort
    // by code point, which for UTF-8 is byte order, as here.
    let mut entries: Vec<(&String, &Value)> = map
        .iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.push('{');
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if let Some(marker) = marker.as_deref_mut() {
            let before = out.len();
            marker.record(|mark| mark < key.as_str(), || Place::Gap(before));
        }
        if i > 0 {
            out.push(',');
        }
        let start = out.len();
        write_str(out, key);
        out.push(':');
        write_value(out, value, depth, numbers)?;
        if let Some(marker) = marker.as_deref_mut() {
            let end = out.len();
            marker.record(|mark| mark == key.as_str(), || Place::Member(start..end));
        }
    }
    if let Some(marker) = marker {
        let end = out.len();
        marker.record(|_| true, || Place::Gap(end));
    }
    out.push('}');
    Ok(())
}

/// The keys [`signed_bytes_marked`] was asked about, and where each was
/// found so far.
struct Marker<'a> {
    marks: &'a [&'a str],
    places: Vec<Option<Place>>,
}

impl Marker<'_> {
    /// Gives every mark not placed yet for which `applies` holds the place
    /// `place` makes.
    fn record(&mut self, applies: impl Fn(&str) -> bool, place: impl Fn() -> Place) {
        for (slot, mark) in self.places.iter_mut().zip(self.marks) {
            if slot.is_none() && applies(mark) {
                *slot = Some(place());
            }
        }
    }
}

/// Which bytes a JSON string literal carries as they are: printable ASCII
/// except `"` and `\`. Every other byte (control, non-ASCII) starts a
/// character that is escaped.
const PLAIN_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = b' ';
    while b <= b'~' {
        table[b as usize] = b != b'"' && b != b'\\';
        b += 1;
    }
    table
};

/// Appends `s` as a Python `ensure_ascii` JSON string literal.
///
/// Scans bytes, not chars: nearly every string (topics, ids, base64
/// certificates and signatures) is printable ASCII, copied in one run;
/// only a byte that is not plain is decoded as the character it starts.
pub fn write_str(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if PLAIN_BYTES[usize::from(bytes[i])] {
            i += 1;
            continue;
        }
        // `i` is where a character starts: plain bytes are single-byte
        // characters, and escaped ones are skipped whole.
        let Some(ch) = s.get(i..).and_then(|rest| rest.chars().next()) else {
            break;
        };
        out.push_str(&s[start..i]);
        i += ch.len_utf8();
        start = i;
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
    out.push_str(&s[start..]);
    out.push('"');
}

fn push_u_escape(out: &mut String, unit: u16) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push_str("\\u");
    for shift in [12, 8, 4, 0] {
        out.push(HEX[((unit >> shift) & 0xf) as usize] as char);
    }
}

fn write_number(out: &mut String, n: &Number, numbers: Numbers) -> Result<(), CanonicalError> {
    let text = n.as_str();
    let is_integer = !text.contains(['.', 'e', 'E']);
    let start = out.len();
    if is_integer {
        write_integer(out, text)?;
    } else {
        let value: f64 = text
            .parse()
            .map_err(|_| CanonicalError::BadNumber(cut(text)))?;
        if !value.is_finite() {
            return Err(CanonicalError::NonFinite(cut(text)));
        }
        write_python_float(out, value);
    }
    if numbers == Numbers::Strict && out[start..] != *text {
        return Err(CanonicalError::NotCanonicalNumber {
            text: cut(text),
            canonical: out[start..].to_owned(),
        });
    }
    Ok(())
}

fn write_integer(out: &mut String, text: &str) -> Result<(), CanonicalError> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CanonicalError::BadNumber(cut(text)));
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

    /// `write_str` as it was written first, by char: the byte scan must
    /// give the same text.
    fn write_str_by_char(s: &str) -> String {
        let mut out = String::from('"');
        for ch in s.chars() {
            match ch {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{08}' => out.push_str("\\b"),
                '\u{0c}' => out.push_str("\\f"),
                ' '..='~' => out.push(ch),
                _ => {
                    let mut units = [0u16; 2];
                    for unit in ch.encode_utf16(&mut units) {
                        push_u_escape(&mut out, *unit);
                    }
                }
            }
        }
        out.push('"');
        out
    }

    #[test]
    fn the_byte_scan_escapes_every_character_as_the_char_scan_did() {
        let mut texts: Vec<String> = (0u32..0x800)
            .chain([0xfffd, 0xffff, 0x1_0000, 0x1_f600, 0x10_ffff])
            .filter_map(char::from_u32)
            .map(|c| format!("{c}a{c}{c}\"b"))
            .collect();
        texts.extend(["", "plain", "é", "ab\u{1F600}", "\u{7f}x", "x\u{80}"].map(String::from));
        for text in texts {
            let mut out = String::new();
            write_str(&mut out, &text);
            assert_eq!(out, write_str_by_char(&text), "{text:?}");
        }
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

    #[test]
    fn members_added_or_removed_by_place_match_a_fresh_serialisation() {
        // Keys around, before and after the marks; non-ASCII keys sort by
        // code point, after every ASCII one.
        let bodies = [
            json!({}),
            json!({"a": 1}),
            json!({"z": [1, {"q": 2}]}),
            json!({"a": 1, "crypto": "c", "i": 2, "msg": {"k": "v"}, "topic": "t", "\u{e9}": 3}),
            json!({"gilmsg_version": "x", "msg": null}),
            json!({"certificate": "y", "signature": "x", "msg": 1}),
        ];
        let skip = ["signature", "certificate"];
        let marks = ["signature", "certificate", "gilmsg_version"];
        for body in bodies {
            let map = body.as_object().unwrap();
            let (text, places) = signed_bytes_marked(map, &skip, &marks).unwrap();
            assert_eq!(text, signed_bytes(map, &skip).unwrap(), "{body}");
            // Adding both unsigned members gives the whole body's text.
            let gap = |p: &Place| match p {
                Place::Gap(g) => *g,
                Place::Member(r) => panic!("{r:?} is written"),
            };
            let full = insert_members(
                &text,
                &[
                    (gap(&places[0]), "signature", "S\n"),
                    (gap(&places[1]), "certificate", "C"),
                ],
            );
            let mut with = map.clone();
            with.insert("signature".into(), json!("S\n"));
            with.insert("certificate".into(), json!("C"));
            assert_eq!(full, signed_bytes(&with, &[]).unwrap(), "{body}");
            // Taking gilmsg_version out gives what Python gilmsg signed.
            let legacy = match &places[2] {
                Place::Member(range) => remove_member(&text, range.clone()),
                Place::Gap(_) => text.clone(),
            };
            let mut without = skip.to_vec();
            without.push("gilmsg_version");
            assert_eq!(legacy, signed_bytes(map, &without).unwrap(), "{body}");
        }
        // Only the first member, and only the last.
        let map = json!({"gilmsg_version": 1}).as_object().unwrap().clone();
        let (text, places) = signed_bytes_marked(&map, &[], &["gilmsg_version"]).unwrap();
        let Place::Member(range) = places[0].clone() else {
            panic!()
        };
        assert_eq!(remove_member(&text, range), "{}");
        let map = json!({"a": 1, "z": 2}).as_object().unwrap().clone();
        let (text, places) = signed_bytes_marked(&map, &[], &["z", "a"]).unwrap();
        let [Place::Member(z), Place::Member(a)] = [places[0].clone(), places[1].clone()] else {
            panic!()
        };
        assert_eq!(remove_member(&text, z), r#"{"a":1}"#);
        assert_eq!(remove_member(&text, a), r#"{"z":2}"#);
    }

    fn strict(text: &str) -> Result<String, CanonicalError> {
        let value: Value = serde_json::from_str(text).expect("test input is JSON");
        signed_bytes(value.as_object().expect("an object"), &[])
    }

    #[test]
    fn received_numbers_must_be_written_as_signed() {
        // What Python writes is canonical, so it passes as is.
        let python = r#"{"f":[0.1,1e-05,1e+16,-0.0,1.5,100.0,1e+300,5e-324],"i":[0,-1,12345678901234567890]}"#;
        assert_eq!(strict(python).unwrap(), python);
        for (text, canonical) in [
            (r#"{"x":0.1000000000000000000000001}"#, "0.1"),
            (r#"{"x":0.10}"#, "0.1"),
            (r#"{"x":1E5}"#, "100000.0"),
            (r#"{"x":1e-5}"#, "1e-05"),
            (r#"{"x":-0}"#, "0"),
        ] {
            match strict(text) {
                Err(CanonicalError::NotCanonicalNumber { canonical: c, .. }) => {
                    assert_eq!(c, canonical, "{text}")
                }
                other => panic!("{text}: {other:?}"),
            }
            // The general-purpose form re-formats instead.
            assert!(canon(text).contains(canonical), "{text}");
        }
        assert_eq!(
            CanonicalError::NotCanonicalNumber {
                text: String::new(),
                canonical: String::new()
            }
            .kind(),
            "non_canonical_number"
        );
    }

    #[test]
    fn outgoing_numbers_are_normalised_when_exact_and_refused_when_not() {
        let mut value: Value = serde_json::from_str(
            r#"{"a":1.10,"b":1E5,"c":-0,"d":[2.50e-3],"e":12345678901234567890}"#,
        )
        .unwrap();
        normalise_numbers(&mut value, 0).unwrap();
        assert_eq!(
            to_string(&value).unwrap(),
            r#"{"a":1.1,"b":100000.0,"c":0,"d":[0.0025],"e":12345678901234567890}"#
        );
        let obj = value.as_object().unwrap();
        assert_eq!(signed_bytes(obj, &[]).unwrap(), to_string(&value).unwrap());
        for (text, nearest) in [
            ("9007199254740993.0", "9007199254740992.0"),
            ("0.1000000000000000000000001", "0.1"),
            ("1e-400", "0.0"),
        ] {
            let mut value: Value = serde_json::from_str(&format!("[{text}]")).unwrap();
            match normalise_numbers(&mut value, 0) {
                Err(CanonicalError::InexactNumber { nearest: n, .. }) => {
                    assert_eq!(n, nearest, "{text}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        let long = format!("[0.{}1]", "0".repeat(500));
        let mut value: Value = serde_json::from_str(&long).unwrap();
        let err = normalise_numbers(&mut value, 0).unwrap_err().to_string();
        assert!(err.len() < 300, "the message quotes a cut text: {err}");
    }

    /// A value nested `depth` arrays deep, built without recursion.
    fn nested(depth: usize) -> Value {
        let mut value = json!(1);
        for _ in 0..depth {
            value = Value::Array(vec![value]);
        }
        value
    }

    #[test]
    fn depth_is_bounded_in_every_walk() {
        assert!(to_string(&nested(MAX_DEPTH)).is_ok());
        assert_eq!(
            to_string(&nested(MAX_DEPTH + 1)),
            Err(CanonicalError::TooDeep { limit: MAX_DEPTH })
        );
        assert_eq!(
            normalise_numbers(&mut nested(MAX_DEPTH), 1),
            Err(CanonicalError::TooDeep { limit: MAX_DEPTH })
        );
        assert!(normalise_numbers(&mut nested(MAX_DEPTH - 1), 1).is_ok());
        // Far deeper than the bound: refused, no stack overflow (the walk
        // stops at the bound). Dropping the value is serde_json's affair,
        // so it is taken apart level by level here.
        let mut deep = nested(100_000);
        assert!(to_string(&deep).is_err());
        assert!(normalise_numbers(&mut deep, 0).is_err());
        while let Value::Array(mut items) = deep {
            deep = items.pop().unwrap_or(Value::Null);
        }
    }
}

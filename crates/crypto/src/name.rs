//! Comparing X.509 distinguished names the way OpenSSL does, so that "is this
//! CA the issuer of that certificate (or CRL)?" gets the same answer here as
//! in `openssl verify` and in Python fedmsg (pyOpenSSL's `X509Store`).
//!
//! Two encodings of the same name are common: a CA whose subject is a
//! `PrintableString` `CN=Bus CA` and a certificate whose issuer field says the
//! same thing as a `UTF8String` (tools re-encode names when they copy them).
//! Comparing raw DER bytes calls these different names; comparing display text
//! calls `CN=Bus CA` and `CN=bus  ca` different and is ambiguous about
//! escaping. OpenSSL compares a *canonical encoding* instead
//! (`x509_name_canon` and `asn1_string_canon` in `crypto/x509/x_name.c`), and
//! so do we, from the names x509-parser has already parsed:
//!
//! 1. Each attribute value whose type is one of UTF8String, BMPString,
//!    UniversalString, PrintableString, T61String, IA5String, VisibleString
//!    is converted to UTF-8 (the one-byte types byte for byte as Latin-1, as
//!    OpenSSL's `ASN1_STRING_to_UTF8` does; BMP as UCS-2, Universal as UCS-4);
//!    then leading and trailing ASCII whitespace is removed, each run of
//!    inner ASCII whitespace becomes one space, and ASCII letters are
//!    lower-cased (bytes outside ASCII are kept as they are). Values of any
//!    other type (NumericString, binary values) are kept exactly, with their
//!    tag.
//! 2. The attributes of each RDN form a set (order inside an RDN does not
//!    matter; OpenSSL DER-sorts the SET); the RDNs keep their order.
//!
//! Two names are the same when their canonical forms are equal. A value that
//! cannot be converted (invalid UTF-8, a lone surrogate in a BMPString) makes
//! the name have no canonical form; OpenSSL then fails the comparison, and so
//! do we, except that byte-identical DER is always the same name.

use x509_parser::der_parser::asn1_rs::{Class, Tag};
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

/// One attribute value after canonicalisation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum CanonicalValue {
    /// A string type, as canonical UTF-8 text.
    Text(Vec<u8>),
    /// Any other type, kept exactly: class, tag number and content octets.
    Other(u8, u32, Vec<u8>),
}

/// A distinguished name in OpenSSL's canonical form (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CanonicalName {
    /// One entry per RDN, in order; each RDN's (attribute type OID,
    /// value) pairs sorted so that comparing them compares sets.
    rdns: Vec<Vec<(Vec<u8>, CanonicalValue)>>,
}

impl CanonicalName {
    /// The canonical form of `name`, or `None` when one of its string values
    /// cannot be converted to UTF-8.
    pub(crate) fn of(name: &X509Name<'_>) -> Option<Self> {
        let mut rdns = Vec::new();
        for rdn in name.iter() {
            let mut entries = rdn
                .iter()
                .map(|attr| Some((attr.attr_type().as_bytes().to_vec(), canonical_value(attr)?)))
                .collect::<Option<Vec<_>>>()?;
            entries.sort();
            rdns.push(entries);
        }
        Some(CanonicalName { rdns })
    }
}

/// A name as a trust anchor keeps it: its DER and its canonical form.
#[derive(Debug, Clone)]
pub(crate) struct StoredName {
    raw: Vec<u8>,
    canonical: Option<CanonicalName>,
}

impl StoredName {
    pub(crate) fn of(name: &X509Name<'_>) -> Self {
        StoredName {
            raw: name.as_raw().to_vec(),
            canonical: CanonicalName::of(name),
        }
    }

    /// Whether `other` names the same entity, by OpenSSL's rule.
    pub(crate) fn matches(&self, other: &X509Name<'_>) -> bool {
        if self.raw == other.as_raw() {
            return true;
        }
        match (&self.canonical, CanonicalName::of(other)) {
            (Some(ours), Some(theirs)) => *ours == theirs,
            _ => false,
        }
    }
}

/// OpenSSL's `ASN1_MASK_CANON`: the types whose values are compared as text.
fn text_of(tag: Tag, data: &[u8]) -> Option<Option<String>> {
    let latin1 = || data.iter().map(|&b| char::from(b)).collect::<String>();
    Some(match tag {
        Tag::Utf8String => std::str::from_utf8(data).ok().map(str::to_owned),
        Tag::PrintableString | Tag::T61String | Tag::Ia5String | Tag::VisibleString => {
            Some(latin1())
        }
        Tag::BmpString => {
            if !data.len().is_multiple_of(2) {
                None
            } else {
                let units = data
                    .chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]));
                // UCS-2: every unit is one character; surrogates are invalid.
                units
                    .map(|u| char::from_u32(u32::from(u)))
                    .collect::<Option<String>>()
            }
        }
        Tag::UniversalString => {
            if !data.len().is_multiple_of(4) {
                None
            } else {
                data.chunks_exact(4)
                    .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                    .collect::<Option<String>>()
            }
        }
        _ => return None,
    })
}

/// `ossl_isspace`: the C locale's white space.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// `asn1_string_canon` on UTF-8 bytes: trim, fold inner white space to one
/// space, lower-case ASCII.
fn fold(text: &[u8]) -> Vec<u8> {
    let start = text.iter().position(|&b| !is_space(b));
    let end = text.iter().rposition(|&b| !is_space(b));
    let (Some(start), Some(end)) = (start, end) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(end + 1 - start);
    let mut in_space = false;
    for &b in &text[start..=end] {
        if is_space(b) {
            if !in_space {
                out.push(b' ');
            }
            in_space = true;
        } else {
            out.push(b.to_ascii_lowercase());
            in_space = false;
        }
    }
    out
}

fn canonical_value(attr: &AttributeTypeAndValue<'_>) -> Option<CanonicalValue> {
    let value = attr.attr_value();
    if value.class() == Class::Universal {
        if let Some(text) = text_of(value.tag(), value.data) {
            return Some(CanonicalValue::Text(fold(text?.as_bytes())));
        }
    }
    Some(CanonicalValue::Other(
        value.class() as u8,
        value.tag().0,
        value.data.to_vec(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::FromDer as _;

    /// DER of a Name with one RDN per `(tag, value)`, each a CN.
    fn name_der(rdns: &[&[(u8, &[u8])]]) -> Vec<u8> {
        fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
            assert!(content.len() < 128);
            let mut v = vec![tag, content.len() as u8];
            v.extend_from_slice(content);
            v
        }
        const CN: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];
        let mut seq = Vec::new();
        for rdn in rdns {
            let mut set = Vec::new();
            for (tag, value) in *rdn {
                let mut atv = CN.to_vec();
                atv.extend(tlv(*tag, value));
                set.extend(tlv(0x30, &atv));
            }
            seq.extend(tlv(0x31, &set));
        }
        tlv(0x30, &seq)
    }

    fn same(a: &[u8], b: &[u8]) -> bool {
        let (_, a) = X509Name::from_der(a).unwrap();
        let (_, b) = X509Name::from_der(b).unwrap();
        StoredName::of(&a).matches(&b)
    }

    const UTF8: u8 = 0x0c;
    const PRINTABLE: u8 = 0x13;
    const IA5: u8 = 0x16;
    const BMP: u8 = 0x1e;
    const NUMERIC: u8 = 0x12;

    #[test]
    fn string_types_compare_as_text() {
        let printable = name_der(&[&[(PRINTABLE, b"Bus CA")]]);
        let utf8 = name_der(&[&[(UTF8, b"Bus CA")]]);
        let ia5 = name_der(&[&[(IA5, b"Bus CA")]]);
        let bmp = name_der(&[&[(BMP, b"\0B\0u\0s\0 \0C\0A")]]);
        for other in [&utf8, &ia5, &bmp] {
            assert!(same(&printable, other));
            assert!(same(other, &printable));
        }
    }

    #[test]
    fn case_and_white_space_are_folded() {
        let a = name_der(&[&[(UTF8, b"Bus CA")]]);
        for b in [&b"bus ca"[..], b"  BUS \t\n CA ", b"bUs\x0bCa"] {
            assert!(same(&a, &name_der(&[&[(PRINTABLE, b)]])), "{b:?}");
        }
        for b in [&b"BusCA"[..], b"Bus CA2", b"Bus-CA"] {
            assert!(!same(&a, &name_der(&[&[(UTF8, b)]])), "{b:?}");
        }
    }

    #[test]
    fn non_ascii_is_not_case_folded_and_latin1_types_are_latin1() {
        let upper = name_der(&[&[(UTF8, "É".as_bytes())]]);
        let lower = name_der(&[&[(UTF8, "é".as_bytes())]]);
        assert!(!same(&upper, &lower));
        // A T61String byte 0xE9 is Latin-1 'é', as in ASN1_STRING_to_UTF8.
        let t61 = name_der(&[&[(0x14, b"\xe9")]]);
        assert!(same(&lower, &t61));
    }

    #[test]
    fn other_types_are_kept_exactly() {
        let numeric = name_der(&[&[(NUMERIC, b"123")]]);
        let utf8 = name_der(&[&[(UTF8, b"123")]]);
        assert!(!same(&numeric, &utf8));
        assert!(same(&numeric, &name_der(&[&[(NUMERIC, b"123")]])));
    }

    #[test]
    fn rdn_order_matters_but_order_inside_an_rdn_does_not() {
        let ab = name_der(&[&[(UTF8, b"a")], &[(UTF8, b"b")]]);
        let ba = name_der(&[&[(UTF8, b"b")], &[(UTF8, b"a")]]);
        assert!(!same(&ab, &ba));
        let set_ab = name_der(&[&[(UTF8, b"a"), (UTF8, b"b")]]);
        let set_ba = name_der(&[&[(PRINTABLE, b"B"), (UTF8, b"a")]]);
        assert!(same(&set_ab, &set_ba));
        assert!(!same(&set_ab, &ab));
    }

    #[test]
    fn unconvertible_values_match_only_byte_for_byte() {
        let bad = name_der(&[&[(UTF8, b"\xff")]]);
        if X509Name::from_der(&bad).is_err() {
            return; // the parser already refuses it: nothing to compare
        }
        assert!(same(&bad, &bad));
        assert!(!same(&bad, &name_der(&[&[(PRINTABLE, b"\xff")]])));
    }
}

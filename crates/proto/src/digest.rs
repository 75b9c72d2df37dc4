//! [`Digest`]: the SHA-256 of a message's canonical signed part.
//!
//! One type for what an ACK's `ack_digest` names, what a publisher expects
//! back and what a consumer remembers about a handled body, so that the
//! three cannot drift apart (a `String` here, a `[u8; 32]` there). On the
//! wire it is written `sha256:<64 lowercase hex digits>`.

use std::fmt;

/// The text before the hex digits in an `ack_digest`.
pub const DIGEST_PREFIX: &str = "sha256:";

/// SHA-256 of the canonical bytes a message's signature covers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of already-canonical signed bytes
    /// ([`Envelope::signed_part`](crate::Envelope::signed_part)).
    pub fn of_signed_part(signed_part: &str) -> Self {
        Digest::of_bytes(signed_part.as_bytes())
    }

    /// The SHA-256 of any bytes (the trust store keys certificates by it).
    pub fn of_bytes(bytes: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Digest(out)
    }

    /// Reads the `sha256:<hex>` text of an `ack_digest`. `None` for anything
    /// else (another prefix, upper-case or short hex): such an ACK names no
    /// body we could have sent, so it never matches.
    pub fn parse(text: &str) -> Option<Self> {
        let hex_digits = text.strip_prefix(DIGEST_PREFIX)?;
        if hex_digits.len() != 64 || hex_digits.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_digits, &mut out).ok()?;
        Some(Digest(out))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<[u8; 32]> for Digest {
    fn from(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }
}

/// `sha256:<hex>`, the `ack_digest` text.
impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(DIGEST_PREFIX)?;
        f.write_str(&hex::encode(self.0))
    }
}

/// Serialises as its `sha256:<hex>` text, the way it stands in an ACK.
impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Short form: enough to tell digests apart in logs and test output.
        write!(f, "Digest({}…)", &hex::encode(&self.0[..6]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_roundtrip_and_strict_parsing() {
        let d = Digest::of_signed_part("{}");
        let text = d.to_string();
        assert_eq!(
            text,
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert_eq!(Digest::parse(&text), Some(d));
        assert_eq!(Digest::parse(&text.to_uppercase()), None);
        assert_eq!(Digest::parse(&text.replace("sha256:", "sha1:")), None);
        assert_eq!(Digest::parse(&text[..text.len() - 2]), None);
        assert_eq!(Digest::parse("sha256:zz"), None);
    }
}

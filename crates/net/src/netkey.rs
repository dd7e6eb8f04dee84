//! The national network's key (`cluster.key_file`: 32 random bytes as 64
//! hex digits, the same on every node, never sent). Two keys derive from
//! it, one per use: one seals the callback records of the work stream
//! (AES-256-GCM), the other authenticates every message the nodes send
//! each other over NATS (HMAC-SHA256 over the subject and the payload, in
//! the `Centralino-Mac` header). With it, a NATS credential alone is not
//! a node: it can neither announce operators (and so be handed citizens'
//! calls), nor offer or grant calls, nor read or plant callbacks.

use std::sync::Arc;

use async_nats::HeaderMap;
use aws_lc_rs::hmac;
use centralino_cluster::work::WorkRecord;

use crate::error::NetError;

/// The header carrying a message's MAC.
pub(crate) const MAC_HEADER: &str = "Centralino-Mac";

/// The network's key, its two halves.
pub(crate) struct NetworkKey {
    sealer: Sealer,
    mac: hmac::Key,
}

impl NetworkKey {
    /// Reads `file` (64 hex digits): a file the node cannot use stops it
    /// at start, named (never the key).
    pub(crate) fn from_file(file: &std::path::Path) -> Result<Arc<Self>, NetError> {
        let err = |reason: &str| NetError::NetworkKey {
            file: file.to_owned(),
            reason: reason.to_owned(),
        };
        let text = std::fs::read_to_string(file).map_err(|e| err(&e.to_string()))?;
        let bytes = crate::session::unhex(text.trim())
            .filter(|b| b.len() == 32)
            .ok_or_else(|| err("64 hex digits (32 random bytes) expected"))?;
        Self::from_bytes(&bytes).ok_or_else(|| err("not a usable key"))
    }

    fn from_bytes(bytes: &[u8]) -> Option<Arc<Self>> {
        // One key per use, so neither can stand in for the other.
        let root = hmac::Key::new(hmac::HMAC_SHA256, bytes);
        let derive = |label: &[u8]| hmac::sign(&root, label);
        let seal = derive(b"centralino work stream seal v1");
        let mac = derive(b"centralino cluster message mac v1");
        let unbound =
            aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, seal.as_ref()).ok()?;
        Some(Arc::new(Self {
            sealer: Sealer(aws_lc_rs::aead::LessSafeKey::new(unbound)),
            mac: hmac::Key::new(hmac::HMAC_SHA256, mac.as_ref()),
        }))
    }

    pub(crate) fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// What a message's MAC covers: its subject, where its answer goes
    /// (a replayed request cannot send the answer elsewhere), its payload.
    fn covered(subject: &str, reply: &str, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(subject.len() + reply.len() + 2 + payload.len());
        m.extend_from_slice(subject.as_bytes());
        m.push(0);
        m.extend_from_slice(reply.as_bytes());
        m.push(0);
        m.extend_from_slice(payload);
        m
    }

    /// Headers carrying the MAC of `payload` sent on `subject`, its answer
    /// expected on `reply` (`""`: none).
    pub(crate) fn sign(&self, subject: &str, reply: &str, payload: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        let tag = hmac::sign(&self.mac, &Self::covered(subject, reply, payload));
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        h.insert(MAC_HEADER, hex.as_str());
        h
    }

    /// Whether `payload` on `subject` (answer expected on `reply`) carries
    /// this network's MAC.
    pub(crate) fn verify(
        &self,
        subject: &str,
        reply: &str,
        payload: &[u8],
        headers: Option<&HeaderMap>,
    ) -> bool {
        let Some(hex) = headers.and_then(|h| h.get(MAC_HEADER)).map(|v| v.as_str()) else {
            return false;
        };
        let Some(mac) = crate::session::unhex(hex).filter(|m| m.len() == 32) else {
            return false;
        };
        hmac::verify(&self.mac, &Self::covered(subject, reply, payload), &mac).is_ok()
    }
}

/// Seals records (AES-256-GCM, the subject as associated data, a random
/// nonce each): the NATS servers and anyone holding only a NATS
/// credential see no number, cannot plant a callback, and cannot move
/// one record onto another callback's subject.
pub(crate) struct Sealer(aws_lc_rs::aead::LessSafeKey);

/// The sealed form's first bytes (its version).
const SEALED: &[u8] = b"CW2";
const NONCE: usize = aws_lc_rs::aead::NONCE_LEN;

impl Sealer {
    pub(crate) fn seal(&self, subject: &str, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        let mut body = plain.to_vec();
        self.0
            .seal_in_place_append_tag(
                aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                aws_lc_rs::aead::Aad::from(subject.as_bytes()),
                &mut body,
            )
            .ok()?;
        let mut out = Vec::with_capacity(SEALED.len() + NONCE + body.len());
        out.extend_from_slice(SEALED);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Some(out)
    }

    /// The record in `sealed` if this key sealed it for `subject`.
    pub(crate) fn open(&self, subject: &str, sealed: &[u8]) -> Option<WorkRecord> {
        let rest = sealed.strip_prefix(SEALED)?;
        if rest.len() < NONCE || rest.len() > centralino_cluster::work::MAX_RECORD_BYTES * 2 {
            return None;
        }
        let (nonce, body) = rest.split_at(NONCE);
        let nonce = aws_lc_rs::aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let plain = self
            .0
            .open_in_place(
                nonce,
                aws_lc_rs::aead::Aad::from(subject.as_bytes()),
                &mut body,
            )
            .ok()?;
        WorkRecord::decode(plain)
            .ok()
            .filter(|r| r.subject().as_deref() == Some(subject))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_accepted_only_with_its_own_subject_answer_payload_and_key() {
        let k = NetworkKey::from_bytes(&[7; 32]).unwrap();
        let other = NetworkKey::from_bytes(&[8; 32]).unwrap();
        let s = "centralino.v1.offer.roma-1";
        let r = "_INBOX_milano-1.x";
        let h = k.sign(s, r, b"{}");
        assert!(k.verify(s, r, b"{}", Some(&h)));
        assert!(
            !k.verify("centralino.v1.offer.napoli-1", r, b"{}", Some(&h)),
            "another subject"
        );
        assert!(
            !k.verify(s, "_INBOX_evil.x", b"{}", Some(&h)),
            "the answer sent elsewhere"
        );
        assert!(!k.verify(s, r, b"{ }", Some(&h)), "another payload");
        assert!(!other.verify(s, r, b"{}", Some(&h)), "another key");
        assert!(!k.verify(s, r, b"{}", None), "unsigned");
        let mut bad = HeaderMap::new();
        bad.insert(MAC_HEADER, "+f".repeat(32).as_str());
        assert!(!k.verify(s, r, b"{}", Some(&bad)));
    }
}

//! Webhook signing (Standard Webhooks 1.0): `v1,` + base64(HMAC-SHA256(key, "{id}.{ts}.{body}")),
//! keyed by the base64-decoded part of a `whsec_` secret.
//!
//! Pure functions; the webhook notifier calls them at send time with the exact bytes it sends.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::secret::Secret;

/// A Standard Webhooks signing key, decoded once.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

impl SigningKey {
    /// Decodes `whsec_<base64>`. `None` when it is not one (the config check prevents this).
    pub fn from_secret(secret: &Secret) -> Option<Self> {
        let b64 = secret.expose().strip_prefix("whsec_")?;
        STANDARD.decode(b64).ok().map(SigningKey)
    }

    /// The `webhook-signature` header value for one attempt.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!(
            "v1,{}",
            STANDARD.encode(hmac_sha256(
                &self.0,
                &[
                    id.as_bytes(),
                    b".",
                    timestamp.to_string().as_bytes(),
                    b".",
                    body
                ]
            ))
        )
    }
}

/// HMAC-SHA256 of the concatenated `parts`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return Vec::new(),
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproduces_the_published_standard_webhooks_test_vector() {
        let key = SigningKey::from_secret(&Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))
            .unwrap();
        assert_eq!(
            key.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn debug_hides_the_key() {
        let key = SigningKey::from_secret(&Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))
            .unwrap();
        assert_eq!(format!("{key:?}"), "SigningKey(***)");
    }
}

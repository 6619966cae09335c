//! HS256 JWTs as client tokens (SPEC §11, the seed aiproxy's signed
//! tokens): `header.payload.signature`, base64url without padding; the
//! header must say `alg: HS256` (anything else, `none` included, is
//! refused); the signature is checked in constant time (ring's HMAC); an
//! `exp` in the past is refused; the configured claim names the client.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use serde_json::Value;

/// The `[auth]` JWT settings, validated.
pub struct JwtAuth {
    key: hmac::Key,
    /// The claim that names the client (`email` by default).
    pub claim: String,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuth").field("claim", &self.claim).finish_non_exhaustive()
    }
}

/// Why a JWT was refused (never shown to the client beyond "401").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwtError {
    Malformed,
    Algorithm,
    Signature,
    Expired,
    NoClaim,
}

impl JwtAuth {
    pub fn new(secret: &[u8], claim: String) -> JwtAuth {
        JwtAuth { key: hmac::Key::new(hmac::HMAC_SHA256, secret), claim }
    }

    /// The client name a valid token carries, at `now` (seconds since the
    /// Unix epoch).
    pub fn verify(&self, token: &str, now: u64) -> Result<String, JwtError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let decode = |part: &str| URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).map_err(|_| JwtError::Malformed);
        let head: Value = serde_json::from_slice(&decode(header)?).map_err(|_| JwtError::Malformed)?;
        if head.get("alg").and_then(Value::as_str) != Some("HS256") {
            return Err(JwtError::Algorithm);
        }
        let signed = &token[..header.len() + 1 + payload.len()];
        hmac::verify(&self.key, signed.as_bytes(), &decode(signature)?).map_err(|_| JwtError::Signature)?;
        let claims: Value = serde_json::from_slice(&decode(payload)?).map_err(|_| JwtError::Malformed)?;
        match claims.get("exp") {
            None => {}
            Some(exp) => match exp.as_f64() {
                Some(exp) if exp > now as f64 => {}
                Some(_) => return Err(JwtError::Expired),
                None => return Err(JwtError::Malformed),
            },
        }
        let name = claims.get(&self.claim).and_then(Value::as_str).ok_or(JwtError::NoClaim)?;
        Ok(name.to_ascii_lowercase())
    }
}

/// True when `s` has the shape of a JWT: three base64url parts.
pub fn is_jwt_shaped(s: &str) -> bool {
    s.len() <= 8192
        && s.split('.').count() == 3
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], header: &str, payload: &str) -> String {
        let h = URL_SAFE_NO_PAD.encode(header);
        let p = URL_SAFE_NO_PAD.encode(payload);
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let s = URL_SAFE_NO_PAD.encode(hmac::sign(&key, format!("{h}.{p}").as_bytes()));
        format!("{h}.{p}.{s}")
    }

    #[test]
    fn verification() {
        let auth = JwtAuth::new(b"s3cret", "email".into());
        let hs = r#"{"alg":"HS256","typ":"JWT"}"#;
        let ok = sign(b"s3cret", hs, r#"{"email":"Alice@Team.example","exp":2000}"#);
        assert_eq!(auth.verify(&ok, 1000), Ok("alice@team.example".into()));
        assert!(is_jwt_shaped(&ok));
        assert_eq!(auth.verify(&ok, 2000), Err(JwtError::Expired));
        let forever = sign(b"s3cret", hs, r#"{"email":"bob@x"}"#);
        assert_eq!(auth.verify(&forever, u64::MAX / 2), Ok("bob@x".into()));
        assert_eq!(auth.verify(&sign(b"other", hs, r#"{"email":"a@x"}"#), 0), Err(JwtError::Signature));
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(r#"{"email":"a@x"}"#)
        );
        assert_eq!(auth.verify(&none, 0), Err(JwtError::Algorithm));
        let hs512 = sign(b"s3cret", r#"{"alg":"HS512"}"#, r#"{"email":"a@x"}"#);
        assert_eq!(auth.verify(&hs512, 0), Err(JwtError::Algorithm));
        assert_eq!(auth.verify(&sign(b"s3cret", hs, r#"{"sub":"a"}"#), 0), Err(JwtError::NoClaim));
        assert_eq!(auth.verify(&sign(b"s3cret", hs, r#"{"email":"a@x","exp":"soon"}"#), 0), Err(JwtError::Malformed));
        for bad in ["", "a.b", "a.b.c.d", "!!.??.**", "e30.e30.e30"] {
            assert!(auth.verify(bad, 0).is_err(), "{bad}");
        }
        // A payload changed after signing.
        let mut parts: Vec<&str> = ok.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(r#"{"email":"mallory@x"}"#);
        parts[1] = &forged;
        assert_eq!(auth.verify(&parts.join("."), 0), Err(JwtError::Signature));
    }
}

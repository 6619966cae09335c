//! The seed ai-proxy-cloudflare's encrypted vault (SPEC §12), read as it is:
//! a JSON file of providers encrypted by
//! `openssl enc -aes-256-cbc -a -pbkdf2 -iter 100000 -salt` — base64 of
//! `Salted__`, an 8-byte salt and the ciphertext; key and IV are the first
//! 48 bytes of PBKDF2-HMAC-SHA256(passphrase, salt, 100000); PKCS#7.
//! [`encrypt`] writes the same format (tests, and `veilgate vault`).

use std::collections::BTreeMap;

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
use base64::Engine;
use serde::Deserialize;

use crate::preset::ModelInfo;

const MAGIC: &[u8] = b"Salted__";
const ITERATIONS: u32 = 100_000;

/// Why a vault could not be read (never its content).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    #[error("not base64 (expected the output of `openssl enc -a`)")]
    NotBase64,
    #[error("no `Salted__` header (expected `openssl enc -salt`)")]
    NoSalt,
    #[error("wrong passphrase or damaged file")]
    Decrypt,
    #[error("not a vault of providers: {0}")]
    Json(String),
}

type Encryptor = cbc::Encryptor<aes::Aes256>;
type Decryptor = cbc::Decryptor<aes::Aes256>;

fn key_and_iv(passphrase: &[u8], salt: &[u8]) -> ([u8; 32], [u8; 16]) {
    let mut out = [0u8; 48];
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(passphrase, salt, ITERATIONS, &mut out);
    let (mut key, mut iv) = ([0u8; 32], [0u8; 16]);
    key.copy_from_slice(&out[..32]);
    iv.copy_from_slice(&out[32..]);
    (key, iv)
}

/// The plaintext of an `openssl enc -aes-256-cbc -a -pbkdf2 -iter 100000
/// -salt` file.
pub fn decrypt(text: &str, passphrase: &[u8]) -> Result<Vec<u8>, VaultError> {
    let compact: String = text.split_ascii_whitespace().collect();
    let data = base64::engine::general_purpose::STANDARD.decode(compact).map_err(|_| VaultError::NotBase64)?;
    let rest = data.strip_prefix(MAGIC).ok_or(VaultError::NoSalt)?;
    if rest.len() < 8 + 16 || (rest.len() - 8) % 16 != 0 {
        return Err(VaultError::Decrypt);
    }
    let (salt, ciphertext) = rest.split_at(8);
    let (key, iv) = key_and_iv(passphrase, salt);
    Decryptor::new(&key.into(), &iv.into()).decrypt_padded_vec_mut::<Pkcs7>(ciphertext).map_err(|_| VaultError::Decrypt)
}

/// `plain` encrypted as `openssl enc -aes-256-cbc -a -pbkdf2 -iter 100000
/// -salt` would (base64 in lines of 64 characters).
pub fn encrypt(plain: &[u8], passphrase: &[u8], salt: [u8; 8]) -> String {
    let (key, iv) = key_and_iv(passphrase, &salt);
    let ciphertext = Encryptor::new(&key.into(), &iv.into()).encrypt_padded_vec_mut::<Pkcs7>(plain);
    let mut data = MAGIC.to_vec();
    data.extend_from_slice(&salt);
    data.extend_from_slice(&ciphertext);
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 1);
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out
}

/// One provider of the vault, as veilgate uses it.
#[derive(Debug, PartialEq)]
pub struct VaultProvider {
    pub protocol: Option<String>,
    /// `endpoint` without its trailing version segment.
    pub target: String,
    /// The keys, those of type `expired` left out.
    pub keys: Vec<String>,
    pub models: Vec<ModelInfo>,
}

#[derive(Deserialize)]
struct RawVault {
    providers: BTreeMap<String, RawProvider>,
}

#[derive(Deserialize)]
struct RawProvider {
    #[serde(default)]
    protocol: Option<String>,
    endpoint: String,
    #[serde(default)]
    keys: Vec<RawKey>,
    #[serde(default)]
    models: Vec<ModelInfo>,
}

#[derive(Deserialize)]
struct RawKey {
    key: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

/// The providers of a decrypted vault. Errors say where the JSON is wrong,
/// never what it holds.
pub fn providers(plain: &[u8]) -> Result<BTreeMap<String, VaultProvider>, VaultError> {
    let raw: RawVault = serde_json::from_slice(plain).map_err(|e| {
        // serde_json's message can quote a value; only its position is kept.
        VaultError::Json(format!("line {} column {}", e.line(), e.column()))
    })?;
    Ok(raw
        .providers
        .into_iter()
        .map(|(name, p)| {
            let keys = p.keys.into_iter().filter(|k| k.kind.as_deref() != Some("expired")).map(|k| k.key).collect();
            let provider =
                VaultProvider { protocol: p.protocol, target: without_version(&p.endpoint), keys, models: p.models };
            (name, provider)
        })
        .collect())
}

/// `https://api.groq.com/openai/v1` → `https://api.groq.com/openai`: the
/// last path segment is dropped when it is a version (`v1`, `v1beta`,
/// `v2alpha`…), since veilgate's routes carry it.
pub fn without_version(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    if let Some((head, last)) = trimmed.rsplit_once('/')
        && !head.ends_with('/')
        && is_version(last)
    {
        return head.to_owned();
    }
    trimmed.to_owned()
}

fn is_version(segment: &str) -> bool {
    let Some(rest) = segment.strip_prefix('v') else { return false };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && rest[digits..].bytes().all(|b| b.is_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let plain = br#"{"providers":{}}"#;
        let text = encrypt(plain, b"right", *b"saltsalt");
        assert!(text.lines().all(|l| l.len() <= 64));
        assert_eq!(decrypt(&text, b"right").unwrap(), plain);
        // A wrong passphrase fails the padding check, or (1 in 256) yields
        // garbage that is not the plaintext.
        assert_ne!(decrypt(&text, b"wrong").ok().as_deref(), Some(&plain[..]));
        assert_eq!(decrypt("not base64!", b"x"), Err(VaultError::NotBase64));
        assert_eq!(
            decrypt(&base64::engine::general_purpose::STANDARD.encode(b"plain text here"), b"x"),
            Err(VaultError::NoSalt)
        );
        let mut damaged = base64::engine::general_purpose::STANDARD.decode(text.replace('\n', "")).unwrap();
        damaged.truncate(damaged.len() - 3);
        let damaged = base64::engine::general_purpose::STANDARD.encode(damaged);
        assert_eq!(decrypt(&damaged, b"right"), Err(VaultError::Decrypt));
    }

    #[test]
    fn reads_what_the_openssl_cli_wrote() {
        // printf '%s' '{"providers":{"x":{"endpoint":"https://a.example/v1","keys":[{"key":"k1"}]}}}' |
        //   openssl enc -aes-256-cbc -a -pbkdf2 -iter 100000 -salt -pass pass:hunter2
        let text = "U2FsdGVkX19r+4fKCl0D11K7a06O0lLIP7Kj85/4RHuJVAqujJi0jJGnLhSrSf5o\n\
                    +PcbFuDM14sm5AP6YF0IvmECabaTUS+VVnY7iwtG1Sb9oUnYPYuidynlaz2ooV2x\n";
        let plain = decrypt(text, b"hunter2").unwrap();
        assert_eq!(plain, br#"{"providers":{"x":{"endpoint":"https://a.example/v1","keys":[{"key":"k1"}]}}}"#);
        assert_eq!(providers(&plain).unwrap()["x"].target, "https://a.example");
    }

    #[test]
    fn providers_keys_and_targets() {
        let json = br#"{"version":1,"providers":{
            "groq":{"protocol":"openai","endpoint":"https://api.groq.com/openai/v1",
                    "keys":[{"key":"gsk_live","owner":"a@b.c","type":"free"},{"key":"gsk_old","type":"expired"}],
                    "models":[{"id":"llama-3.1-8b-instant","usage":"chat","contextWindow":131072,"maxOutputTokens":8192,"tpmLimit":null,"priority":10}]},
            "gemini":{"protocol":"gemini","endpoint":"https://generativelanguage.googleapis.com/v1beta/","keys":[]}}}"#;
        let p = providers(json).unwrap();
        let groq = &p["groq"];
        assert_eq!(groq.target, "https://api.groq.com/openai");
        assert_eq!(groq.keys, ["gsk_live"]);
        assert_eq!(groq.models[0].id, "llama-3.1-8b-instant");
        assert_eq!(groq.models[0].context_window, Some(131072));
        assert_eq!(p["gemini"].target, "https://generativelanguage.googleapis.com");
        let bad = providers(br#"{"providers":{"x":{"keys":[{"key":"secret-value"}]}}}"#).unwrap_err();
        assert!(!bad.to_string().contains("secret-value"), "{bad}");
    }

    #[test]
    fn version_segments() {
        for (from, to) in [
            ("https://api.x.ai/v1", "https://api.x.ai"),
            ("https://a.example/api/v2alpha", "https://a.example/api"),
            ("https://a.example/api", "https://a.example/api"),
            ("https://a.example/v1/chat", "https://a.example/v1/chat"),
            ("https://v1.example", "https://v1.example"),
            ("https://a.example/vision", "https://a.example/vision"),
        ] {
            assert_eq!(without_version(from), to, "{from}");
        }
    }
}

//! The providers of an `EncryptionConfiguration` and their byte formats, as
//! kube-apiserver's `storage/value/encrypt/{aes,secretbox,identity}` write them, so a
//! value is `<provider prefix><key name>:<body>`:
//!
//! - `k8s:enc:aescbc:v1:<key>:` + 16-byte random IV + AES-CBC ciphertext with PKCS#7
//!   padding (no authentication: upstream discourages aescbc for that reason);
//! - `k8s:enc:aesgcm:v1:<key>:` + 12-byte random nonce + AES-GCM ciphertext and
//!   16-byte tag, the value's store key as additional authenticated data (so a value
//!   copied under another key fails to decrypt);
//! - `k8s:enc:secretbox:v1:<key>:` + 24-byte random nonce + NaCl secretbox
//!   (XSalsa20-Poly1305: 16-byte tag, then the ciphertext), no authenticated data;
//! - identity: the value as is; reading refuses values starting with `k8s:enc:`.
//!
//! Entry points: [`Provider::seal`] and [`Provider::open`]; [`NamedKey::new`] builds a
//! key from the config's decoded secret.

use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use ring::rand::SecureRandom as _;

/// Every encrypted value starts with this (upstream reserves it).
pub const ENCRYPTED: &[u8] = b"k8s:enc:";

/// The encrypting providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    AesCbc,
    AesGcm,
    Secretbox,
}

impl Kind {
    /// The config's name of the provider.
    pub fn name(self) -> &'static str {
        match self {
            Kind::AesCbc => "aescbc",
            Kind::AesGcm => "aesgcm",
            Kind::Secretbox => "secretbox",
        }
    }

    /// What its values start with (before the key name).
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::AesCbc => "k8s:enc:aescbc:v1:",
            Kind::AesGcm => "k8s:enc:aesgcm:v1:",
            Kind::Secretbox => "k8s:enc:secretbox:v1:",
        }
    }

    /// Key lengths it takes, in bytes (AES-128/192/256; secretbox's one).
    pub fn key_sizes(self) -> &'static [usize] {
        match self {
            Kind::AesCbc | Kind::AesGcm => &[16, 24, 32],
            Kind::Secretbox => &[32],
        }
    }
}

/// Why a value could not be turned into its plaintext (or back).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    #[error(
        "the value was written by {provider} key {key:?}, which is not in the encryption config"
    )]
    NoSuchKey { provider: &'static str, key: String },
    #[error(
        "{provider} key {key:?} could not decrypt the value ({reason}): the key's secret differs from the one it was written with, or the value was altered or moved"
    )]
    Decrypt {
        provider: &'static str,
        key: String,
        reason: &'static str,
    },
    #[error("the value was encrypted by {prefix}, a provider this resource's rule does not list")]
    NoSuchProvider { prefix: String },
    #[error(
        "the value is not encrypted and this resource's providers do not include identity (list `- identity: {{}}` last to read values stored before encryption was turned on)"
    )]
    NotEncrypted,
    #[error(
        "the value is encrypted ({prefix}) but no rule of the encryption config names this resource"
    )]
    NoRule { prefix: String },
    #[error("encrypting with {provider} key {key:?} failed: {reason}")]
    Encrypt {
        provider: &'static str,
        key: String,
        reason: &'static str,
    },
}

/// AES with the key length the config gave.
#[derive(Clone)]
enum Aes {
    A128(Vec<u8>),
    A192(Vec<u8>),
    A256(Vec<u8>),
}

enum Gcm {
    A128(aes_gcm::Aes128Gcm),
    A192(aes_gcm::AesGcm<aes::Aes192, U12>),
    A256(aes_gcm::Aes256Gcm),
}

enum Cipher {
    Cbc(Aes),
    Gcm(Box<Gcm>),
    Secretbox(Box<crypto_secretbox::XSalsa20Poly1305>),
}

/// One `keys[]` entry, ready to use.
pub struct NamedKey {
    pub name: String,
    cipher: Cipher,
}

impl std::fmt::Debug for NamedKey {
    /// The name only: the secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamedKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// One `providers[]` entry.
#[derive(Debug)]
pub enum Provider {
    Identity,
    /// Writes with its first key; reads with whichever key the value names.
    Keys {
        kind: Kind,
        keys: Vec<NamedKey>,
    },
}

const CBC_IV: usize = 16;
const GCM_NONCE: usize = 12;
const GCM_TAG: usize = 16;
const SECRETBOX_NONCE: usize = 24;
const SECRETBOX_TAG: usize = 16;

fn random<const N: usize>() -> Option<[u8; N]> {
    let mut out = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut out).ok()?;
    Some(out)
}

impl NamedKey {
    /// A key of `kind` from its decoded secret (length checked by validation, again here).
    pub fn new(kind: Kind, name: &str, secret: &[u8]) -> Result<Self, String> {
        let bad = || {
            format!(
                "{} key {name:?}: secret is {} bytes, want one of {:?}",
                kind.name(),
                secret.len(),
                kind.key_sizes()
            )
        };
        let cipher = match kind {
            Kind::AesCbc => Cipher::Cbc(match secret.len() {
                16 => Aes::A128(secret.to_vec()),
                24 => Aes::A192(secret.to_vec()),
                32 => Aes::A256(secret.to_vec()),
                _ => return Err(bad()),
            }),
            Kind::AesGcm => Cipher::Gcm(Box::new(match secret.len() {
                16 => Gcm::A128(aes_gcm::Aes128Gcm::new_from_slice(secret).map_err(|_| bad())?),
                24 => Gcm::A192(
                    aes_gcm::AesGcm::<aes::Aes192, U12>::new_from_slice(secret)
                        .map_err(|_| bad())?,
                ),
                32 => Gcm::A256(aes_gcm::Aes256Gcm::new_from_slice(secret).map_err(|_| bad())?),
                _ => return Err(bad()),
            })),
            Kind::Secretbox => Cipher::Secretbox(Box::new(
                crypto_secretbox::XSalsa20Poly1305::new_from_slice(secret).map_err(|_| bad())?,
            )),
        };
        Ok(Self {
            name: name.to_owned(),
            cipher,
        })
    }

    /// The body after `<prefix><name>:`.
    fn seal(&self, kind: Kind, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, TransformError> {
        let fail = |reason| TransformError::Encrypt {
            provider: kind.name(),
            key: self.name.clone(),
            reason,
        };
        let no_random = || fail("no random bytes from the operating system");
        match &self.cipher {
            Cipher::Cbc(aes) => {
                let iv = random::<CBC_IV>().ok_or_else(no_random)?;
                let body = cbc_encrypt(aes, &iv, plain).ok_or_else(|| fail("bad key length"))?;
                Ok([&iv[..], &body].concat())
            }
            Cipher::Gcm(gcm) => {
                let nonce = random::<GCM_NONCE>().ok_or_else(no_random)?;
                let payload = Payload { msg: plain, aad };
                let n = aes_gcm::Nonce::from_slice(&nonce);
                let sealed = match gcm.as_ref() {
                    Gcm::A128(c) => c.encrypt(n, payload),
                    Gcm::A192(c) => c.encrypt(n, payload),
                    Gcm::A256(c) => c.encrypt(n, payload),
                }
                .map_err(|_| fail("AES-GCM refused the value"))?;
                Ok([&nonce[..], &sealed].concat())
            }
            Cipher::Secretbox(c) => {
                let nonce = random::<SECRETBOX_NONCE>().ok_or_else(no_random)?;
                let sealed = c
                    .encrypt(crypto_secretbox::Nonce::from_slice(&nonce), plain)
                    .map_err(|_| fail("secretbox refused the value"))?;
                Ok([&nonce[..], &sealed].concat())
            }
        }
    }

    /// The plaintext of a body this key's name labelled.
    fn open(&self, kind: Kind, body: &[u8], aad: &[u8]) -> Result<Vec<u8>, TransformError> {
        let fail = |reason| TransformError::Decrypt {
            provider: kind.name(),
            key: self.name.clone(),
            reason,
        };
        let short = || fail("the stored data was shorter than the required size");
        match &self.cipher {
            Cipher::Cbc(aes) => {
                if body.len() < CBC_IV {
                    return Err(short());
                }
                let (iv, data) = body.split_at(CBC_IV);
                if data.is_empty() || data.len() % CBC_IV != 0 {
                    return Err(fail("the stored data is not a multiple of the block size"));
                }
                cbc_decrypt(aes, iv, data).ok_or_else(|| fail("invalid padding on input"))
            }
            Cipher::Gcm(gcm) => {
                if body.len() < GCM_NONCE + GCM_TAG {
                    return Err(short());
                }
                let (nonce, data) = body.split_at(GCM_NONCE);
                let payload = Payload { msg: data, aad };
                let n = aes_gcm::Nonce::from_slice(nonce);
                match gcm.as_ref() {
                    Gcm::A128(c) => c.decrypt(n, payload),
                    Gcm::A192(c) => c.decrypt(n, payload),
                    Gcm::A256(c) => c.decrypt(n, payload),
                }
                .map_err(|_| fail("message authentication failed"))
            }
            Cipher::Secretbox(c) => {
                if body.len() < SECRETBOX_NONCE + SECRETBOX_TAG {
                    return Err(short());
                }
                let (nonce, data) = body.split_at(SECRETBOX_NONCE);
                c.decrypt(crypto_secretbox::Nonce::from_slice(nonce), data)
                    .map_err(|_| fail("message authentication failed"))
            }
        }
    }
}

fn cbc_encrypt(aes: &Aes, iv: &[u8], plain: &[u8]) -> Option<Vec<u8>> {
    Some(match aes {
        Aes::A128(k) => cbc::Encryptor::<aes::Aes128>::new_from_slices(k, iv)
            .ok()?
            .encrypt_padded_vec_mut::<Pkcs7>(plain),
        Aes::A192(k) => cbc::Encryptor::<aes::Aes192>::new_from_slices(k, iv)
            .ok()?
            .encrypt_padded_vec_mut::<Pkcs7>(plain),
        Aes::A256(k) => cbc::Encryptor::<aes::Aes256>::new_from_slices(k, iv)
            .ok()?
            .encrypt_padded_vec_mut::<Pkcs7>(plain),
    })
}

fn cbc_decrypt(aes: &Aes, iv: &[u8], data: &[u8]) -> Option<Vec<u8>> {
    match aes {
        Aes::A128(k) => cbc::Decryptor::<aes::Aes128>::new_from_slices(k, iv)
            .ok()?
            .decrypt_padded_vec_mut::<Pkcs7>(data)
            .ok(),
        Aes::A192(k) => cbc::Decryptor::<aes::Aes192>::new_from_slices(k, iv)
            .ok()?
            .decrypt_padded_vec_mut::<Pkcs7>(data)
            .ok(),
        Aes::A256(k) => cbc::Decryptor::<aes::Aes256>::new_from_slices(k, iv)
            .ok()?
            .decrypt_padded_vec_mut::<Pkcs7>(data)
            .ok(),
    }
}

/// `k8s:enc:<provider>:v1:<key>:` of an encrypted value, for messages (at most 80 bytes).
pub fn label(value: &[u8]) -> String {
    let head = &value[..value.len().min(80)];
    let mut colons = 0;
    let end = head
        .iter()
        .position(|b| {
            colons += usize::from(*b == b':');
            colons == 5
        })
        .map_or(head.len(), |i| i + 1);
    String::from_utf8_lossy(&head[..end]).into_owned()
}

/// What reading a value came to.
#[derive(Debug)]
pub struct Opened {
    /// `None`: the stored bytes are the plaintext.
    pub plain: Option<Vec<u8>>,
    /// Read by another provider or key than the one that writes: a write of the same
    /// object would store other bytes (kube-apiserver's "stale").
    pub stale: bool,
    /// The provider prefix that read it (`identity` for plain values), for metrics.
    pub prefix: &'static str,
}

/// Encrypts with the first provider (and its first key): the bytes to store, `None`
/// for "as is" (identity).
pub fn seal(
    providers: &[std::sync::Arc<Provider>],
    plain: &[u8],
    aad: &[u8],
) -> Result<Option<Vec<u8>>, TransformError> {
    let Some(first) = providers.first() else {
        return Ok(None);
    };
    match first.as_ref() {
        Provider::Identity => Ok(None),
        Provider::Keys { kind, keys } => {
            let Some(key) = keys.first() else {
                return Ok(None);
            };
            let body = key.seal(*kind, plain, aad)?;
            let mut out = Vec::with_capacity(kind.prefix().len() + key.name.len() + 1 + body.len());
            out.extend_from_slice(kind.prefix().as_bytes());
            out.extend_from_slice(key.name.as_bytes());
            out.push(b':');
            out.extend_from_slice(&body);
            Ok(Some(out))
        }
    }
}

/// Decrypts with the providers whose prefix (and key name) the value carries, in
/// config order, as upstream's prefix transformers: a failing match does not stop
/// later ones (a provider listed twice while its keys rotate); an identity provider
/// reads only values without the `k8s:enc:` prefix.
pub fn open(
    providers: &[std::sync::Arc<Provider>],
    stored: &[u8],
    aad: &[u8],
) -> Result<Opened, TransformError> {
    // A key that failed says more than a key that is missing.
    let (mut failed, mut missing) = (None, None);
    for (i, provider) in providers.iter().enumerate() {
        match provider.as_ref() {
            Provider::Identity => {
                if !stored.starts_with(ENCRYPTED) {
                    return Ok(Opened {
                        plain: None,
                        stale: i != 0,
                        prefix: "identity",
                    });
                }
            }
            Provider::Keys { kind, keys } => {
                let Some(rest) = stored.strip_prefix(kind.prefix().as_bytes()) else {
                    continue;
                };
                let mut named = false;
                for (j, key) in keys.iter().enumerate() {
                    let Some(body) = rest
                        .strip_prefix(key.name.as_bytes())
                        .and_then(|r| r.strip_prefix(b":"))
                    else {
                        continue;
                    };
                    named = true;
                    match key.open(*kind, body, aad) {
                        Ok(plain) => {
                            return Ok(Opened {
                                plain: Some(plain),
                                stale: i != 0 || j != 0,
                                prefix: kind.prefix(),
                            });
                        }
                        Err(e) => {
                            failed.get_or_insert(e);
                        }
                    }
                }
                if !named {
                    let label = label(stored);
                    let key = label
                        .strip_prefix(kind.prefix())
                        .and_then(|k| k.strip_suffix(':'))
                        .unwrap_or("")
                        .to_owned();
                    missing.get_or_insert(TransformError::NoSuchKey {
                        provider: kind.name(),
                        key,
                    });
                }
            }
        }
    }
    Err(failed.or(missing).unwrap_or_else(|| {
        if stored.starts_with(ENCRYPTED) {
            TransformError::NoSuchProvider {
                prefix: label(stored),
            }
        } else {
            TransformError::NotEncrypted
        }
    }))
}

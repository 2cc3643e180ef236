//! The rules a fetched remote catalog must pass before the engine sees it (pure).
//!
//! In this order, so that nothing unsigned is even parsed: the minisign signature by one of
//! the configured keys (over the file's bytes; prehashed signatures only, as minisign makes
//! by default), UTF-8, the `[remote]` header, the expiry, then the serial against the
//! catalog in force — higher is new, lower is a rollback, equal is the same catalog only if
//! the bytes are the same (else a replay or a re-signed edit without a new serial).

use minisign_verify::{Error as MsError, PublicKey, Signature};
use serde::{Deserialize, Serialize};

use crate::catalog::remote::{self, Header};
use crate::catalog::Source;

/// Why a fetched catalog changes nothing. Each message says what the admin can do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the signature file is not a minisign signature ({0})")]
    SignatureFile(String),
    #[error("signed by an unknown key: none of the {0} key(s) in config.toml [remote_catalog] public_keys made this signature")]
    UnknownKey(usize),
    #[error("bad signature: the catalog is not what its key signed (tampered, or the catalog and its .minisig are from different uploads)")]
    BadSignature,
    #[error("the catalog is not UTF-8 text")]
    NotUtf8,
    #[error("the catalog's [remote] header is broken: {0}")]
    Header(String),
    #[error("expired at {expired} (serial {serial}); publish a freshly signed catalog with a later expiry")]
    Expired { serial: u64, expired: String },
    #[error("serial {new} is older than serial {in_force} in force (a rollback)")]
    Older { new: u64, in_force: u64 },
    #[error("serial {0} is the serial in force but the catalog differs (a replay, or an edit published without a new serial)")]
    SameSerialDiffers(u64),
}

/// The configured public keys, decoded.
#[derive(Debug, Clone)]
pub struct Keys(Vec<PublicKey>);

impl Keys {
    /// Decodes the base64 keys of config.toml (already checked there).
    pub fn decode(keys: &[String]) -> Result<Keys, String> {
        keys.iter()
            .map(|k| PublicKey::from_base64(k.trim()).map_err(|e| format!("public key {k:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()
            .map(Keys)
    }

    /// Whether one of the keys made `signature` over `data`.
    pub fn check(&self, data: &[u8], signature: &[u8]) -> Result<(), Refused> {
        let text = std::str::from_utf8(signature)
            .map_err(|_| Refused::SignatureFile("not text".into()))?;
        let sig = Signature::decode(text).map_err(|e| Refused::SignatureFile(e.to_string()))?;
        let mut known = false;
        for k in &self.0 {
            match k.verify(data, &sig, false) {
                Ok(()) => return Ok(()),
                Err(MsError::UnexpectedKeyId) => {}
                Err(MsError::UnexpectedAlgorithm) => {
                    return Err(Refused::SignatureFile(
                        "a legacy (not prehashed) signature; sign with minisign 0.8 or later"
                            .into(),
                    ))
                }
                Err(_) => known = true,
            }
        }
        Err(if known {
            Refused::BadSignature
        } else {
            Refused::UnknownKey(self.0.len())
        })
    }
}

/// A remote catalog that passed every rule, with what is kept of it on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    pub url: String,
    pub serial: u64,
    pub expiry: u64,
    /// The server's `ETag` of `catalog`, for `If-None-Match`.
    pub etag: Option<String>,
    /// Unix seconds at which it was taken.
    pub saved_at: u64,
    /// The catalog file and its minisign signature, exactly as fetched.
    pub catalog: String,
    pub signature: String,
}

impl Kept {
    /// The catalog as a layer source, named after its URL.
    pub fn source(&self) -> Source {
        Source::new(remote::source_path(&self.url), self.catalog.clone())
    }
}

/// What a fetched catalog is, compared with the one in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The very catalog in force (same serial, same bytes).
    Same,
    /// A newer catalog, verified: the engine validates it as a layer next.
    New { header: Header, text: String },
}

/// Checks a fetched catalog and its signature against the rules (see the module).
pub fn verify(
    url: &str,
    catalog: &[u8],
    signature: &[u8],
    keys: &Keys,
    in_force: Option<&Kept>,
    now: u64,
) -> Result<Verdict, Refused> {
    keys.check(catalog, signature)?;
    let text = std::str::from_utf8(catalog).map_err(|_| Refused::NotUtf8)?;
    let src = Source::new(remote::source_path(url), text);
    let header = remote::header(&src).map_err(|d| {
        Refused::Header(
            d.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    if let Some(k) = in_force {
        if header.serial < k.serial {
            return Err(Refused::Older {
                new: header.serial,
                in_force: k.serial,
            });
        }
        if header.serial == k.serial {
            return if k.catalog.as_bytes() == catalog {
                Ok(Verdict::Same)
            } else {
                Err(Refused::SameSerialDiffers(header.serial))
            };
        }
    }
    if header.expiry <= now {
        return Err(Refused::Expired {
            serial: header.serial,
            expired: crate::clock::format_unix(header.expiry),
        });
    }
    Ok(Verdict::New {
        header,
        text: text.to_string(),
    })
}

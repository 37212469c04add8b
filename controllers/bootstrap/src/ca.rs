//! kubeadm's CA pinning hash: `sha256:` + hex SHA-256 of the CA certificate's DER-encoded
//! SubjectPublicKeyInfo. Parsed with a minimal DER walk (only the outer TBSCertificate fields
//! are touched), so no X.509 library is needed.

use base64::Engine;
use sha2::{Digest, Sha256};

/// Why a CA bundle could not be used. Never carries key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CaError {
    #[error("no PEM CERTIFICATE block found")]
    NoCertificate,
    #[error("a CERTIFICATE block is not valid base64")]
    BadBase64,
    #[error("a certificate is not valid DER: {0}")]
    BadDer(&'static str),
}

/// Hashes of every certificate in a PEM bundle, in order.
pub fn ca_cert_hashes(pem: &[u8]) -> Result<Vec<String>, CaError> {
    let text = String::from_utf8_lossy(pem);
    let mut out = Vec::new();
    let mut rest = text.as_ref();
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let after = &rest[start + 27..];
        let end = after.find("-----END CERTIFICATE-----").ok_or(CaError::BadDer("unterminated PEM block"))?;
        let b64: String = after[..end].chars().filter(|c| !c.is_whitespace()).collect();
        let der = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| CaError::BadBase64)?;
        let spki = subject_public_key_info(&der)?;
        out.push(format!("sha256:{:x}", Sha256::digest(spki)));
        rest = &after[end..];
    }
    if out.is_empty() {
        return Err(CaError::NoCertificate);
    }
    Ok(out)
}

/// One DER element: its tag, its whole encoding, its content, and the bytes after it.
struct Element<'a> {
    tag: u8,
    whole: &'a [u8],
    content: &'a [u8],
    rest: &'a [u8],
}

fn element(input: &[u8]) -> Result<Element<'_>, CaError> {
    let tag = *input.first().ok_or(CaError::BadDer("truncated"))?;
    let first = *input.get(1).ok_or(CaError::BadDer("truncated"))?;
    let (len, header) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return Err(CaError::BadDer("unsupported length"));
        }
        let bytes = input.get(2..2 + n).ok_or(CaError::BadDer("truncated"))?;
        (bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize), 2 + n)
    };
    let whole = input.get(..header + len).ok_or(CaError::BadDer("truncated"))?;
    Ok(Element { tag, whole, content: &whole[header..], rest: &input[header + len..] })
}

fn subject_public_key_info(cert: &[u8]) -> Result<&[u8], CaError> {
    let c = element(cert)?;
    if c.tag != 0x30 {
        return Err(CaError::BadDer("certificate is not a SEQUENCE"));
    }
    let t = element(c.content)?;
    if t.tag != 0x30 {
        return Err(CaError::BadDer("tbsCertificate is not a SEQUENCE"));
    }
    // [0] version (optional), serialNumber, signature, issuer, validity, subject, SPKI.
    let mut tbs = t.content;
    let first = element(tbs)?;
    if first.tag == 0xa0 {
        tbs = first.rest;
    }
    for _ in 0..5 {
        tbs = element(tbs)?.rest;
    }
    let spki = element(tbs)?;
    if spki.tag != 0x30 {
        return Err(CaError::BadDer("subjectPublicKeyInfo is not a SEQUENCE"));
    }
    Ok(spki.whole)
}

//! Size limits of the clouds and the compression ladder that keeps payloads under them.

use std::io::Write;

use crate::cloudconfig::{Carry, Document, is_plain_text};
use crate::{Payload, RenderError};

/// Azure `osProfile.customData`: 65,535 bytes after base64 decoding.
pub const AZURE_CUSTOM_DATA_LIMIT: usize = 65_535;
/// EC2 user data: 16 KiB before base64 encoding.
pub const AWS_USER_DATA_LIMIT: usize = 16_384;

/// Where the VM runs: decides the size limit and whether whole-payload gzip is usable
/// (cloudbase-init's Azure metadata service does not gunzip custom data; its EC2 one does).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cloud {
    Azure,
    Aws,
}

impl Cloud {
    pub fn as_str(self) -> &'static str {
        match self {
            Cloud::Azure => "azure",
            Cloud::Aws => "aws",
        }
    }
    pub fn limit(self) -> usize {
        match self {
            Cloud::Azure => AZURE_CUSTOM_DATA_LIMIT,
            Cloud::Aws => AWS_USER_DATA_LIMIT,
        }
    }
}

impl std::fmt::Display for Cloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cloud::Azure => "Azure custom data",
            Cloud::Aws => "EC2 user data",
        })
    }
}

/// A part of the payload and the bytes it takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartSize {
    pub name: String,
    pub bytes: usize,
}

/// Deterministic gzip (no timestamp, no file name).
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::best());
    enc.write_all(bytes).expect("writing to memory cannot fail");
    enc.finish().expect("writing to memory cannot fail")
}

fn readable(f: &crate::cloudconfig::FileEntry) -> Carry {
    if is_plain_text(&f.bytes) { Carry::Text } else { Carry::Base64 }
}

/// Tries the readable form first, then the cloud's compression, and reports the largest parts
/// when nothing fits.
pub fn fit(doc: &Document, cloud: Cloud) -> Result<Payload, RenderError> {
    let limit = cloud.limit();
    let plain = doc.to_text(readable);
    let sizes = |carry: &dyn Fn(&crate::cloudconfig::FileEntry) -> Carry| {
        let mut parts: Vec<PartSize> =
            doc.part_sizes(carry).into_iter().map(|(name, bytes)| PartSize { name, bytes }).collect();
        parts.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.name.cmp(&b.name)));
        parts
    };
    if plain.len() <= limit {
        return Ok(Payload {
            document_bytes: plain.len(),
            bytes: plain.into_bytes(),
            gzipped: false,
            parts: sizes(&readable),
        });
    }
    match cloud {
        Cloud::Aws => {
            let packed = gzip(plain.as_bytes());
            if packed.len() <= limit {
                return Ok(Payload {
                    document_bytes: plain.len(),
                    bytes: packed,
                    gzipped: true,
                    parts: sizes(&readable),
                });
            }
            Err(RenderError::TooLarge { cloud, size: packed.len(), limit, largest: top(sizes(&readable)) })
        }
        Cloud::Azure => {
            let squeeze =
                |f: &crate::cloudconfig::FileEntry| if f.bytes.len() >= 256 { Carry::GzipBase64 } else { readable(f) };
            let small = doc.to_text(squeeze);
            if small.len() <= limit {
                return Ok(Payload {
                    document_bytes: small.len(),
                    bytes: small.into_bytes(),
                    gzipped: false,
                    parts: sizes(&squeeze),
                });
            }
            Err(RenderError::TooLarge { cloud, size: small.len(), limit, largest: top(sizes(&squeeze)) })
        }
    }
}

fn top(mut parts: Vec<PartSize>) -> Vec<PartSize> {
    parts.truncate(3);
    parts
}

//! Media a person sent, fetched as the agent it was sent to: downloaded through the
//! authenticated media API (bounded, see [`crate::matrix::media`]), decrypted when it came as an
//! `EncryptedFile` (matrix-sdk-crypto's `AttachmentDecryptor`, whose SHA-256 check refuses a
//! file that is not what the sender encrypted), and its type sniffed from its bytes: a client's
//! `mimetype` is a claim, not a fact. And files an agent sends: uploaded as the agent, sealed
//! first (in place, `AttachmentEncryptor`) when the room is encrypted.

use std::{collections::VecDeque, io::Read, time::Duration};

use matrix_sdk_crypto::{AttachmentDecryptor, AttachmentEncryptor, MediaEncryptionInfo};
use ruma::{
    RoomId, UserId,
    events::room::{EncryptedFile, MediaSource},
};

use super::PuppetError;

use crate::matrix::{
    Homeserver,
    media::{Downloaded, MediaError},
};

/// Why media could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The download failed (see [`MediaError`]).
    #[error(transparent)]
    Download(#[from] MediaError),
    /// The encryption info is unusable (unknown version, no hash, bad base64).
    #[error("cannot decrypt: {0}")]
    Key(String),
    /// The decrypted bytes do not hash to what the sender's event says: a wrong key, or a file
    /// swapped on the server.
    #[error("the file does not match its hash")]
    Hash,
    /// Its bytes are not of the kind it claims (an "image" that is not one).
    #[error("not of the type it claims")]
    Type,
}

impl FetchError {
    /// A short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            FetchError::Download(MediaError::NotFound) => "not_found",
            FetchError::Download(MediaError::Status(_)) => "status",
            FetchError::Download(MediaError::TooLarge { .. }) => "too_large",
            FetchError::Download(MediaError::Empty) => "empty",
            FetchError::Download(MediaError::Timeout) => "timeout",
            FetchError::Download(MediaError::BadUri(_)) => "bad_uri",
            FetchError::Download(_) => "unreachable",
            FetchError::Key(_) => "bad_key",
            FetchError::Hash => "hash_mismatch",
            FetchError::Type => "wrong_type",
        }
    }
}

/// A file's bytes, in the clear, with the type its bytes show.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The plaintext.
    pub bytes: Vec<u8>,
    /// The MIME type sniffed from the bytes (`None`: no known signature, e.g. plain text).
    pub sniffed: Option<&'static str>,
}

/// Downloads `source` as `user` (at most `cap` bytes, within `timeout`), decrypting an
/// `EncryptedFile`.
pub(super) async fn fetch(
    hs: &Homeserver,
    user: &UserId,
    source: &MediaSource,
    cap: u64,
    timeout: Duration,
) -> Result<Fetched, FetchError> {
    let bytes = match source {
        MediaSource::Plain(mxc) => hs.download(mxc, user, cap, timeout).await?.to_vec(),
        MediaSource::Encrypted(file) => {
            let got = hs.download(&file.url, user, cap, timeout).await?;
            let info = MediaEncryptionInfo::from((**file).clone());
            // AES-CTR and SHA-256 over up to the cap: off the async workers.
            tokio::task::spawn_blocking(move || decrypt(got, info))
                .await
                .map_err(|e| FetchError::Key(e.to_string()))??
        }
    };
    Ok(Fetched {
        sniffed: infer::get(&bytes).map(|t| t.mime_type()),
        bytes,
    })
}

/// An image as a `data:` URI (what a model that sees is given), with its sniffed type and size.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// `data:{type};base64,…`.
    pub uri: String,
    /// The type its bytes show.
    pub mimetype: &'static str,
    /// Its size in bytes.
    pub size: u64,
}

/// Downloads an image as `user` and encodes it straight into a `data:` URI while it is read
/// (decrypted on the way when it came encrypted): the chunks are freed as they are encoded, so
/// the whole file is never held next to its encoding. Not an image: [`FetchError::Type`].
/// ([`crate::puppet::PuppetIntent::image_uri`] is the way in; public for the media benchmark.)
pub async fn fetch_image_uri(
    hs: &Homeserver,
    user: &UserId,
    source: &MediaSource,
    cap: u64,
    timeout: Duration,
) -> Result<Encoded, FetchError> {
    let (got, info) = match source {
        MediaSource::Plain(mxc) => (hs.download(mxc, user, cap, timeout).await?, None),
        MediaSource::Encrypted(file) => (
            hs.download(&file.url, user, cap, timeout).await?,
            Some(MediaEncryptionInfo::from((**file).clone())),
        ),
    };
    // Decryption and encoding over up to the cap: off the async workers.
    tokio::task::spawn_blocking(move || {
        let size = got.len;
        let mut chunks = Chunks {
            chunks: got.chunks.into(),
        };
        match info {
            Some(info) => {
                let mut clear = AttachmentDecryptor::new(&mut chunks, info)
                    .map_err(|e| FetchError::Key(e.to_string()))?;
                encode_image(&mut clear, size)
            }
            None => encode_image(&mut chunks, size),
        }
    })
    .await
    .map_err(|e| FetchError::Key(e.to_string()))?
}

/// Reads `reader` to its end into a `data:` URI, block by block (a multiple of 3 bytes: no
/// padding before the end). The reader's end is always reached, so a decryptor's hash check
/// runs: a mismatch is an error and the encoding is dropped.
fn encode_image(reader: &mut impl Read, size: u64) -> Result<Encoded, FetchError> {
    use base64::{Engine, engine::general_purpose::STANDARD};
    const BLOCK: usize = 48 << 10;
    let mut block = vec![0u8; BLOCK];
    let mut filled = fill(reader, &mut block)?;
    let mimetype = infer::get(&block[..filled])
        .map(|t| t.mime_type())
        .filter(|m| m.starts_with("image/"))
        .ok_or(FetchError::Type)?;
    let encoded = usize::try_from(size).unwrap_or(0).div_ceil(3) * 4;
    let mut uri = String::with_capacity(mimetype.len() + 13 + encoded);
    uri.push_str("data:");
    uri.push_str(mimetype);
    uri.push_str(";base64,");
    while filled > 0 {
        STANDARD.encode_string(&block[..filled], &mut uri);
        filled = if filled < BLOCK {
            0
        } else {
            fill(reader, &mut block)?
        };
    }
    Ok(Encoded {
        uri,
        mimetype,
        size,
    })
}

/// Fills `buf` from `reader`; fewer bytes only at its end (which it then has reached).
fn fill(reader: &mut impl Read, buf: &mut [u8]) -> Result<usize, FetchError> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            // The decryptor's only error: the hash, checked at the end.
            Err(_) => return Err(FetchError::Hash),
        }
    }
    Ok(filled)
}

/// Decrypts downloaded chunks, dropping each as it is read (the ciphertext and plaintext are
/// never both whole in memory); a hash mismatch is an error, never a result.
fn decrypt(got: Downloaded, info: MediaEncryptionInfo) -> Result<Vec<u8>, FetchError> {
    let mut reader = Chunks {
        chunks: got.chunks.into(),
    };
    let mut decryptor =
        AttachmentDecryptor::new(&mut reader, info).map_err(|e| FetchError::Key(e.to_string()))?;
    let mut clear = Vec::with_capacity(got.len as usize);
    decryptor
        .read_to_end(&mut clear)
        .map_err(|_| FetchError::Hash)?;
    Ok(clear)
}

/// Uploads a file `user` sends into `room`: sealed in place first when the room is encrypted
/// (then the homeserver holds only ciphertext, and the key travels in the encrypted event).
pub(super) async fn upload(
    hs: &Homeserver,
    crypto: Option<&crate::crypto::Crypto>,
    user: &UserId,
    room: &RoomId,
    mut bytes: Vec<u8>,
    content_type: &str,
    filename: &str,
) -> Result<MediaSource, PuppetError> {
    let encrypted = match crypto {
        Some(crypto) => crypto.is_encrypted(room, user).await?,
        None => false,
    };
    if !encrypted {
        let url = hs.upload_as(user, bytes, content_type, filename).await?;
        return Ok(MediaSource::Plain(url));
    }
    let (bytes, info) = tokio::task::spawn_blocking(move || {
        let info = seal(&mut bytes);
        (bytes, info)
    })
    .await
    .map_err(|e| PuppetError::Content(e.to_string()))?;
    // The ciphertext says nothing of the file: no type, no name.
    let url = hs
        .upload_as(user, bytes, "application/octet-stream", "")
        .await?;
    Ok(MediaSource::Encrypted(Box::new(EncryptedFile::new(
        url,
        info.encryption_info,
        info.hashes,
    ))))
}

/// Encrypts `bytes` in place (AES-CTR with a fresh key, as `AttachmentEncryptor` does for any
/// reader): the plaintext is never copied. The encryptor reads through [`InPlace`], which
/// leaves the buffer as it is, and then encrypts what it "read".
pub(super) fn seal(bytes: &mut [u8]) -> MediaEncryptionInfo {
    let mut source = InPlace { left: bytes.len() };
    let mut encryptor = AttachmentEncryptor::new(&mut source);
    let mut done = 0;
    while done < bytes.len() {
        match encryptor.read(&mut bytes[done..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => done += n,
        }
    }
    // The end, as the encryptor expects to see it.
    let _ = encryptor.read(&mut []);
    encryptor.finish()
}

/// A reader whose bytes are already in the caller's buffer: `read` reports them there.
struct InPlace {
    left: usize,
}

impl Read for InPlace {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.left.min(buf.len());
        self.left -= n;
        Ok(n)
    }
}

/// Reads a list of chunks in order, freeing each once read.
struct Chunks {
    chunks: VecDeque<bytes::Bytes>,
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while let Some(front) = self.chunks.front_mut() {
            if front.is_empty() {
                self.chunks.pop_front();
                continue;
            }
            let n = front.len().min(buf.len());
            buf[..n].copy_from_slice(&front[..n]);
            bytes::Buf::advance(front, n);
            return Ok(n);
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use matrix_sdk_crypto::AttachmentEncryptor;

    use super::*;

    fn sealed(data: &[u8]) -> (Downloaded, MediaEncryptionInfo) {
        let mut cursor = Cursor::new(data.to_vec());
        let mut encryptor = AttachmentEncryptor::new(&mut cursor);
        let mut cipher = Vec::new();
        encryptor.read_to_end(&mut cipher).unwrap();
        let info = encryptor.finish();
        // In uneven chunks, as a network delivers them.
        let chunks: Vec<bytes::Bytes> = cipher
            .chunks(7)
            .map(bytes::Bytes::copy_from_slice)
            .collect();
        let got = Downloaded {
            chunks,
            len: cipher.len() as u64,
            content_type: None,
        };
        (got, info)
    }

    #[test]
    fn an_encrypted_file_decrypts_to_its_bytes() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let (got, info) = sealed(&data);
        assert_eq!(decrypt(got, info).unwrap(), data);
    }

    #[test]
    fn a_tampered_file_is_refused() {
        let (mut got, info) = sealed(b"the original bytes of a file");
        let mut first = got.chunks[0].to_vec();
        first[0] ^= 1;
        got.chunks[0] = first.into();
        assert!(matches!(decrypt(got, info), Err(FetchError::Hash)));
    }

    #[test]
    fn sealing_in_place_is_what_a_decryptor_opens() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 249) as u8).collect();
        let mut bytes = data.clone();
        let info = seal(&mut bytes);
        assert_ne!(bytes, data, "encrypted");
        let got = Downloaded {
            len: bytes.len() as u64,
            chunks: bytes
                .chunks(4096)
                .map(bytes::Bytes::copy_from_slice)
                .collect(),
            content_type: None,
        };
        assert_eq!(decrypt(got, info).unwrap(), data);
    }

    #[test]
    fn an_encrypted_image_encodes_to_its_bytes_and_a_tampered_one_to_nothing() {
        use base64::{Engine, engine::general_purpose::STANDARD};
        let mut image = b"\x89PNG\r\n\x1a\n".to_vec();
        // Past one block, and not a multiple of it.
        image.extend((0..200_000u32).map(|i| (i % 251) as u8));
        let (got, info) = sealed(&image);
        let mut chunks = Chunks {
            chunks: got.chunks.into(),
        };
        let mut clear = AttachmentDecryptor::new(&mut chunks, info).unwrap();
        let encoded = encode_image(&mut clear, image.len() as u64).unwrap();
        assert_eq!(encoded.mimetype, "image/png");
        let data = encoded.uri.strip_prefix("data:image/png;base64,").unwrap();
        assert_eq!(STANDARD.decode(data).unwrap(), image);
        let (mut got, info) = sealed(&image);
        let last = got.chunks.len() - 1;
        let mut end = got.chunks[last].to_vec();
        end[0] ^= 1;
        got.chunks[last] = end.into();
        let mut chunks = Chunks {
            chunks: got.chunks.into(),
        };
        let mut clear = AttachmentDecryptor::new(&mut chunks, info).unwrap();
        assert!(matches!(
            encode_image(&mut clear, image.len() as u64),
            Err(FetchError::Hash)
        ));
        // Not an image at all.
        let mut text = std::io::Cursor::new(b"just some text".to_vec());
        assert!(matches!(encode_image(&mut text, 14), Err(FetchError::Type)));
    }

    #[test]
    fn a_wrong_key_is_refused() {
        let (got, _) = sealed(b"the original bytes of a file");
        let (_, other) = sealed(b"another file entirely");
        assert!(matches!(decrypt(got, other), Err(FetchError::Hash)));
    }
}

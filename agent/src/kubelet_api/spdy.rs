//! The part of SPDY/3.1 that Kubernetes' streaming protocols use (a connection of
//! many streams, opened by the client with SYN_STREAM and header blocks compressed
//! with zlib and the SPDY/3 dictionary): frame reading and writing, header blocks, and
//! the session's two zlib streams. Flow control is not enforced — as with the Go
//! `spdystream` peers kubectl uses, WINDOW_UPDATE frames are read and ignored.

use std::collections::BTreeMap;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt};

pub const SYN_STREAM: u16 = 1;
pub const SYN_REPLY: u16 = 2;
pub const RST_STREAM: u16 = 3;
pub const PING: u16 = 6;
pub const GOAWAY: u16 = 7;
pub const FLAG_FIN: u8 = 1;
const VERSION: u16 = 3;
/// Frames larger than this are refused (the protocol allows 16 MiB).
const MAX_FRAME: usize = 16 * 1024 * 1024;

/// The SPDY/3 header compression dictionary (draft 3, section 2.6.10.1): 1423 bytes,
/// Adler-32 0xe3c6a7c2.
pub fn dictionary() -> Vec<u8> {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
        "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently",
        "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
        "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct ",
        "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,",
        "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8",
        "charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut d = Vec::with_capacity(1423);
    for w in WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(TAIL.as_bytes());
    d
}

/// One frame off the wire.
#[derive(Debug)]
pub enum Frame {
    Control {
        kind: u16,
        flags: u8,
        data: Vec<u8>,
    },
    Data {
        stream: u32,
        flags: u8,
        data: Vec<u8>,
    },
}

/// Reads the next frame; `None` at a clean end of the connection.
pub async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Option<Frame>> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let flags = head[4];
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!("SPDY frame of {len} bytes")));
    }
    let mut data = vec![0u8; len];
    r.read_exact(&mut data).await?;
    if head[0] & 0x80 != 0 {
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != VERSION {
            return Err(std::io::Error::other(format!("SPDY version {version}")));
        }
        Ok(Some(Frame::Control {
            kind: u16::from_be_bytes([head[2], head[3]]),
            flags,
            data,
        }))
    } else {
        Ok(Some(Frame::Data {
            stream: u32::from_be_bytes([head[0] & 0x7f, head[1], head[2], head[3]]),
            flags,
            data,
        }))
    }
}

pub fn control_frame(kind: u16, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + data.len());
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    let len = (data.len() as u32).to_be_bytes();
    out.push(flags);
    out.extend_from_slice(&len[1..]);
    out.extend_from_slice(data);
    out
}

pub fn data_frame(stream: u32, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + data.len());
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    let len = (data.len() as u32).to_be_bytes();
    out.push(flags);
    out.extend_from_slice(&len[1..]);
    out.extend_from_slice(data);
    out
}

/// The two compression contexts of a session (one per direction).
pub struct Headers {
    inflate: Decompress,
    deflate: Compress,
    dict: Vec<u8>,
}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Headers")
    }
}

impl Default for Headers {
    fn default() -> Self {
        Self::new()
    }
}

impl Headers {
    pub fn new() -> Self {
        let dict = dictionary();
        let mut deflate = Compress::new(Compression::default(), true);
        let _ = deflate.set_dictionary(&dict);
        Self {
            inflate: Decompress::new(true),
            deflate,
            dict,
        }
    }

    /// Decodes a compressed header block.
    pub fn decode(&mut self, block: &[u8]) -> Result<BTreeMap<String, String>, String> {
        let mut out = Vec::new();
        let mut input = block;
        loop {
            let mut buf = [0u8; 4096];
            let before_in = self.inflate.total_in();
            let before_out = self.inflate.total_out();
            let res = self
                .inflate
                .decompress(input, &mut buf, FlushDecompress::Sync);
            let used = (self.inflate.total_in() - before_in) as usize;
            let made = (self.inflate.total_out() - before_out) as usize;
            out.extend_from_slice(&buf[..made]);
            input = &input[used..];
            match res {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&self.dict)
                        .map_err(|e| format!("SPDY dictionary: {e}"))?;
                    continue;
                }
                Err(e) => return Err(format!("SPDY header block: {e}")),
            }
            if input.is_empty() && made < buf.len() {
                break;
            }
        }
        parse_block(&out)
    }

    /// Encodes `headers` as a compressed header block.
    pub fn encode(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (k, v) in headers {
            raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
            raw.extend_from_slice(k.as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = raw.as_slice();
        loop {
            let mut buf = [0u8; 4096];
            let before_in = self.deflate.total_in();
            let before_out = self.deflate.total_out();
            let status = self.deflate.compress(input, &mut buf, FlushCompress::Sync);
            let used = (self.deflate.total_in() - before_in) as usize;
            let made = (self.deflate.total_out() - before_out) as usize;
            out.extend_from_slice(&buf[..made]);
            input = &input[used..];
            match status {
                Ok(Status::Ok | Status::BufError) if input.is_empty() && made < buf.len() => break,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        out
    }
}

fn parse_block(b: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let mut at = 0usize;
    let u32_at = |at: &mut usize| -> Result<usize, String> {
        let bytes = b.get(*at..*at + 4).ok_or("truncated SPDY header block")?;
        *at += 4;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize)
    };
    let n = u32_at(&mut at)?;
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let kl = u32_at(&mut at)?;
        let k = b.get(at..at + kl).ok_or("truncated SPDY header name")?;
        at += kl;
        let vl = u32_at(&mut at)?;
        let v = b.get(at..at + vl).ok_or("truncated SPDY header value")?;
        at += vl;
        out.insert(
            String::from_utf8_lossy(k).to_lowercase(),
            String::from_utf8_lossy(v).into_owned(),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &x in data {
            a = (a + x as u32) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    }

    #[test]
    fn the_dictionary_is_spdy3s() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(adler32(&d), 0xe3c6_a7c2);
    }

    #[test]
    fn header_blocks_round_trip_across_frames() {
        let mut client = Headers::new();
        let mut server = Headers::new();
        for i in 0..3 {
            let port = format!("80{i}");
            let block = client.encode(&[("streamType", "data"), ("port", &port)]);
            let h = server.decode(&block).expect("decode");
            assert_eq!(h.get("streamtype").map(String::as_str), Some("data"));
            assert_eq!(h.get("port"), Some(&port));
        }
    }
}

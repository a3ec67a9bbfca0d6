//! Names outside the cluster zone: asked of upstream servers — a stub domain's own
//! servers when the name is under one, else the node's upstreams — over UDP (TCP
//! when the answer comes back truncated), each server in turn until one answers,
//! 2 s each, 5 s in all. Answers are cached for their TTL (capped at 1 h), negative
//! ones for the SOA's negative TTL (RFC 2308, capped at 30 min), SERVFAIL and answers
//! over 4 KiB not at all. At most [`IN_FLIGHT`] questions are upstream at once; past
//! that a question gets SERVFAIL at once, so a flood of random names costs bounded
//! memory and file descriptors.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{DNSClass, RData, RecordType},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
};

use super::{config::Upstreams, metrics::DnsMetrics};

const TIMEOUT: Duration = Duration::from_secs(2);
const MAX_POSITIVE_TTL: u32 = 3600;
const MAX_NEGATIVE_TTL: u32 = 1800;
/// Negative answers without a SOA are kept this long.
const DEFAULT_NEGATIVE_TTL: u32 = 30;
const CACHE_ENTRIES: usize = 10_000;
/// Answers larger than this are passed on but not cached.
const CACHE_MAX_BYTES: usize = 4096;
/// Questions upstream at once.
pub const IN_FLIGHT: usize = 512;
/// All upstream tries of one question together.
const TOTAL: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct CacheKey {
    name: String,
    qtype: RecordType,
    qclass: DNSClass,
}

#[derive(Debug)]
struct Cached {
    msg: Message,
    stored: Instant,
    ttl: u32,
}

/// The forwarder: the upstream configuration in force and the answer cache.
#[derive(Debug)]
pub struct Forwarder {
    upstreams: RwLock<Upstreams>,
    cache: Mutex<HashMap<CacheKey, Cached>>,
    in_flight: tokio::sync::Semaphore,
    metrics: Arc<DnsMetrics>,
}

impl Forwarder {
    pub fn new(upstreams: Upstreams, metrics: Arc<DnsMetrics>) -> Self {
        Self {
            upstreams: RwLock::new(upstreams),
            cache: Mutex::new(HashMap::new()),
            in_flight: tokio::sync::Semaphore::new(IN_FLIGHT),
            metrics,
        }
    }

    /// Puts a new upstream configuration in force (the cache is emptied: its
    /// answers came from the old servers).
    pub fn set_upstreams(&self, upstreams: Upstreams) {
        if let Ok(mut u) = self.upstreams.write() {
            *u = upstreams;
        }
        if let Ok(mut c) = self.cache.lock() {
            c.clear();
        }
    }

    pub fn upstreams(&self) -> Upstreams {
        self.upstreams.read().map(|u| u.clone()).unwrap_or_default()
    }

    /// The upstream answer to `query`, from the cache when it holds one; `None` when
    /// no server answered.
    pub async fn resolve(&self, query: &Query) -> Option<Message> {
        let key = CacheKey {
            name: super::answer::key(query.name()),
            qtype: query.query_type(),
            qclass: query.query_class(),
        };
        if let Some(hit) = self.cached(&key) {
            self.metrics.cache_hit();
            return Some(hit);
        }
        self.metrics.cache_miss();
        let Ok(_permit) = self.in_flight.try_acquire() else {
            tracing::debug!("{IN_FLIGHT} questions upstream already; SERVFAIL");
            return None;
        };
        let servers = self
            .upstreams
            .read()
            .map(|u| u.servers_for(&key.name).to_vec())
            .unwrap_or_default();
        let ask_all = async {
            for server in servers {
                let started = Instant::now();
                match exchange(server, query).await {
                    Ok((msg, size)) => {
                        self.metrics.upstream(started.elapsed(), true);
                        if size <= CACHE_MAX_BYTES {
                            self.store(key, &msg);
                        }
                        return Some(msg);
                    }
                    Err(error) => {
                        self.metrics.upstream(started.elapsed(), false);
                        tracing::debug!(%server, %error, "upstream DNS server failed");
                    }
                }
            }
            None
        };
        tokio::time::timeout(TOTAL, ask_all).await.ok().flatten()
    }

    fn cached(&self, key: &CacheKey) -> Option<Message> {
        let mut cache = self.cache.lock().ok()?;
        let entry = cache.get(key)?;
        let age = u32::try_from(entry.stored.elapsed().as_secs()).unwrap_or(u32::MAX);
        if age >= entry.ttl {
            cache.remove(key);
            return None;
        }
        let mut msg = entry.msg.clone();
        for record in msg
            .answers
            .iter_mut()
            .chain(msg.authorities.iter_mut())
            .chain(msg.additionals.iter_mut())
        {
            record.decrement_ttl(age);
        }
        Some(msg)
    }

    fn store(&self, key: CacheKey, msg: &Message) {
        let Some(ttl) = cache_ttl(msg) else { return };
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.len() >= CACHE_ENTRIES {
            // Full: drop what has expired; if nothing has, start over (a bounded
            // cache beats an exact LRU here: misses only cost an upstream trip).
            cache.retain(|_, c| c.stored.elapsed().as_secs() < u64::from(c.ttl));
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(
            key,
            Cached {
                msg: msg.clone(),
                stored: Instant::now(),
                ttl,
            },
        );
    }
}

/// How long `msg` may be cached: the smallest TTL of its answers, or the negative
/// TTL of its SOA; `None` for what is not cached (SERVFAIL, REFUSED, …).
fn cache_ttl(msg: &Message) -> Option<u32> {
    match msg.metadata.response_code {
        ResponseCode::NoError if !msg.answers.is_empty() => msg
            .answers
            .iter()
            .map(|r| r.ttl)
            .min()
            .map(|t| t.min(MAX_POSITIVE_TTL)),
        ResponseCode::NoError | ResponseCode::NXDomain => {
            let soa = msg.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            });
            Some(soa.unwrap_or(DEFAULT_NEGATIVE_TTL).min(MAX_NEGATIVE_TTL))
        }
        _ => None,
    }
    .filter(|t| *t > 0)
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {TIMEOUT:?}")]
    Timeout,
    #[error("undecodable answer: {0}")]
    Decode(String),
    #[error("the answer does not match the question")]
    Mismatch,
}

fn upstream_query(query: &Query) -> Result<(u16, Vec<u8>), ExchangeError> {
    let mut msg = Message::query();
    msg.metadata.recursion_desired = true;
    msg.add_query(query.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(super::answer::MAX_UDP_PAYLOAD);
    msg.set_edns(edns);
    let bytes = msg
        .to_vec()
        .map_err(|e| ExchangeError::Decode(e.to_string()))?;
    Ok((msg.metadata.id, bytes))
}

fn check(bytes: &[u8], id: u16, query: &Query) -> Result<Message, ExchangeError> {
    let msg = Message::from_vec(bytes).map_err(|e| ExchangeError::Decode(e.to_string()))?;
    let same_question = msg.queries.first().is_some_and(|q| {
        q.query_type() == query.query_type()
            && super::answer::key(q.name()) == super::answer::key(query.name())
    });
    if msg.metadata.id != id
        || msg.metadata.message_type != MessageType::Response
        || msg.metadata.op_code != OpCode::Query
        || !same_question
    {
        return Err(ExchangeError::Mismatch);
    }
    Ok(msg)
}

/// Asks `server` about `query`: UDP first, TCP when the answer is truncated. Returns
/// the answer and its size on the wire.
pub async fn exchange(
    server: SocketAddr,
    query: &Query,
) -> Result<(Message, usize), ExchangeError> {
    let (id, bytes) = upstream_query(query)?;
    let bind: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(server).await?;
    socket.send(&bytes).await?;
    // We offer a 1 232-byte EDNS payload: a larger datagram is not an answer to us.
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let (msg, size) = loop {
        let n = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
            .await
            .map_err(|_| ExchangeError::Timeout)??;
        match check(&buf[..n], id, query) {
            Ok(msg) => break (msg, n),
            // A stray datagram (spoofed or late): keep waiting for ours.
            Err(ExchangeError::Mismatch | ExchangeError::Decode(_)) => {}
            Err(e) => return Err(e),
        }
    };
    if !msg.metadata.truncation {
        return Ok((msg, size));
    }
    tokio::time::timeout(TIMEOUT, exchange_tcp(server, query))
        .await
        .map_err(|_| ExchangeError::Timeout)?
}

async fn exchange_tcp(
    server: SocketAddr,
    query: &Query,
) -> Result<(Message, usize), ExchangeError> {
    let (id, bytes) = upstream_query(query)?;
    let mut stream = TcpStream::connect(server).await?;
    let len = u16::try_from(bytes.len()).map_err(|_| ExchangeError::Mismatch)?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(&bytes).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await?;
    check(&buf, id, query).map(|m| (m, buf.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::{
        Name, Record,
        rdata::{A, SOA},
    };

    #[test]
    fn ttls_for_the_cache() {
        let mut ok = Message::response(1, OpCode::Query);
        let name = Name::from_ascii("example.test.").expect("name");
        ok.add_answer(Record::from_rdata(
            name.clone(),
            300,
            RData::A(A([192, 0, 2, 1].into())),
        ));
        ok.add_answer(Record::from_rdata(
            name.clone(),
            60,
            RData::A(A([192, 0, 2, 2].into())),
        ));
        assert_eq!(cache_ttl(&ok), Some(60));
        let mut nx = Message::response(1, OpCode::Query);
        nx.metadata.response_code = ResponseCode::NXDomain;
        nx.add_authority(Record::from_rdata(
            name.clone(),
            900,
            RData::SOA(SOA::new(name.clone(), name.clone(), 1, 1, 1, 1, 120)),
        ));
        assert_eq!(
            cache_ttl(&nx),
            Some(120),
            "negative TTL = min(SOA TTL, minimum)"
        );
        nx.authorities.clear();
        assert_eq!(cache_ttl(&nx), Some(DEFAULT_NEGATIVE_TTL));
        let mut fail = Message::response(1, OpCode::Query);
        fail.metadata.response_code = ResponseCode::ServFail;
        assert_eq!(cache_ttl(&fail), None, "SERVFAIL is not cached");
    }
}

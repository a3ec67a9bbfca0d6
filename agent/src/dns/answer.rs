//! One query in, one answer out: what a DNS server does with a message before any
//! I/O. [`decide`] checks the request (FORMERR for undecodable or multi-question
//! messages, NOTIMP for other opcodes, BADVERS for EDNS versions above 0, REFUSED for
//! other classes), answers names of the cluster zone from [`Zone`] (authoritative,
//! SOA in negative answers, NXDOMAIN vs NODATA), and says when a question must go to
//! an upstream server instead. [`finish`] encodes a response for UDP (truncated
//! with TC when over the client's EDNS size) or TCP.

use std::net::Ipv4Addr;

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{
        DNSClass, Name, RData, Record, RecordType,
        rdata::{A, CNAME, NS, PTR, SOA, SRV, TXT},
    },
};

use super::zone::{Lookup, Node, Zone};

/// TTL of the records the agent answers for (CoreDNS' kubernetes plugin default).
pub const TTL: u32 = 5;
/// The UDP payload size the agent advertises and answers up to (the DNS flag day
/// 2020 default: no IP fragmentation).
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// SRV targets whose addresses go in the additional section.
const MAX_SRV_ADDITIONALS: usize = 16;

/// What to do with a request.
#[derive(Debug)]
pub enum Decision {
    /// Send this response.
    Reply(Message),
    /// Resolve `query` upstream, then answer with [`from_upstream`]. `prefix` holds
    /// answers that go first (a CNAME of the cluster zone whose target is outside it).
    Forward {
        request: Box<Message>,
        query: Query,
        prefix: Vec<Record>,
    },
    /// Not worth an answer (a response, or bytes that are not DNS at all).
    Drop,
}

/// The name as the zone keys it: lower-case, no trailing dot.
pub fn key(name: &Name) -> String {
    let mut s = name.to_ascii();
    if s.ends_with('.') {
        s.pop();
    }
    s.make_ascii_lowercase();
    s
}

fn fqdn(name: &str) -> Option<Name> {
    let mut n = Name::from_ascii(name).ok()?;
    n.set_fqdn(true);
    Some(n)
}

/// A response skeleton for `request`: same id, question, RD, and EDNS when asked.
pub fn response(request: &Message, code: ResponseCode) -> Message {
    let mut msg = Message::response(request.metadata.id, request.metadata.op_code);
    msg.metadata.recursion_desired = request.metadata.recursion_desired;
    msg.metadata.recursion_available = true;
    msg.metadata.checking_disabled = request.metadata.checking_disabled;
    msg.metadata.response_code = code;
    msg.add_queries(request.queries.iter().cloned());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD);
        msg.set_edns(edns);
    }
    msg
}

/// A FORMERR for bytes hickory could not decode, when they carry a query header.
pub fn format_error(bytes: &[u8]) -> Option<Vec<u8>> {
    let header = bytes.get(..12)?;
    if header[2] & 0x80 != 0 {
        return None; // a response: never answer those
    }
    let id = u16::from_be_bytes([header[0], header[1]]);
    let opcode = OpCode::from_u8((header[2] >> 3) & 0x0f);
    let mut msg = Message::error_msg(id, opcode, ResponseCode::FormErr);
    msg.metadata.recursion_desired = header[2] & 0x01 != 0;
    msg.to_vec().ok()
}

fn soa(zone: &Zone) -> Option<Record> {
    let apex = fqdn(zone.domain())?;
    let mname = fqdn(&format!("ns.dns.{}", zone.domain()))?;
    let rname = fqdn(&format!("hostmaster.{}", zone.domain()))?;
    Some(Record::from_rdata(
        apex,
        TTL,
        RData::SOA(SOA::new(
            mname,
            rname,
            zone.serial(),
            7200,
            1800,
            86400,
            TTL,
        )),
    ))
}

/// The in-addr.arpa name's address, if it names one whole IPv4 address.
fn reverse_address(name: &str) -> Option<Ipv4Addr> {
    let rest = name.strip_suffix(".in-addr.arpa")?;
    let mut octets = [0u8; 4];
    let mut parts = rest.split('.');
    for slot in octets.iter_mut().rev() {
        *slot = parts.next()?.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(octets))
}

fn records_of(owner: &Name, node: &Node, qtype: RecordType) -> Vec<Record> {
    let mut out = Vec::new();
    let any = qtype == RecordType::ANY;
    if any || qtype == RecordType::A {
        out.extend(
            node.a
                .iter()
                .map(|ip| Record::from_rdata(owner.clone(), TTL, RData::A(A(*ip)))),
        );
    }
    if any || qtype == RecordType::SRV {
        out.extend(node.srv.iter().filter_map(|s| {
            Some(Record::from_rdata(
                owner.clone(),
                TTL,
                RData::SRV(SRV::new(s.priority, s.weight, s.port, fqdn(&s.target)?)),
            ))
        }));
    }
    if any || qtype == RecordType::TXT {
        out.extend(node.txt.iter().map(|t| {
            Record::from_rdata(owner.clone(), TTL, RData::TXT(TXT::new(vec![t.clone()])))
        }));
    }
    out
}

/// What to do with `request` given the cluster zone; `recursion` says whether this
/// client may have names outside the cluster resolved (the node's and pods'
/// addresses may, others get REFUSED: never an open resolver).
pub fn decide(zone: &Zone, request: Message, recursion: bool) -> Decision {
    if request.metadata.message_type != MessageType::Query {
        return Decision::Drop;
    }
    if request.metadata.op_code != OpCode::Query {
        return Decision::Reply(response(&request, ResponseCode::NotImp));
    }
    if request.queries.len() != 1 {
        return Decision::Reply(response(&request, ResponseCode::FormErr));
    }
    if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
        return Decision::Reply(response(&request, ResponseCode::BADVERS));
    }
    let query = request.queries[0].clone();
    if query.query_class() != DNSClass::IN {
        return Decision::Reply(response(&request, ResponseCode::Refused));
    }
    let name = key(query.name());
    let qtype = query.query_type();
    // No zone transfers; any other type a name does not hold is NODATA (RFC 3597).
    if matches!(qtype, RecordType::AXFR | RecordType::IXFR) && zone.contains(&name) {
        return Decision::Reply(response(&request, ResponseCode::Refused));
    }
    if let Some(ip) = reverse_address(&name) {
        let targets = zone.reverse(ip);
        if !targets.is_empty() {
            let mut msg = response(&request, ResponseCode::NoError);
            msg.metadata.authoritative = true;
            if matches!(qtype, RecordType::PTR | RecordType::ANY) {
                for t in targets {
                    if let Some(t) = fqdn(t) {
                        msg.add_answer(Record::from_rdata(
                            query.name().clone(),
                            TTL,
                            RData::PTR(PTR(t)),
                        ));
                    }
                }
            }
            return Decision::Reply(msg);
        }
    }
    if !zone.contains(&name) {
        if !recursion {
            return Decision::Reply(response(&request, ResponseCode::Refused));
        }
        return Decision::Forward {
            request: Box::new(request),
            query,
            prefix: Vec::new(),
        };
    }
    let mut msg = response(&request, ResponseCode::NoError);
    msg.metadata.authoritative = true;
    match zone.lookup(&name) {
        Lookup::NxDomain => {
            msg.metadata.response_code = ResponseCode::NXDomain;
        }
        Lookup::Empty => {}
        Lookup::Apex => match qtype {
            RecordType::SOA => {
                msg.add_answers(soa(zone));
                return Decision::Reply(msg);
            }
            RecordType::NS => {
                if let Some(ns) = fqdn(&format!("ns.dns.{}", zone.domain())) {
                    msg.add_answer(Record::from_rdata(
                        query.name().clone(),
                        TTL,
                        RData::NS(NS(ns)),
                    ));
                }
                return Decision::Reply(msg);
            }
            _ => {}
        },
        Lookup::Node(node) => {
            if let Some(target) = &node.cname {
                let Some(target_name) = fqdn(target) else {
                    return Decision::Reply(response(&request, ResponseCode::ServFail));
                };
                let cname = Record::from_rdata(
                    query.name().clone(),
                    TTL,
                    RData::CNAME(CNAME(target_name.clone())),
                );
                if matches!(qtype, RecordType::CNAME | RecordType::ANY) {
                    msg.add_answer(cname);
                    return Decision::Reply(msg);
                }
                // Chase the target, as CoreDNS does (spec 2.5's example answer).
                if zone.contains(target) {
                    msg.add_answer(cname);
                    match zone.lookup(target) {
                        Lookup::Node(t) => {
                            let answers = records_of(&target_name, &t, qtype);
                            if answers.is_empty() {
                                msg.add_authorities(soa(zone));
                            }
                            msg.add_answers(answers);
                        }
                        // The chain ends at a name that does not exist (RFC 6604).
                        Lookup::NxDomain => {
                            msg.metadata.response_code = ResponseCode::NXDomain;
                            msg.add_authorities(soa(zone));
                        }
                        Lookup::Empty | Lookup::Apex => {
                            msg.add_authorities(soa(zone));
                        }
                    }
                    return Decision::Reply(msg);
                }
                if !recursion {
                    msg.add_answer(cname);
                    return Decision::Reply(msg);
                }
                let mut chased = query.clone();
                chased.set_name(target_name);
                return Decision::Forward {
                    request: Box::new(request),
                    query: chased,
                    prefix: vec![cname],
                };
            }
            let answers = records_of(query.name(), &node, qtype);
            if !answers.is_empty() {
                if qtype == RecordType::SRV {
                    // The targets' addresses, for the first few: a large headless
                    // Service's answer is truncated anyway, and each costs a lookup.
                    for s in node.srv.iter().take(MAX_SRV_ADDITIONALS) {
                        if let (Some(target), Lookup::Node(t)) =
                            (fqdn(&s.target), zone.lookup(&s.target))
                        {
                            msg.add_additionals(records_of(&target, &t, RecordType::A));
                        }
                    }
                }
                msg.add_answers(answers);
                return Decision::Reply(msg);
            }
        }
    }
    // NXDOMAIN or NODATA: the zone's SOA tells how long to cache it (RFC 2308).
    msg.add_authorities(soa(zone));
    Decision::Reply(msg)
}

/// The client's answer from an upstream response to `query` (`None`: every upstream
/// failed → SERVFAIL).
pub fn from_upstream(request: &Message, prefix: Vec<Record>, upstream: Option<Message>) -> Message {
    let Some(upstream) = upstream else {
        return response(request, ResponseCode::ServFail);
    };
    let mut msg = response(request, upstream.metadata.response_code);
    msg.metadata.authentic_data = false;
    msg.insert_answers(prefix.into_iter().chain(upstream.answers).collect());
    msg.insert_authorities(upstream.authorities);
    msg.insert_additionals(upstream.additionals);
    msg
}

/// Encodes `msg` for the client: over UDP (`udp: true`) a response larger than the
/// client's EDNS payload (512 without EDNS) is cut to its header and question with
/// TC set, so the client retries over TCP.
pub fn finish(request_edns: Option<&Edns>, msg: &Message, udp: bool) -> Option<Vec<u8>> {
    let bytes = msg.to_vec().ok()?;
    if !udp {
        return Some(bytes);
    }
    let limit = request_edns.map_or(512, |e| e.max_payload().clamp(512, MAX_UDP_PAYLOAD));
    if bytes.len() <= usize::from(limit) {
        return Some(bytes);
    }
    msg.truncate().to_vec().ok()
}

#[cfg(test)]
mod tests;

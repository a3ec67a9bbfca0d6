use super::*;
use crate::dns::zone::tests::{service, slice};
use serde_json::json;

fn zone() -> Zone {
    let mut zone = Zone::new("cluster.local");
    let web = service(
        "default",
        "web",
        json!({"clusterIP": "10.96.0.50", "ports": [{"name": "http", "port": 80}]}),
    );
    zone.set_service("default", "web", Some(&web), &[]);
    let ext = service(
        "default",
        "ext",
        json!({"type": "ExternalName", "externalName": "www.example.com"}),
    );
    zone.set_service("default", "ext", Some(&ext), &[]);
    let inner = service(
        "default",
        "inner",
        json!({"type": "ExternalName", "externalName": "web.default.svc.cluster.local"}),
    );
    zone.set_service("default", "inner", Some(&inner), &[]);
    let dangling = service(
        "default",
        "dangling",
        json!({"type": "ExternalName", "externalName": "gone.default.svc.cluster.local"}),
    );
    zone.set_service("default", "dangling", Some(&dangling), &[]);
    let dns = service(
        "kube-system",
        "kube-dns",
        json!({"clusterIP": "10.96.0.10", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}),
    );
    zone.set_service("kube-system", "kube-dns", Some(&dns), &[]);
    let endpoints: Vec<(String, Option<&str>, bool)> = (0..100)
        .map(|i| (format!("10.77.1.{i}"), None, true))
        .collect();
    let refs: Vec<(&str, Option<&str>, bool)> = endpoints
        .iter()
        .map(|(a, h, r)| (a.as_str(), *h, *r))
        .collect();
    let big = slice("default", "big", &refs, &[("p", 1)]);
    let big_svc = service(
        "default",
        "big",
        json!({"clusterIP": "None", "ports": [{"name": "p", "port": 1}]}),
    );
    zone.set_service("default", "big", Some(&big_svc), &[&big]);
    zone
}

fn query(name: &str, qtype: RecordType) -> Message {
    let mut msg = Message::query();
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    msg
}

fn reply(d: Decision) -> Message {
    match d {
        Decision::Reply(m) => m,
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn ask(zone: &Zone, name: &str, qtype: RecordType) -> Message {
    // Through the wire format both ways, as a client sees it.
    let bytes = query(name, qtype).to_vec().expect("encode");
    let request = Message::from_vec(&bytes).expect("decode");
    let edns = request.edns.clone();
    let msg = reply(decide(zone, request, true));
    let out = finish(edns.as_ref(), &msg, true).expect("encode");
    Message::from_vec(&out).expect("decode reply")
}

#[test]
fn a_record_of_a_service_case_insensitive() {
    let zone = zone();
    let m = ask(&zone, "WEB.default.svc.Cluster.Local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].data, RData::A(A([10, 96, 0, 50].into())));
    assert_eq!(m.answers[0].ttl, TTL);
    assert_eq!(
        m.answers[0].name.to_ascii(),
        "WEB.default.svc.Cluster.Local.",
        "the owner is the name as asked"
    );
}

#[test]
fn nodata_and_nxdomain_carry_the_soa() {
    let zone = zone();
    let nodata = ask(&zone, "web.default.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    assert!(
        matches!(nodata.authorities[0].data, RData::SOA(_)),
        "{nodata:?}"
    );
    let ent = ask(&zone, "default.svc.cluster.local.", RecordType::A);
    assert_eq!(ent.metadata.response_code, ResponseCode::NoError);
    assert!(ent.answers.is_empty());
    let nx = ask(&zone, "nope.default.svc.cluster.local.", RecordType::A);
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    match &nx.authorities[0].data {
        RData::SOA(soa) => {
            assert_eq!(soa.minimum, TTL);
            assert_eq!(soa.mname.to_ascii(), "ns.dns.cluster.local.");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn srv_with_additional_a() {
    let zone = zone();
    let m = ask(
        &zone,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(m.answers.len(), 1);
    match &m.answers[0].data {
        RData::SRV(srv) => {
            assert_eq!(srv.port, 80);
            assert_eq!(srv.target.to_ascii(), "web.default.svc.cluster.local.");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        m.additionals
            .iter()
            .any(|r| r.data == RData::A(A([10, 96, 0, 50].into()))),
        "{m:?}"
    );
}

#[test]
fn ptr_of_a_cluster_ip_and_txt_version() {
    let zone = zone();
    let m = ask(&zone, "50.0.96.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(m.answers.len(), 1);
    match &m.answers[0].data {
        RData::PTR(p) => assert_eq!(p.0.to_ascii(), "web.default.svc.cluster.local."),
        other => panic!("{other:?}"),
    }
    let v = ask(&zone, "dns-version.cluster.local.", RecordType::TXT);
    assert_eq!(v.answers.len(), 1);
    let soa = ask(&zone, "cluster.local.", RecordType::SOA);
    assert!(matches!(soa.answers[0].data, RData::SOA(_)));
    let ns = ask(&zone, "cluster.local.", RecordType::NS);
    assert!(matches!(ns.answers[0].data, RData::NS(_)));
}

#[test]
fn external_name_cname_is_chased() {
    let zone = zone();
    // Inside the zone: answered at once, CNAME then the target's A.
    let m = ask(&zone, "inner.default.svc.cluster.local.", RecordType::A);
    assert_eq!(m.answers.len(), 2, "{m:?}");
    assert!(matches!(m.answers[0].data, RData::CNAME(_)));
    assert_eq!(m.answers[1].data, RData::A(A([10, 96, 0, 50].into())));
    // Outside: the CNAME goes first, the target is asked upstream.
    match decide(
        &zone,
        query("ext.default.svc.cluster.local.", RecordType::A),
        true,
    ) {
        Decision::Forward { query, prefix, .. } => {
            assert_eq!(query.name().to_ascii(), "www.example.com.");
            assert_eq!(prefix.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    // A CNAME question gets the CNAME alone.
    let c = ask(&zone, "ext.default.svc.cluster.local.", RecordType::CNAME);
    assert_eq!(c.answers.len(), 1);
}

#[test]
fn outside_names_forwarded_only_for_allowed_clients() {
    let zone = zone();
    assert!(matches!(
        decide(&zone, query("example.com.", RecordType::A), true),
        Decision::Forward { .. }
    ));
    let refused = reply(decide(&zone, query("example.com.", RecordType::A), false));
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
    // Cluster names are answered to anyone who reaches the server.
    let m = reply(decide(
        &zone,
        query("web.default.svc.cluster.local.", RecordType::A),
        false,
    ));
    assert_eq!(m.answers.len(), 1);
    // Reverse names of addresses berth does not know go upstream too.
    assert!(matches!(
        decide(
            &zone,
            query("1.2.0.192.in-addr.arpa.", RecordType::PTR),
            true
        ),
        Decision::Forward { .. }
    ));
}

#[test]
fn bad_requests() {
    let zone = zone();
    assert_eq!(format_error(b"short"), None, "no header: nothing to answer");
    let mut garbage = vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    garbage.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]); // a name pointing at itself
    assert!(
        Message::from_vec(&garbage).is_err(),
        "a compression loop must not decode"
    );
    let formerr = Message::from_vec(&format_error(&garbage).expect("formerr")).expect("decode");
    assert_eq!(formerr.metadata.id, 0x1234);
    assert_eq!(formerr.metadata.response_code, ResponseCode::FormErr);
    let mut response = garbage.clone();
    response[2] |= 0x80;
    assert_eq!(
        format_error(&response),
        None,
        "responses are never answered"
    );

    let mut two = query("a.cluster.local.", RecordType::A);
    two.add_query(Query::query(
        Name::from_ascii("b.cluster.local.").expect("n"),
        RecordType::A,
    ));
    assert_eq!(
        reply(decide(&zone, two, true)).metadata.response_code,
        ResponseCode::FormErr
    );

    let mut notify = query("cluster.local.", RecordType::SOA);
    notify.metadata.op_code = OpCode::Notify;
    assert_eq!(
        reply(decide(&zone, notify, true)).metadata.response_code,
        ResponseCode::NotImp
    );

    let mut chaos = query("version.bind.", RecordType::TXT);
    chaos.queries[0].set_query_class(DNSClass::CH);
    assert_eq!(
        reply(decide(&zone, chaos, true)).metadata.response_code,
        ResponseCode::Refused
    );

    let axfr = reply(decide(
        &zone,
        query("cluster.local.", RecordType::AXFR),
        true,
    ));
    assert_eq!(axfr.metadata.response_code, ResponseCode::Refused);

    let mut v1 = query("web.default.svc.cluster.local.", RecordType::A);
    let mut edns = Edns::new();
    edns.set_version(1);
    v1.set_edns(edns);
    let bytes = v1.to_vec().expect("encode");
    let request = Message::from_vec(&bytes).expect("decode");
    let e = request.edns.clone();
    let out = finish(e.as_ref(), &reply(decide(&zone, request, true)), true).expect("encode");
    let m = Message::from_vec(&out).expect("decode");
    // BADVERS and BADSIG share code 16 (RFC 6891, 8945): the wire holds the number.
    assert_eq!(u16::from(m.metadata.response_code), 16);

    let mut resp = query("web.default.svc.cluster.local.", RecordType::A);
    resp.metadata.message_type = MessageType::Response;
    assert!(matches!(decide(&zone, resp, true), Decision::Drop));
}

#[test]
fn large_answers_truncate_over_udp_not_tcp() {
    let zone = zone();
    let request = query("big.default.svc.cluster.local.", RecordType::A);
    let msg = reply(decide(&zone, request.clone(), true));
    assert_eq!(msg.answers.len(), 100);
    let udp = Message::from_vec(&finish(None, &msg, true).expect("udp")).expect("decode");
    assert!(
        udp.metadata.truncation,
        "100 A records do not fit 512 bytes"
    );
    assert!(udp.answers.is_empty());
    assert_eq!(udp.queries.len(), 1);
    let tcp = Message::from_vec(&finish(None, &msg, false).expect("tcp")).expect("decode");
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 100);
    // With EDNS the client's larger buffer is used (up to 1232 bytes).
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    let fits = finish(Some(&edns), &msg, true).expect("udp");
    let m = Message::from_vec(&fits).expect("decode");
    assert!(fits.len() <= usize::from(MAX_UDP_PAYLOAD));
    assert!(
        m.metadata.truncation,
        "100 A records are 1.6 kB: still too many"
    );
}

#[test]
fn chains_to_missing_names_unknown_types_and_the_soa_server() {
    let zone = zone();
    // A CNAME into the zone whose target does not exist: NXDOMAIN, CNAME kept (RFC 6604).
    let m = ask(&zone, "dangling.default.svc.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(matches!(m.answers[0].data, RData::CNAME(_)), "{m:?}");
    assert!(matches!(m.authorities[0].data, RData::SOA(_)), "{m:?}");
    // A type nobody asks for is NODATA, not REFUSED (RFC 3597).
    let odd = ask(
        &zone,
        "web.default.svc.cluster.local.",
        RecordType::Unknown(65_280),
    );
    assert_eq!(odd.metadata.response_code, ResponseCode::NoError);
    assert!(odd.answers.is_empty());
    assert!(matches!(odd.authorities[0].data, RData::SOA(_)));
    // The SOA's primary server resolves to the cluster DNS Service.
    let ns = ask(&zone, "ns.dns.cluster.local.", RecordType::A);
    assert_eq!(ns.answers[0].data, RData::A(A([10, 96, 0, 10].into())));
    let empty = ask(&zone, "dns.cluster.local.", RecordType::A);
    assert_eq!(empty.metadata.response_code, ResponseCode::NoError);
}

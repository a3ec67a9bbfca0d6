//! Protobuf request bodies from anywhere: decoding must answer an error, never panic,
//! and whatever decodes must encode again and decode to the same object.
#![no_main]

use berth_control_plane::apiserver::protobuf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Most inputs should get past the magic to reach the envelope and the messages.
    let mut body = b"k8s\0".to_vec();
    body.extend_from_slice(data);
    for input in [data, &body[..]] {
        let Ok(obj) = protobuf::decode(input) else {
            continue;
        };
        let Some(encoded) = protobuf::encode(&obj) else {
            continue;
        };
        let encoded = encoded.expect("what decoded encodes");
        let again = protobuf::decode(&encoded).expect("what berth encoded decodes");
        let encoded_again = protobuf::encode(&again)
            .expect("a message")
            .expect("encodes");
        assert_eq!(encoded, encoded_again, "encoding is stable");
    }
});

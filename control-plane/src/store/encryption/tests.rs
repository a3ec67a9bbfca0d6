//! Encryption at rest: each provider's round trip, values made by independent tools
//! (openssl, Python's `cryptography`, a Python XSalsa20 written from the Salsa20 spec)
//! read back — proving the byte formats — wrong and missing keys, rotation order,
//! identity fallback, resource matching, and the [`EncryptedStore`] wrapper over the
//! real embedded store.

use std::sync::Arc;

use super::providers::TransformError;
use super::*;
use crate::store::redb::RedbStore;

const SECRET: &str = "/registry/core/secrets/default/s1";
const CONFIGMAP: &str = "/registry/core/configmaps/default/c1";
/// The plaintext the fixed vectors below encrypt.
const PLAIN: &[u8] = br#"{"kind":"Secret","data":{"password":"aHVudGVyMg=="}}"#;

/// 000102…1f
const KEY32: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// 000102…0f
const KEY16: &str = "AAECAwQFBgcICQoLDA0ODw==";
/// 202122…3f
const BOX_KEY: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
/// Another 32-byte key.
const OTHER32: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// `openssl enc -aes-256-cbc -K 000102…1f -iv a0a1…af` of [`PLAIN`] (IV first).
const CBC_VECTOR: &str = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafda54e881eafae68f34aa2ddb00e56b52ebc8f04455a57c27e78aeee850c41f0287a4a7535609c48c0de9e74dbdbab3018af66c95ed00289fb479660eb4e37993";
/// Python `cryptography`'s `AESGCM(000102…0f).encrypt(b0…bb, PLAIN, SECRET)`, nonce first.
const GCM_VECTOR: &str = "b0b1b2b3b4b5b6b7b8b9babb25ebdbf4a9f309059c793e65a71f6bc4f5713316bd8335dcdad477d8c96055a8e99b6f118003cbb4076ae94e099946f92d9a9a1bffc36db29aecfd26121ee203a164e40e";
/// NaCl secretbox of [`PLAIN`] with key 2021…3f and nonce c0…d7 (nonce, tag, ciphertext),
/// from a Python XSalsa20 and `cryptography`'s Poly1305.
const SECRETBOX_VECTOR: &str = "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d73192f142636fc7e6a31d540648a58cca10723e0f6c519d6404bf22545c50390eca238e649d0b3664366f5ecd7512f569169fc70c0abcca48523d9dd509a93e043edebc3c";

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn config(resources: &str, providers: &str) -> Transformers {
    let text = format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: {resources}\n  providers:\n{providers}"
    );
    Transformers::parse(&text).unwrap_or_else(|e| panic!("config refused: {e}\n{text}"))
}

fn keys(provider: &str, keys: &[(&str, &str)]) -> String {
    let mut out = format!("  - {provider}:\n      keys:\n");
    for (name, secret) in keys {
        out.push_str(&format!("      - name: {name}\n        secret: {secret}\n"));
    }
    out
}

const IDENTITY: &str = "  - identity: {}\n";

fn write(t: &Transformers, key: &str, plain: &[u8]) -> Vec<u8> {
    t.to_storage(key, plain)
        .expect("encrypts")
        .unwrap_or_else(|| plain.to_vec())
}

fn read(t: &Transformers, key: &str, stored: &[u8]) -> Result<(Vec<u8>, bool), TransformError> {
    t.from_storage(key, stored)
        .map(|(plain, stale)| (plain.unwrap_or_else(|| stored.to_vec()), stale))
}

#[test]
fn every_provider_round_trips_with_its_prefix() {
    for (provider, secret, prefix) in [
        ("aescbc", KEY32, "k8s:enc:aescbc:v1:key1:"),
        ("aescbc", KEY16, "k8s:enc:aescbc:v1:key1:"),
        ("aesgcm", KEY32, "k8s:enc:aesgcm:v1:key1:"),
        (
            "aesgcm",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYX",
            "k8s:enc:aesgcm:v1:key1:",
        ),
        ("secretbox", BOX_KEY, "k8s:enc:secretbox:v1:key1:"),
    ] {
        let t = config("[secrets]", &keys(provider, &[("key1", secret)]));
        let stored = write(&t, SECRET, PLAIN);
        assert!(
            stored.starts_with(prefix.as_bytes()),
            "{provider} writes {prefix}: {:?}",
            String::from_utf8_lossy(&stored)
        );
        assert!(
            !stored.windows(PLAIN.len()).any(|w| w == PLAIN),
            "{provider}: the plaintext is not in the stored bytes"
        );
        assert_eq!(
            read(&t, SECRET, &stored),
            Ok((PLAIN.to_vec(), false)),
            "{provider}"
        );
        // A fresh IV/nonce each time: the same object never stores the same bytes.
        assert_ne!(write(&t, SECRET, PLAIN), stored, "{provider}");
        // The empty value too.
        let empty = write(&t, SECRET, b"");
        assert_eq!(
            read(&t, SECRET, &empty),
            Ok((Vec::new(), false)),
            "{provider}"
        );
    }
}

#[test]
fn values_made_by_other_tools_decrypt() {
    for (provider, secret, body) in [
        ("aescbc", KEY32, CBC_VECTOR),
        ("aesgcm", KEY16, GCM_VECTOR),
        ("secretbox", BOX_KEY, SECRETBOX_VECTOR),
    ] {
        let t = config("[secrets]", &keys(provider, &[("key1", secret)]));
        let stored = [
            format!("k8s:enc:{provider}:v1:key1:").as_bytes(),
            &unhex(body),
        ]
        .concat();
        assert_eq!(
            read(&t, SECRET, &stored),
            Ok((PLAIN.to_vec(), false)),
            "{provider}'s fixed vector"
        );
    }
}

#[test]
fn aes_gcm_authenticates_the_store_key() {
    let t = config("[secrets]", &keys("aesgcm", &[("key1", KEY16)]));
    let stored = [b"k8s:enc:aesgcm:v1:key1:".as_slice(), &unhex(GCM_VECTOR)].concat();
    let moved = "/registry/core/secrets/default/s2";
    let err = read(&t, moved, &stored).expect_err("a value moved to another key");
    assert!(
        matches!(err, TransformError::Decrypt { provider: "aesgcm", ref key, .. } if key == "key1"),
        "{err}"
    );
}

#[test]
fn a_wrong_or_missing_key_fails_naming_it() {
    let written = config("[secrets]", &keys("aescbc", &[("key1", KEY32)]));
    let stored = write(&written, SECRET, PLAIN);

    // Same name, other secret: an error, never garbage.
    for provider in ["aescbc", "aesgcm", "secretbox"] {
        let t = config("[secrets]", &keys(provider, &[("key1", OTHER32)]));
        let stored = if provider == "aescbc" {
            stored.clone()
        } else {
            let w = config("[secrets]", &keys(provider, &[("key1", KEY32)]));
            write(&w, SECRET, PLAIN)
        };
        let err = read(&t, SECRET, &stored).expect_err("the wrong secret");
        assert!(
            err.to_string()
                .contains(&format!("{provider} key \"key1\"")),
            "{provider}: {err}"
        );
    }
    // The key is gone from the config.
    let t = config("[secrets]", &keys("aescbc", &[("key2", OTHER32)]));
    let err = read(&t, SECRET, &stored).expect_err("key1 is not configured");
    assert_eq!(
        err,
        TransformError::NoSuchKey {
            provider: "aescbc",
            key: "key1".into()
        }
    );
    assert!(err.to_string().contains("aescbc key \"key1\""), "{err}");
    // The provider is gone.
    let t = config("[secrets]", &keys("secretbox", &[("key1", BOX_KEY)]));
    let err = read(&t, SECRET, &stored).expect_err("no aescbc provider");
    assert!(err.to_string().contains("k8s:enc:aescbc:v1:key1:"), "{err}");
    // Truncated and malformed bodies.
    for cut in [stored.len() - 1, 24, 30] {
        let err = read(&written, SECRET, &stored[..cut]).expect_err("truncated");
        assert!(matches!(err, TransformError::Decrypt { .. }), "{err}");
    }
}

#[test]
fn rotation_writes_with_the_first_key_and_marks_others_stale() {
    let one = config("[secrets]", &keys("aescbc", &[("key1", KEY32)]));
    let with_key1 = write(&one, SECRET, PLAIN);
    // Step 1: the new key second — still writes key1, reads both, nothing stale.
    let second = config(
        "[secrets]",
        &keys("aescbc", &[("key1", KEY32), ("key2", OTHER32)]),
    );
    assert!(write(&second, SECRET, PLAIN).starts_with(b"k8s:enc:aescbc:v1:key1:"));
    assert_eq!(
        read(&second, SECRET, &with_key1),
        Ok((PLAIN.to_vec(), false))
    );
    // Step 2: the new key first — writes key2; key1's values read, and are stale.
    let first = config(
        "[secrets]",
        &keys("aescbc", &[("key2", OTHER32), ("key1", KEY32)]),
    );
    let with_key2 = write(&first, SECRET, PLAIN);
    assert!(with_key2.starts_with(b"k8s:enc:aescbc:v1:key2:"));
    assert_eq!(read(&first, SECRET, &with_key1), Ok((PLAIN.to_vec(), true)));
    assert_eq!(
        read(&first, SECRET, &with_key2),
        Ok((PLAIN.to_vec(), false))
    );
    // Across providers too: secretbox first, aescbc second.
    let moved = config(
        "[secrets]",
        &(keys("secretbox", &[("b", BOX_KEY)]) + &keys("aescbc", &[("key1", KEY32)])),
    );
    assert!(write(&moved, SECRET, PLAIN).starts_with(b"k8s:enc:secretbox:v1:b:"));
    assert_eq!(read(&moved, SECRET, &with_key1), Ok((PLAIN.to_vec(), true)));
    // Decrypting away: identity first writes plain, reads key1's values as stale.
    let away = config(
        "[secrets]",
        &(IDENTITY.to_owned() + &keys("aescbc", &[("key1", KEY32)])),
    );
    assert_eq!(away.to_storage(SECRET, PLAIN), Ok(None));
    assert_eq!(read(&away, SECRET, &with_key1), Ok((PLAIN.to_vec(), true)));
    assert_eq!(read(&away, SECRET, PLAIN), Ok((PLAIN.to_vec(), false)));
}

#[test]
fn plain_values_need_identity_among_the_providers() {
    let with_identity = config("[secrets]", &(keys("aesgcm", &[("k", KEY32)]) + IDENTITY));
    // Stored before encryption was turned on: read, and stale (a rewrite encrypts it).
    assert_eq!(
        read(&with_identity, SECRET, PLAIN),
        Ok((PLAIN.to_vec(), true))
    );
    let without = config("[secrets]", &keys("aesgcm", &[("k", KEY32)]));
    let err = read(&without, SECRET, PLAIN).expect_err("upstream refuses it too");
    assert_eq!(err, TransformError::NotEncrypted);
    assert!(err.to_string().contains("identity"), "{err}");
}

#[test]
fn resources_match_by_name_group_wildcard_and_everything() {
    let t = config("[secrets, '*.apps']", &keys("aescbc", &[("k", KEY32)]));
    // Not listed: stored as is, read as is; an encrypted value there is refused.
    assert_eq!(t.to_storage(CONFIGMAP, PLAIN), Ok(None));
    assert_eq!(read(&t, CONFIGMAP, PLAIN), Ok((PLAIN.to_vec(), false)));
    let encrypted = write(&t, SECRET, PLAIN);
    assert!(matches!(
        read(&t, CONFIGMAP, &encrypted),
        Err(TransformError::NoRule { .. })
    ));
    assert!(write(&t, "/registry/apps/deployments/ns/d", PLAIN).starts_with(b"k8s:enc:"));
    assert_eq!(t.to_storage("/registry/batch/jobs/ns/j", PLAIN), Ok(None));
    // Keys outside the registry layout are never touched.
    assert_eq!(t.to_storage("/other/secrets/x", PLAIN), Ok(None));

    let core = config("['*.']", &keys("aescbc", &[("k", KEY32)]));
    assert!(write(&core, CONFIGMAP, PLAIN).starts_with(b"k8s:enc:"));
    assert_eq!(
        core.to_storage("/registry/apps/deployments/ns/d", PLAIN),
        Ok(None)
    );
    let all = config("['*.*']", &keys("aescbc", &[("k", KEY32)]));
    assert!(write(&all, "/registry/example.com/widgets/ns/w", PLAIN).starts_with(b"k8s:enc:"));

    // Earlier rules win: events stay plain although *.* is encrypted.
    let text = format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [events]\n  providers:\n{IDENTITY}- resources: ['*.*']\n  providers:\n{}",
        keys("aescbc", &[("k", KEY32)])
    );
    let t = Transformers::parse(&text).expect("valid");
    assert_eq!(t.to_storage("/registry/core/events/ns/e", PLAIN), Ok(None));
    assert!(write(&t, SECRET, PLAIN).starts_with(b"k8s:enc:"));
}

#[test]
fn the_transformation_counter_and_durations_are_rendered() {
    let t = config("[secrets]", &keys("secretbox", &[("k", BOX_KEY)]));
    let stored = write(&t, SECRET, PLAIN);
    read(&t, SECRET, &stored).expect("reads");
    let text = render_metrics();
    assert!(
        text.contains("apiserver_storage_transformation_operations_total{transformation_type=\"to_storage\",transformer_prefix=\"k8s:enc:secretbox:v1:\",status=\"OK\"}"),
        "{text}"
    );
    assert!(
        text.contains("transformation_type=\"from_storage\""),
        "{text}"
    );
    let count = text
        .lines()
        .find(|l| {
            l.starts_with("apiserver_storage_transformation_duration_seconds_count{transformation_type=\"to_storage\",transformer_prefix=\"k8s:enc:secretbox:v1:\"}")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(count.is_some_and(|n| n >= 1), "{text}");
    // The smallest bucket is upstream's 5 µs.
    assert!(
        text.contains("le=\"5e-6\"") || text.contains("le=\"0.000005\""),
        "{text}"
    );
}

fn store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    Arc::new(RedbStore::open(&dir.path().join("store.redb")).expect("the store opens"))
}

#[tokio::test]
async fn the_wrapped_store_holds_ciphertext_and_serves_plaintext() {
    let dir = tempfile::tempdir().expect("temp dir");
    let raw = store(&dir);
    let t = config("[secrets]", &keys("aescbc", &[("key1", KEY32)]));
    let enc = EncryptedStore::open(raw.clone(), t).await.expect("opens");
    let mut watch = enc.watch("/registry/".into(), 0).await.expect("watch");

    let created = enc
        .create(SECRET.into(), PLAIN.to_vec(), None)
        .await
        .expect("create");
    assert_eq!(&*created.value, PLAIN);
    enc.create(CONFIGMAP.into(), b"{}".to_vec(), None)
        .await
        .expect("create a configmap");
    let stored = raw.get(SECRET, None).await.expect("get").expect("exists");
    assert!(stored.value.starts_with(b"k8s:enc:aescbc:v1:key1:"));
    let plain_cm = raw
        .get(CONFIGMAP, None)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(&*plain_cm.value, b"{}");

    let got = enc.get(SECRET, None).await.expect("get").expect("exists");
    assert_eq!(&*got.value, PLAIN);
    let listed = enc
        .list("/registry/", ListOptions::default())
        .await
        .expect("list");
    assert_eq!(listed.kvs.len(), 2);
    assert_eq!(&*listed.kvs[1].value, PLAIN);

    let updated = enc
        .update(SECRET.into(), b"{\"v\":2}".to_vec(), created.mod_revision)
        .await
        .expect("update");
    let deleted = enc.delete(SECRET.into(), None).await.expect("delete");
    assert_eq!(&*deleted.value, b"{\"v\":2}");

    let mut events = Vec::new();
    while events.len() < 4 {
        events.push(
            watch
                .next()
                .await
                .expect("an event")
                .expect("a readable event"),
        );
    }
    assert_eq!(&*events[0].kv.value, PLAIN);
    assert_eq!(&*events[2].kv.value, b"{\"v\":2}");
    assert_eq!(events[2].kv.mod_revision, updated.mod_revision);
    assert_eq!(
        events[2].prev.as_ref().map(|p| p.value.to_vec()),
        Some(PLAIN.to_vec())
    );
    assert_eq!(&*events[3].kv.value, b"{\"v\":2}");
    assert!(!enc.stale(CONFIGMAP).await.expect("stale"));
}

#[tokio::test]
async fn rotation_through_the_store_marks_and_clears_stale_values() {
    let dir = tempfile::tempdir().expect("temp dir");
    let raw = store(&dir);
    let one = EncryptedStore::open(
        raw.clone(),
        config("[secrets]", &keys("aescbc", &[("key1", KEY32)])),
    )
    .await
    .expect("opens");
    let kv = one
        .create(SECRET.into(), PLAIN.to_vec(), None)
        .await
        .expect("create");
    assert!(!one.stale(SECRET).await.expect("stale"));

    let rotated = EncryptedStore::open(
        raw.clone(),
        config(
            "[secrets]",
            &keys("aescbc", &[("key2", OTHER32), ("key1", KEY32)]),
        ),
    )
    .await
    .expect("opens");
    assert!(
        rotated.stale(SECRET).await.expect("stale"),
        "key1 is no longer the writer"
    );
    rotated
        .update(SECRET.into(), PLAIN.to_vec(), kv.mod_revision)
        .await
        .expect("rewrite");
    assert!(!rotated.stale(SECRET).await.expect("stale"));
    let stored = raw.get(SECRET, None).await.expect("get").expect("exists");
    assert!(stored.value.starts_with(b"k8s:enc:aescbc:v1:key2:"));

    // key2 dropped from the config: reads fail, naming the key — never garbage.
    let lost = EncryptedStore::open(
        raw,
        config("[secrets]", &keys("aescbc", &[("key1", KEY32)])),
    )
    .await
    .expect("opens");
    let err = lost.get(SECRET, None).await.expect_err("unreadable");
    assert!(
        err.to_string().contains(SECRET) && err.to_string().contains("aescbc key \"key2\""),
        "{err}"
    );
    assert!(
        lost.list("/registry/", ListOptions::default())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn history_a_removed_key_wrote_is_treated_as_compacted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let raw = store(&dir);
    let both = config(
        "[secrets]",
        &keys("aescbc", &[("key2", OTHER32), ("key1", KEY32)]),
    );
    // Written under key1 (before the rotation), then rewritten under key2.
    let old = raw
        .create(
            SECRET.into(),
            write(
                &config("[secrets]", &keys("aescbc", &[("key1", KEY32)])),
                SECRET,
                PLAIN,
            ),
            None,
        )
        .await
        .expect("create");
    raw.create(CONFIGMAP.into(), b"{}".to_vec(), None)
        .await
        .expect("create");
    raw.update(SECRET.into(), write(&both, SECRET, PLAIN), old.mod_revision)
        .await
        .expect("rewrite");

    let only_key2 = EncryptedStore::open(
        raw.clone(),
        config("[secrets]", &keys("aescbc", &[("key2", OTHER32)])),
    )
    .await
    .expect("opens");
    assert_eq!(only_key2.compacted_revision(), old.mod_revision);
    assert!(matches!(
        only_key2.watch("/registry/".into(), 0).await,
        Err(StoreError::Compacted { .. })
    ));
    let past = ListOptions {
        revision: Some(0),
        ..Default::default()
    };
    assert!(matches!(
        only_key2.list("/registry/", past).await,
        Err(StoreError::Compacted { .. })
    ));
    // The watch cache starts (after the unreadable history) and serves the Secret.
    let cache = crate::apiserver::watch_cache::WatchCache::start(Arc::new(only_key2))
        .await
        .expect("the watch cache starts");
    let (secrets, _) = cache.list("/registry/core/secrets/", |_| true);
    assert_eq!(secrets.len(), 1);
    assert_eq!(secrets[0].value()["kind"], "Secret");

    // Nothing unreadable: all history stays readable.
    let all = EncryptedStore::open(raw, both).await.expect("opens");
    assert_eq!(all.compacted_revision(), 0);
    all.watch("/registry/".into(), 0)
        .await
        .expect("a watch from the start");
}

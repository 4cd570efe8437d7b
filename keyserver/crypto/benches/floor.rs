//! The keyserver's crypto floor: what each server-side operation costs.
//!
//! `cargo bench -p kss-crypto --bench floor`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use kss_crypto::ciphertext::verify;
use kss_crypto::profile::KSS_INDEX;
use kss_crypto::{
    DeviceKey, KeyserverId, ProfileId, RootSecret, SignDomain, VerificationCache, WorkstationShare,
    onboard,
};

fn floor(c: &mut Criterion) {
    let root = RootSecret::generate();
    let keyserver = KeyserverId::random();
    let profile = ProfileId::random();
    let device = DeviceKey::generate();
    let ws = WorkstationShare::generate();
    let proof = ws.proof_of_possession(&keyserver, &device.public());
    let Ok((keys, kss)) = onboard(
        &root,
        &keyserver,
        &profile,
        &device.public(),
        &ws.public(),
        &proof,
    ) else {
        panic!("onboarding failed");
    };
    let file_key = [0x42u8; 32];
    let ct_bytes = keys.encrypt(&file_key);
    let Ok(ct) = verify(ct_bytes.as_bytes()) else {
        panic!("fresh ciphertext does not verify");
    };
    let kss_share = kss.decryption_share(&ct);
    let ws_share = ws.decryption_share(&ct);

    c.bench_function("crypto/ciphertext_verify", |b| {
        b.iter(|| verify(black_box(ct_bytes.as_bytes())))
    });
    // Baseline: blsttc's own check (two full pairings) on the same ciphertext.
    let parsed = kss_crypto::blsttc::Ciphertext::from_bytes(ct_bytes.as_bytes()).expect("valid");
    c.bench_function("crypto/ciphertext_verify_blsttc", |b| {
        b.iter(|| black_box(&parsed).verify())
    });
    c.bench_function("crypto/decryption_share_verified", |b| {
        b.iter(|| kss.decryption_share(black_box(&ct)))
    });
    c.bench_function("crypto/decrypt_share_with_verify", |b| {
        b.iter(|| verify(black_box(ct_bytes.as_bytes())).map(|ct| kss.decryption_share(&ct)))
    });
    c.bench_function("crypto/share_verify", |b| {
        b.iter(|| keys.verify_share(KSS_INDEX, black_box(&kss_share), black_box(&ct)))
    });

    let msg = [0x5au8; 200];
    let sig = device.sign(SignDomain::Request, &msg);
    let public = device.public();
    c.bench_function("crypto/ed25519_verify", |b| {
        b.iter(|| public.verify(SignDomain::Request, black_box(&msg), black_box(&sig)))
    });

    let cache = VerificationCache::new(100_000);
    let _ = cache.verify(ct_bytes.as_bytes());
    c.bench_function("crypto/cache_hit", |b| {
        b.iter(|| cache.verify(black_box(ct_bytes.as_bytes())))
    });

    // Batched verification (what the server does under load): one batch of n distinct
    // ciphertexts per iteration, no cache; per ciphertext = the time ÷ n. 1–16: the batch
    // sizes the server forms; 32 and 64: what larger batches would save.
    let mut group = c.benchmark_group("crypto/verify_batch");
    for n in [1usize, 2, 4, 8, 16, 32, 64] {
        let cts: Vec<Vec<u8>> = (0..n)
            .map(|i| keys.encrypt(&[i as u8; 32]).into_vec())
            .collect();
        let items: Vec<&[u8]> = cts.iter().map(Vec::as_slice).collect();
        let uncached = VerificationCache::new(0);
        group.throughput(criterion::Throughput::Elements(n as u64));
        group.bench_function(n.to_string(), |b| {
            b.iter(|| uncached.verify_batch(black_box(&items)))
        });
    }
    group.finish();

    // The cheapest approval the design allows: n distinct ciphertexts verified in one
    // batch, then for each a decryption share and a request signature check (what every
    // approval must cost at least; L = cores ÷ (this time ÷ n)).
    let mut group = c.benchmark_group("crypto/approval_batched");
    for n in [16usize, 64] {
        let cts: Vec<Vec<u8>> = (0..n)
            .map(|i| keys.encrypt(&[i as u8; 32]).into_vec())
            .collect();
        let items: Vec<&[u8]> = cts.iter().map(Vec::as_slice).collect();
        let uncached = VerificationCache::new(0);
        group.throughput(criterion::Throughput::Elements(n as u64));
        group.bench_function(n.to_string(), |b| {
            b.iter(|| {
                let mut shares = 0usize;
                for verdict in uncached.verify_batch(black_box(&items)) {
                    let Ok(ct) = verdict else {
                        panic!("a fresh ciphertext failed its batch");
                    };
                    if public
                        .verify(SignDomain::Request, black_box(&msg), black_box(&sig))
                        .is_ok()
                    {
                        black_box(kss.decryption_share(&ct));
                        shares += 1;
                    }
                }
                shares
            })
        });
    }
    group.finish();

    c.bench_function("crypto/encrypt_32", |b| {
        b.iter(|| keys.encrypt(black_box(&file_key)))
    });
    c.bench_function("crypto/combine", |b| {
        b.iter(|| keys.combine(black_box(&ws_share), black_box(&kss_share), black_box(&ct)))
    });
}

criterion_group!(benches, floor);
criterion_main!(benches);

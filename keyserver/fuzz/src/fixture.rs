//! Fixed keys, ids and policy shared by the targets and the seeds: deterministic, so that a
//! committed seed signed or encrypted under them keeps its meaning.

use std::sync::OnceLock;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use kss_crypto::ciphertext::{VerificationCache, VerifiedCiphertext};
use kss_crypto::profile::{KssShare, PossessionProof, ProfilePublicKeys, WorkstationShare};
use kss_crypto::{DeviceKey, KeyserverId, MasterKey, ProfileId, RootSecret};
use kss_policy::Policy;
use rand::SeedableRng;

/// The keyserver, profile and device every seed is made for.
pub struct Fixture {
    pub root: RootSecret,
    pub master: MasterKey,
    pub keyserver: KeyserverId,
    pub profile: ProfileId,
    pub device: DeviceKey,
    pub workstation: WorkstationShare,
    pub proof: PossessionProof,
    pub keys: ProfilePublicKeys,
    pub kss: KssShare,
    pub policy: Policy,
    /// The instant policies are evaluated at (a Tuesday, 10:30 UTC).
    pub at: Timestamp,
    pub time_zone: TimeZone,
    pub cache: VerificationCache,
    /// A valid ciphertext under `keys`.
    pub ciphertext: VerifiedCiphertext,
}

/// The fixture's policy: paths and look-around regexes over client-supplied metadata,
/// throttles, a profile-id rule, a time range and session parameters.
pub const POLICY: &str = r#"
decrypt:
  - - rule: meta-rule
      paths: [/public/, '*.pdf', '!/public/secret/']
      regexes: ['^/(?!secret/)[^/]+/.*\.docx?$', '(?<=/)x\d+$']
      require_complete: true
    - rule: per-profile-throttle-rule
      per_hour: 3
      per_day: 5
  - - rule: profile-id-rule
      profile_ids: [0f0e0d0c0b0a09080706050403020100]
    - rule: time-range-rule
      time_start: 9:00am
      time_end: 5:00pm
      days: [1, 2, 3, 4, 5]
search:
  - - rule: profile-id-rule
      profile_ids: [humble busy much cactus]
  - - rule: approve-rule
    - rule: per-profile-throttle-rule
      per_hour: 2
start_session:
  - - rule: session-params-rule
      max_request_count: 10
      max_time_seconds: 3600
      end_by_time: 5:00pm
"#;

/// `msg` encrypted to `keys` with randomness from `seed`: the same bytes on every run.
pub fn encrypt(keys: &ProfilePublicKeys, seed: u64, msg: &[u8]) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    keys.public_key().encrypt_with_rng(&mut rng, msg).to_bytes()
}

/// The fixture (built once per process).
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(build)
}

fn build() -> Fixture {
    let root = RootSecret::from_bytes(&[0x5a; 32]).expect("32 bytes make a root secret");
    let master = MasterKey::from_bytes(&[0xa5; 32]).expect("32 bytes make a master key");
    let keyserver = KeyserverId::from_array(*b"kss-fuzz-keysrv!");
    let profile = ProfileId::from_array([15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0]);
    let device = DeviceKey::from_bytes(&[0x42; 32]);
    let workstation =
        WorkstationShare::from_bytes(&[0x17; 32]).expect("a scalar below the group order");
    let proof = workstation.proof_of_possession(&keyserver, &device.public());
    let (keys, kss) = kss_crypto::profile::onboard(
        &root,
        &keyserver,
        &profile,
        &device.public(),
        &workstation.public(),
        &proof,
    )
    .expect("the fixture's own proof verifies");
    let policy = Policy::load(POLICY).expect("the fixture's policy loads");
    let ciphertext = kss_crypto::ciphertext::verify(&encrypt(&keys, 0, b"kss-fuzz"))
        .expect("a fresh ciphertext verifies");
    Fixture {
        root,
        master,
        keyserver,
        profile,
        device,
        workstation,
        proof,
        keys,
        kss,
        policy,
        at: "2026-12-01T10:30:00Z".parse().expect("a timestamp"),
        time_zone: TimeZone::UTC,
        cache: VerificationCache::new(64),
        ciphertext,
    }
}

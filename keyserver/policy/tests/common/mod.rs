//! Helpers shared by the integration tests of the policy engine.
#![allow(dead_code)] // each test crate uses a different subset

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use kss_policy::{Decision, LoadError, MemoryQuotaStore, MetaInfo, Policy, Request, RequestType};

/// Loads a policy that must be valid.
pub fn load(text: &str) -> Policy {
    match Policy::load(text) {
        Ok(p) => p,
        Err(e) => panic!("policy should load, got: {e}\n---\n{text}"),
    }
}

/// Loads a policy that must be rejected.
pub fn load_err(text: &str) -> LoadError {
    match Policy::load(text) {
        Ok(_) => panic!("policy should be rejected:\n---\n{text}"),
        Err(e) => e,
    }
}

/// An instant written as RFC 3339 (`2022-03-07T10:00:00Z`).
pub fn ts(text: &str) -> Timestamp {
    text.parse()
        .unwrap_or_else(|e| panic!("bad timestamp {text}: {e}"))
}

/// The instant of a wall-clock time in `tz` (`2022-03-07T10:00:00`).
pub fn local(text: &str, tz: &TimeZone) -> Timestamp {
    let dt: DateTime = text
        .parse()
        .unwrap_or_else(|e| panic!("bad datetime {text}: {e}"));
    tz.to_timestamp(dt)
        .unwrap_or_else(|e| panic!("{text} in {tz:?}: {e}"))
}

pub fn zone(name: &str) -> TimeZone {
    kss_policy::time_zone(name).expect("known IANA zone")
}

/// A Monday, 10:00 UTC: inside most windows used by the tests.
pub fn monday_morning() -> Timestamp {
    ts("2022-03-07T10:00:00Z")
}

/// A request of `t` from profile `profile` with no metadata.
pub fn req(t: RequestType, profile: &[u8]) -> Request {
    let mut r = Request::new(t);
    r.profile_id = profile.to_vec();
    r
}

/// A decrypt request for one complete path (written without its leading `/`).
pub fn decrypt_complete(meta: &str) -> Request {
    decrypt_meta(&[(meta, true)])
}

/// A decrypt request for one partial path.
pub fn decrypt_partial(meta: &str) -> Request {
    decrypt_meta(&[(meta, false)])
}

pub fn decrypt_meta(metas: &[(&str, bool)]) -> Request {
    let mut r = req(RequestType::Decrypt, b"\x01\x02");
    r.auth_meta = metas
        .iter()
        .map(|(m, c)| MetaInfo {
            meta: (*m).to_string(),
            complete: *c,
        })
        .collect();
    r
}

/// Evaluates with a fresh in-memory store, in UTC, at `monday_morning()`.
pub fn decide(policy: &Policy, request: &Request) -> Decision {
    policy.evaluate(
        request,
        monday_morning(),
        &TimeZone::UTC,
        &MemoryQuotaStore::new(),
    )
}

pub fn approves(policy: &Policy, request: &Request) -> bool {
    decide(policy, request).is_approved()
}

/// Evaluates in UTC at `at` with a fresh store.
pub fn approves_at(policy: &Policy, request: &Request, at: Timestamp) -> bool {
    policy
        .evaluate(request, at, &TimeZone::UTC, &MemoryQuotaStore::new())
        .is_approved()
}

/// Evaluates in `tz` at `at` with a fresh store.
pub fn approves_in(policy: &Policy, request: &Request, at: Timestamp, tz: &TimeZone) -> bool {
    policy
        .evaluate(request, at, tz, &MemoryQuotaStore::new())
        .is_approved()
}

/// The lowercase hex MD5 of `json`, computed here independently of the engine's JSON writer.
pub fn md5_hex(json: &str) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(json.as_bytes()))
}

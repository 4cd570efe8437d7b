//! Documents read from disk or from the operator: a workstation's profile file and the
//! bootstrap identity. What parses writes back to a document that parses to the same
//! thing; what does not gets a bounded error.

use kss_client::Profile;
use kss_crypto::SealedIdentity;

use super::assert_bounded;
use crate::fixture::fixture;

/// A profile file (`kss client onboard` writes it; the workstation reads it back).
pub fn profile_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let profile = match Profile::from_json(text) {
        Ok(profile) => profile,
        Err(e) => return assert_bounded("a refused profile file", &e.to_string()),
    };
    let written = profile.to_json();
    let again = Profile::from_json(&written).expect("a written profile file parses");
    assert_eq!(again.keyserver_id(), profile.keyserver_id());
    assert_eq!(again.profile_id(), profile.profile_id());
    assert_eq!(again.device_id(), profile.device_id());
    assert_eq!(again.public_keys(), profile.public_keys());
    assert_eq!(again.keyserver_share(), profile.keyserver_share());
    assert_eq!(again.profile_token(), profile.profile_token());
    assert_eq!(*again.to_json(), *written, "writing is not stable");
    // The device id is the device key's, whatever the file claimed.
    assert_eq!(
        *profile.device_id(),
        kss_crypto::DeviceId::of(profile.device_public_key())
    );
}

/// The bootstrap identity document (`kss identity export`, the operator's Secret).
pub fn bootstrap_identity(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let identity = match SealedIdentity::from_json(text) {
        Ok(identity) => identity,
        Err(e) => return assert_bounded("a refused bootstrap identity", &e.to_string()),
    };
    let written = identity.to_json();
    let again = SealedIdentity::from_json(&written).expect("a written identity parses");
    assert_eq!(again, identity, "writing changed the document");
    // Opening authenticates the id with the sealed root: a document whose id was changed
    // does not open under the key it was sealed with.
    let fx = fixture();
    if let Ok((root, _era)) = identity.open_with_era(&fx.master) {
        assert_eq!(root.expose_bytes(), fx.root.expose_bytes());
        assert_eq!(
            identity.keyserver_id, fx.keyserver,
            "a sealed root opened under another id"
        );
    }
}

-- The database is not trusted for integrity: the keyserver MACs the rows that decide who
-- may do what, and revocations and enrollment tokens live here.

-- The keyserver's HMAC over each profile and policy version row (32 bytes). Empty for
-- rows written before this migration, until the keyserver adopts them.
ALTER TABLE profiles ADD COLUMN mac BLOB NOT NULL DEFAULT x'';
ALTER TABLE policy_versions ADD COLUMN mac BLOB NOT NULL DEFAULT x'';

-- Bumped by every revocation, so that instances drop cached profiles.
ALTER TABLE state ADD COLUMN revocation_epoch INTEGER NOT NULL DEFAULT 0;

-- A revoked profile (whole_profile = 1, device_id '') or one revoked device of it
-- (whole_profile = 0). A (profile, device) is revoked once.
CREATE TABLE revocations (
    profile_id TEXT NOT NULL,
    whole_profile INTEGER NOT NULL CHECK (whole_profile IN (0, 1)),
    device_id TEXT NOT NULL,
    revoked_at_ms INTEGER NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (profile_id, whole_profile, device_id),
    CHECK (whole_profile = 0 OR device_id = '')
);

-- Enrollment tokens: only the SHA-256 of a token is stored, never the token.
CREATE TABLE enrollments (
    id TEXT PRIMARY KEY,
    token_sha256 BLOB NOT NULL UNIQUE,
    uses_total INTEGER NOT NULL,
    uses_left INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    note TEXT NOT NULL
);
CREATE INDEX enrollments_created ON enrollments (created_at_ms, id);

-- The database is not trusted for integrity: the keyserver MACs the rows that decide who
-- may do what, and revocations and enrollment tokens live here. Same tables and columns
-- as the SQLite schema.

-- The keyserver's HMAC over each profile and policy version row (32 bytes). Empty for
-- rows written before this migration, until the keyserver adopts them.
ALTER TABLE profiles ADD COLUMN mac VARBINARY(32) NOT NULL DEFAULT '';
ALTER TABLE policy_versions ADD COLUMN mac VARBINARY(32) NOT NULL DEFAULT '';

-- Bumped by every revocation, so that instances drop cached profiles.
ALTER TABLE state ADD COLUMN revocation_epoch BIGINT NOT NULL DEFAULT 0;

-- A revoked profile (whole_profile = 1, device_id '') or one revoked device of it
-- (whole_profile = 0). A (profile, device) is revoked once.
CREATE TABLE revocations (
    profile_id VARCHAR(64) NOT NULL,
    whole_profile BIGINT NOT NULL,
    device_id VARCHAR(64) NOT NULL,
    revoked_at_ms BIGINT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (profile_id, whole_profile, device_id),
    CONSTRAINT revocation_kind CHECK (whole_profile IN (0, 1) AND (whole_profile = 0 OR device_id = ''))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Enrollment tokens: only the SHA-256 of a token is stored, never the token.
CREATE TABLE enrollments (
    id VARCHAR(64) NOT NULL PRIMARY KEY,
    token_sha256 VARBINARY(32) NOT NULL,
    uses_total BIGINT NOT NULL,
    uses_left BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    note TEXT NOT NULL,
    UNIQUE KEY enrollments_token (token_sha256),
    KEY enrollments_created (created_at_ms, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

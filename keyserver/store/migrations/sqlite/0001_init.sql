-- The keyserver's identity: one row. The root secret is sealed with the master key.
CREATE TABLE identity (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    keyserver_id TEXT NOT NULL,
    sealed_root BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL
);

-- Switches every instance reads: enabled, the policy version in force, and an epoch that
-- `kss quota clear` bumps so that instances drop cached counters.
CREATE TABLE state (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    enabled INTEGER NOT NULL,
    policy_version INTEGER NOT NULL,
    quota_epoch INTEGER NOT NULL
);
INSERT INTO state (singleton, enabled, policy_version, quota_epoch) VALUES (1, 1, 0, 0);

CREATE TABLE profiles (
    profile_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    device_public_key BLOB NOT NULL,
    workstation_share BLOB NOT NULL,
    name TEXT NOT NULL,
    words TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE policy_versions (
    version INTEGER PRIMARY KEY,
    text TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    loaded_at_ms INTEGER NOT NULL
);

-- Persistent throttle counters: the latest calendar hour used and its counts.
CREATE TABLE quota_counters (
    rule_id TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    day TEXT NOT NULL,
    hour INTEGER NOT NULL,
    hour_used INTEGER NOT NULL,
    day_used INTEGER NOT NULL,
    PRIMARY KEY (profile_id, rule_id)
);

-- Every decision. A nonce is accepted once (replay protection shares the audit's
-- transaction).
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    instance_id TEXT NOT NULL,
    profile_id TEXT,
    device_id TEXT,
    request_type TEXT NOT NULL,
    meta TEXT NOT NULL,
    cryptographic_id TEXT NOT NULL,
    decision TEXT NOT NULL,
    rule_set INTEGER,
    reason TEXT,
    policy_version INTEGER,
    nonce BLOB UNIQUE
);
CREATE INDEX audit_profile ON audit (profile_id, id);

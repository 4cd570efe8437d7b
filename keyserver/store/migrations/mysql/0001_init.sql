-- MySQL 8 / MariaDB 10.11 schema: the same tables and columns as the SQLite schema, so
-- rows can be copied between the two. Text is utf8mb4 with a binary collation: ids
-- compare byte for byte, as in SQLite. Integers are BIGINT (milliseconds, counts).

-- The keyserver's identity: one row. The root secret is sealed with the master key.
CREATE TABLE identity (
    singleton TINYINT NOT NULL PRIMARY KEY CHECK (singleton = 1),
    keyserver_id VARCHAR(64) NOT NULL,
    sealed_root BLOB NOT NULL,
    created_at_ms BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Switches every instance reads: enabled, the policy version in force, and an epoch that
-- `kss quota clear` bumps so that instances drop cached counters. Its one row is also the
-- lock that serializes `add_policy`.
CREATE TABLE state (
    singleton TINYINT NOT NULL PRIMARY KEY CHECK (singleton = 1),
    enabled BIGINT NOT NULL,
    policy_version BIGINT NOT NULL,
    quota_epoch BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
INSERT INTO state (singleton, enabled, policy_version, quota_epoch) VALUES (1, 1, 0, 0);

CREATE TABLE profiles (
    profile_id VARCHAR(64) NOT NULL PRIMARY KEY,
    device_id TEXT NOT NULL,
    device_public_key BLOB NOT NULL,
    workstation_share BLOB NOT NULL,
    name TEXT NOT NULL,
    words TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE policy_versions (
    version BIGINT NOT NULL PRIMARY KEY,
    text MEDIUMTEXT NOT NULL,
    sha256 VARCHAR(64) NOT NULL,
    loaded_at_ms BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Persistent throttle counters: the latest calendar hour used and its counts.
CREATE TABLE quota_counters (
    rule_id VARCHAR(255) NOT NULL,
    profile_id VARCHAR(64) NOT NULL,
    day VARCHAR(16) NOT NULL,
    hour BIGINT NOT NULL,
    hour_used BIGINT NOT NULL,
    day_used BIGINT NOT NULL,
    PRIMARY KEY (profile_id, rule_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Every decision. A nonce is accepted once (replay protection shares the audit's
-- transaction). profile_id is as claimed by the request (not validated, so of any
-- length): TEXT, indexed on a prefix.
CREATE TABLE audit (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    instance_id TEXT NOT NULL,
    profile_id TEXT NULL,
    device_id TEXT NULL,
    request_type TEXT NOT NULL,
    meta MEDIUMTEXT NOT NULL,
    cryptographic_id TEXT NOT NULL,
    decision VARCHAR(16) NOT NULL,
    rule_set BIGINT NULL,
    reason TEXT NULL,
    policy_version BIGINT NULL,
    nonce VARBINARY(16) NULL,
    UNIQUE KEY audit_nonce (nonce),
    KEY audit_profile (profile_id(64), id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- The audit log as evidence (see src/audit_chain.rs): every row after the chain's genesis
-- carries its link in a keyed hash chain; checkpoints and the head are MACed. Rows
-- written before this migration keep chain_hash NULL: the genesis checkpoint, written at
-- the first keyed write, comes after them. Same tables and columns as the SQLite schema.

ALTER TABLE audit
    ADD COLUMN ciphertext_sha256 VARBINARY(32) NULL,
    ADD COLUMN actor TEXT NULL,
    ADD COLUMN chain_hash VARBINARY(32) NULL;

CREATE TABLE audit_checkpoints (
    seq BIGINT NOT NULL PRIMARY KEY,
    kind VARCHAR(16) NOT NULL,
    last_id BIGINT NOT NULL,
    last_hash VARBINARY(32) NOT NULL,
    at_ms BIGINT NOT NULL,
    prev_mac VARBINARY(32) NOT NULL,
    mac VARBINARY(32) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- One row, locked by every append (SELECT ... FOR UPDATE): the end of the chain, and the
-- lock that makes the chain's order the commit order across instances. An empty mac: not
-- started yet.
CREATE TABLE audit_head (
    singleton TINYINT NOT NULL PRIMARY KEY CHECK (singleton = 1),
    last_id BIGINT NOT NULL,
    last_hash VARBINARY(32) NOT NULL,
    checkpoint_seq BIGINT NOT NULL,
    checkpoint_mac VARBINARY(32) NOT NULL,
    since_checkpoint BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    mac VARBINARY(32) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
INSERT INTO audit_head (singleton, last_id, last_hash, checkpoint_seq, checkpoint_mac,
                        since_checkpoint, at_ms, mac)
VALUES (1, 0, '', 0, '', 0, 0, '');

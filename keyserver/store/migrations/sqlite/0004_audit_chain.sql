-- The audit log as evidence (see src/audit_chain.rs): every row after the chain's genesis
-- carries its link in a keyed hash chain; checkpoints and the head are MACed. Rows
-- written before this migration keep chain_hash NULL: the genesis checkpoint, written at
-- the first keyed write, comes after them.

-- SHA-256 of the ciphertext the keyserver verified (decrypts).
ALTER TABLE audit ADD COLUMN ciphertext_sha256 BLOB;
-- Who did an administrative action.
ALTER TABLE audit ADD COLUMN actor TEXT;
-- MAC(previous chain_hash, this row): 32 bytes.
ALTER TABLE audit ADD COLUMN chain_hash BLOB;

CREATE TABLE audit_checkpoints (
    seq INTEGER NOT NULL PRIMARY KEY,
    kind TEXT NOT NULL,
    last_id INTEGER NOT NULL,
    last_hash BLOB NOT NULL,
    at_ms INTEGER NOT NULL,
    prev_mac BLOB NOT NULL,
    mac BLOB NOT NULL
);

-- One row, locked by every append: the end of the chain. An empty mac: not started yet.
CREATE TABLE audit_head (
    singleton INTEGER NOT NULL PRIMARY KEY CHECK (singleton = 1),
    last_id INTEGER NOT NULL,
    last_hash BLOB NOT NULL,
    checkpoint_seq INTEGER NOT NULL,
    checkpoint_mac BLOB NOT NULL,
    since_checkpoint INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    mac BLOB NOT NULL
);
INSERT INTO audit_head (singleton, last_id, last_hash, checkpoint_seq, checkpoint_mac,
                        since_checkpoint, at_ms, mac)
VALUES (1, 0, X'', 0, X'', 0, 0, X'');

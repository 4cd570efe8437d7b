-- Cluster membership and leases (same tables as the SQLite schema). Times are
-- milliseconds of the database server's clock, so instances on hosts whose clocks
-- differ agree on who is online and which lease has expired.

-- Every instance that served this keyserver: heartbeats and the policy version it applied.
-- An instance is online while its heartbeat is fresh and it has not stopped.
CREATE TABLE instances (
    name VARCHAR(255) NOT NULL PRIMARY KEY,
    -- Random per process start: a restarted instance (same name) takes its row over.
    incarnation VARCHAR(64) NOT NULL,
    hostname TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    kss_version TEXT NOT NULL,
    started_at_ms BIGINT NOT NULL,
    heartbeat_ms BIGINT NOT NULL,
    applied_policy_version BIGINT NOT NULL,
    applied_at_ms BIGINT NOT NULL,
    stopped_at_ms BIGINT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Leases with fencing tokens: `token` grows by one at every change of holder, and writes
-- made under a lease check it in their own transaction.
CREATE TABLE leases (
    name VARCHAR(64) NOT NULL PRIMARY KEY,
    holder VARCHAR(255) NOT NULL,
    token BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

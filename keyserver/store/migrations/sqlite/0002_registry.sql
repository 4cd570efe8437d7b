-- Cluster membership and leases.

-- Every instance that served this keyserver: heartbeats and the policy version it applied.
-- An instance is online while its heartbeat is fresh and it has not stopped.
CREATE TABLE instances (
    name TEXT PRIMARY KEY,
    -- Random per process start: a restarted instance (same name) takes its row over.
    incarnation TEXT NOT NULL,
    hostname TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    kss_version TEXT NOT NULL,
    started_at_ms INTEGER NOT NULL,
    heartbeat_ms INTEGER NOT NULL,
    applied_policy_version INTEGER NOT NULL,
    applied_at_ms INTEGER NOT NULL,
    stopped_at_ms INTEGER NULL
);

-- Leases with fencing tokens: `token` grows by one at every change of holder, and writes
-- made under a lease check it in their own transaction.
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    token INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
);

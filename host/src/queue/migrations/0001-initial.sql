-- The first schema of the delivery store (host/src/queue). Times are
-- milliseconds since the Unix epoch; order is by id (insertion order), never
-- by clock, so a clock step cannot reorder the queue.

-- Marks the file as gantry's (0x474E5451, "GNTQ"): another program's SQLite
-- file is refused rather than migrated.
PRAGMA application_id = 1196315729;

-- Every webhook delivery received, by the provider's own id: a redelivery
-- finds its row and runs nothing.
CREATE TABLE deliveries (
    provider       TEXT    NOT NULL,  -- github, azure-devops, ...
    delivery_id    TEXT    NOT NULL,  -- X-GitHub-Delivery, the service hook's id
    event          TEXT    NOT NULL,  -- push, git.push, ping, ...
    received_at_ms INTEGER NOT NULL,
    -- What it became: 'queued' (its runs point back at it) or why not.
    outcome        TEXT    NOT NULL,
    PRIMARY KEY (provider, delivery_id)
);

CREATE TABLE runs (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline           TEXT    NOT NULL,
    repository         TEXT    NOT NULL,  -- the clone URL
    git_ref            TEXT    NOT NULL,  -- the full ref, e.g. refs/heads/main
    branch             TEXT    NOT NULL,  -- its short name (main, v1), what stages see
    commit_sha         TEXT    NOT NULL,
    -- The messages of the commits the push brought, newest last (a JSON
    -- array of strings; empty for a poll, a manual run or a promotion).
    commit_messages    TEXT    NOT NULL DEFAULT '[]' CHECK (json_valid(commit_messages)),
    -- What the ref pointed at before the push (NULL: a new ref, or unknown).
    before_sha         TEXT,
    environment        TEXT    NOT NULL,
    trigger            TEXT    NOT NULL,  -- push, poll, manual, promotion
    -- A promotion: the finished run whose build stages it reuses.
    source_run_id      INTEGER REFERENCES runs (id),
    -- It stays queued until its approval for its environment is approved.
    needs_approval     INTEGER NOT NULL DEFAULT 0 CHECK (needs_approval IN (0, 1)),
    status             TEXT    NOT NULL CHECK (status IN
        ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'superseded', 'rejected',
         'skipped')),
    -- Why it failed or was skipped, in words.
    detail             TEXT,
    superseded_by      INTEGER REFERENCES runs (id),
    cancel_requested   INTEGER NOT NULL DEFAULT 0 CHECK (cancel_requested IN (0, 1)),
    -- The run id of gantry's journal, so a run left running can be resumed.
    journal_run_id     TEXT,
    -- The Store (a lock file beside the database) that claimed it while it
    -- runs: a run whose claimer's lock is free was left by a dead process.
    claimed_by         TEXT,
    delivery_provider  TEXT,
    delivery_id        TEXT,
    created_at_ms      INTEGER NOT NULL,
    started_at_ms      INTEGER,
    finished_at_ms     INTEGER,
    CHECK ((status = 'superseded') = (superseded_by IS NOT NULL)),
    CHECK ((delivery_provider IS NULL) = (delivery_id IS NULL)),
    FOREIGN KEY (delivery_provider, delivery_id) REFERENCES deliveries (provider, delivery_id)
);
-- claim_next scans queued runs oldest first.
CREATE INDEX runs_by_status ON runs (status, id);
-- One run at a time per (pipeline, branch), by the full ref, enforced by the
-- database itself as well as by claim_next.
CREATE UNIQUE INDEX runs_one_running_per_branch ON runs (pipeline, git_ref)
    WHERE status = 'running';
CREATE INDEX runs_by_group ON runs (pipeline, git_ref, environment, status);

CREATE TABLE approvals (
    run_id          INTEGER NOT NULL REFERENCES runs (id),
    environment     TEXT    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'approved', 'rejected')),
    requested_at_ms INTEGER NOT NULL,
    decided_by      TEXT,
    decided_at_ms   INTEGER,
    comment         TEXT,
    PRIMARY KEY (run_id, environment),
    CHECK ((state = 'pending') = (decided_by IS NULL)),
    CHECK ((state = 'pending') = (decided_at_ms IS NULL))
);

-- Every deployment to an environment, append-only (the history); what is
-- live is the newest row per (pipeline, environment).
CREATE TABLE deployments (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline       TEXT    NOT NULL,
    environment    TEXT    NOT NULL,
    commit_sha     TEXT    NOT NULL,
    image_digest   TEXT,
    run_id         INTEGER NOT NULL REFERENCES runs (id),
    deployed_at_ms INTEGER NOT NULL
);
CREATE INDEX deployments_by_environment ON deployments (pipeline, environment, id);

-- What polling last saw of each watched repository (git ls-remote), so a
-- push made while the service was down is still found; a repository with no
-- row in polled_repositories has not been looked at yet.
CREATE TABLE polled_repositories (
    repository     TEXT    PRIMARY KEY,
    polled_at_ms   INTEGER NOT NULL
);
CREATE TABLE remote_refs (
    repository     TEXT    NOT NULL,
    git_ref        TEXT    NOT NULL,
    commit_sha     TEXT    NOT NULL,
    PRIMARY KEY (repository, git_ref)
);

-- pgmaxsim 0006: the privilege model's tables, settings an admin chooses, scorer sync positions.
-- From this revision on, every function lives in sql/idempotent/ (applied by `pgmaxsim migrate`);
-- this file changes tables only. Released file: never edit (sha256 pinned in its revision).

-- Roles given pgmaxsim through maxsim.grant_usage (re-granted on every migrate, kept by pg_dump).
CREATE TABLE maxsim.grants (
    role       regrole PRIMARY KEY,
    admin      boolean NOT NULL DEFAULT false,
    granted_at timestamptz NOT NULL DEFAULT now()
);

-- Settings an admin chooses (maxsim.set_setting): where backends find the scorer, limits. A table,
-- not PostgreSQL settings, because any role can SET a custom setting in its own session.
CREATE TABLE maxsim.settings (
    key        text PRIMARY KEY,
    value      text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Where each running scorer has synced to (the snapshot its copy reflects): change-log entries
-- every live scorer has passed are pruned (maxsim.prune_changes).
CREATE TABLE maxsim.scorers (
    scorer_id text PRIMARY KEY,
    watermark pg_snapshot NOT NULL,
    seen_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX changes_at_idx ON maxsim.changes (at);

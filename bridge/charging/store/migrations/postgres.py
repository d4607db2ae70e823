"""PostgreSQL schema versions, each run in one transaction under an advisory lock (several
instances may start at once). Version 1 mirrors SQLite's first schema, so that both stores
go through the same steps."""

MIGRATIONS: list[str] = [
    # 1: the first schema (text fingerprints with the time they were seen).
    """
    CREATE TABLE sessions (session_id TEXT PRIMARY KEY, payload TEXT NOT NULL);
    CREATE TABLE stats (id INTEGER PRIMARY KEY CHECK (id = 1), payload TEXT NOT NULL);
    CREATE TABLE seen (key TEXT PRIMARY KEY, at DOUBLE PRECISION NOT NULL);
    CREATE INDEX seen_at ON seen (at);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)
    """,
    # 2: bounded dedupe, as SQLite's version 2 (same compact keys: `m` + 16 bytes of the
    # message hash, `s`/`k` + 16 bytes of SHA-256 of the key; default windows for old rows).
    r"""
    CREATE TABLE fingerprints (key BYTEA PRIMARY KEY, expires DOUBLE PRECISION NOT NULL);
    CREATE INDEX fingerprints_expires ON fingerprints (expires);
    INSERT INTO fingerprints
        SELECT CASE
                   WHEN key ~ '^msg:[0-9a-f]{32}'
                       THEN '\x6d'::bytea || decode(substr(key, 5, 32), 'hex')
                   WHEN key LIKE 'settled:%'
                   THEN '\x73'::bytea || substring(sha256(convert_to(key, 'UTF8')) FROM 1 FOR 16)
                   ELSE '\x6b'::bytea || substring(sha256(convert_to(key, 'UTF8')) FROM 1 FOR 16)
               END,
               at + CASE WHEN key LIKE 'settled:%' THEN 172800 ELSE 900 END
        FROM seen
        ON CONFLICT DO NOTHING;
    DROP TABLE seen
    """,
    # 3: several service instances (docs/scaling.md): each session row names its device (the
    # unit of locking), its version (optimistic check: a write names the version it read),
    # whether it is active and when the cleanup pass may next change it (`touched`); the
    # statistics row keeps the active-session count, as every instance changes it.
    r"""
    ALTER TABLE sessions ADD COLUMN device_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE sessions ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE sessions ADD COLUMN active BOOLEAN NOT NULL DEFAULT false;
    ALTER TABLE sessions ADD COLUMN touched DOUBLE PRECISION NOT NULL DEFAULT 0;
    UPDATE sessions SET
        device_id = payload::json->>'device_id',
        version = coalesce((payload::json->>'version')::bigint, 0),
        active = payload::json->>'status' IN ('starting', 'charging', 'stopping'),
        touched = extract(epoch FROM greatest(
            (payload::json->>'last_update')::timestamptz,
            (payload::json->>'end_time')::timestamptz));
    CREATE INDEX sessions_device ON sessions (device_id);
    CREATE INDEX sessions_touched ON sessions (active, touched);
    ALTER TABLE stats ADD COLUMN active BIGINT NOT NULL DEFAULT 0;
    UPDATE stats SET active = (SELECT count(*) FROM sessions WHERE active)
    """,
]

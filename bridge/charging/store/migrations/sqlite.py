"""SQLite schema versions. Statements are separated by `;` and run in one transaction;
`fp(key)` and `fp_expires(key, at)` are Python functions the store registers (the compact
fingerprint and its expiry under the default windows, for rows written before version 2)."""

MIGRATIONS: list[str] = [
    # 1: the schema of chargebridge 0.1 (one text row per fingerprint, kept 2 days).
    """
    CREATE TABLE IF NOT EXISTS sessions (session_id TEXT PRIMARY KEY, payload TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS stats (id INTEGER PRIMARY KEY CHECK (id = 1), payload TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, at REAL NOT NULL);
    CREATE INDEX IF NOT EXISTS seen_at ON seen (at);
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)
    """,
    # 2: bounded dedupe: 17-byte keys with an expiry each (short for message fingerprints,
    # long for settlement keys), no rowid. The store VACUUMs once afterwards, to switch the
    # file to incremental auto_vacuum.
    """
    CREATE TABLE fingerprints (key BLOB PRIMARY KEY, expires REAL NOT NULL) WITHOUT ROWID;
    CREATE INDEX fingerprints_expires ON fingerprints (expires);
    INSERT OR IGNORE INTO fingerprints SELECT fp(key), fp_expires(key, at) FROM seen;
    DROP TABLE seen
    """,
]

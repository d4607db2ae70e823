"""Forward-only schema migrations of the charging store, one list per database.

`MIGRATIONS[i]` brings a store from schema version i to i + 1; the version a store is at is
the one row of its `schema_version` table. A store that has the tables of the first version
but no `schema_version` (chargebridge before schema versions: SQLite only) is at version 1.
Migrations are never edited once released: a change of schema is a new entry at the end.
"""

from bridge.charging.store.migrations import postgres, sqlite

__all__ = ["postgres", "sqlite"]

/* store.h: the whole interface of storage/ (SQLite database, blob store, durable job queue).
 *
 * Nothing outside storage/ sees SQL or sqlite3 types: callers hold an opaque `struct store` so that
 * a PostgreSQL backend can be added behind the same functions (DESIGN.md section 7). */
#ifndef TPV_STORE_H
#define TPV_STORE_H

#include "core/tpv_error.h"

struct store;

/* Opens (creating if needed) the data directory `data_dir` and its database `tpvd.db`, with WAL,
 * foreign keys and a busy timeout, and migrates the schema to the current version.
 * On success *out owns the handle (free with store_close).  Errors: TPV_EIO, TPV_EINTERNAL. */
int store_open(struct store **out, const char *data_dir, struct tpv_err *err);

/* Closes the database; NULL is a no-op. */
void store_close(struct store *st);

/* Cheap liveness probe for /readyz: runs a trivial query.  0 or TPV_EUNAVAILABLE. */
int store_ping(struct store *st, struct tpv_err *err);

/* The schema version the database is at (PRAGMA user_version). */
int store_schema_version(struct store *st);

#endif

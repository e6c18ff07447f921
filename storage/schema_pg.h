/* schema_pg.h: versioned migrations of a PostgreSQL database from the schema steps of
 * schema_steps.h (DESIGN.md section 7).
 *
 * The version lives in a one-row table schema_version.  Several nodes may start at once: the
 * migrator holds a session advisory lock (PG_SCHEMA_LOCK_KEY) for the whole run, so the first
 * applies the steps and the others wait and then find nothing to do; each step runs in its own
 * transaction with its version bump, so a crash leaves the schema at a whole version, and a node
 * that dies while migrating releases the lock with its session. */
#ifndef TPV_SCHEMA_PG_H
#define TPV_SCHEMA_PG_H

#include "core/tpv_error.h"
#include "storage/pg_conn.h"

/* pg_advisory_lock key of the migrator: "tpvdschm" in ASCII. */
#define PG_SCHEMA_LOCK_KEY "8390336279595935853"

/* Brings the database of `pool` to the newest schema.  *applied (may be NULL) gets the number of
 * steps this call applied, *version (may be NULL) the version afterwards.
 * Errors: TPV_EPRECONDITION (field "database") when the database is at a newer version than this
 * tpvd knows, TPV_EUNAVAILABLE, TPV_EINTERNAL with the failing step named. */
int schema_pg_migrate(struct pg_pool *pool, int *applied, int *version, struct tpv_err *err);

/* The database's schema version: 0 when it has none yet. */
int schema_pg_version(struct pg_pool *pool, int *version, struct tpv_err *err);

#endif

/* store_pg.h: the PostgreSQL storage backend (DESIGN.md section 7, storage/DESIGN-phase2.md):
 * every op of `struct store_ops` on pg_conn (pool, retried transactions), pg_queue (SKIP LOCKED
 * claims under a lease) and pg_notify (LISTEN thread that keeps the nodes' version caches and
 * long-polls in step).  Seen only by storage/ (store.c picks it for postgresql:// URLs). */
#ifndef TPV_STORE_PG_H
#define TPV_STORE_PG_H

#include "storage/store_ops.h"

extern const struct store_ops store_pg_ops;

/* Whether `url` names a PostgreSQL database ("postgresql://" or "postgres://"). */
bool store_pg_url(const char *url);

#endif

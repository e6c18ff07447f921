/* schema_steps.h: the one list of schema steps of storage/, with the text of each step for both
 * backends side by side (DESIGN.md section 7).  Step i (1-based) brings a database from schema
 * version i-1 to i: SQLite records the version in PRAGMA user_version, PostgreSQL in the
 * schema_version table (schema_pg.h).  Append only, never edit a step that has shipped: add a step
 * and give it both texts.
 *
 * storage/store.c migrates SQLite databases with these texts; tests/unit/test_pg_schema.c checks
 * that the PostgreSQL texts give the same tables, columns and indexes. */
#ifndef TPV_SCHEMA_STEPS_H
#define TPV_SCHEMA_STEPS_H

#include <stddef.h>

struct schema_step {
    int version;          /* the schema version after this step */
    const char *what;     /* one line for logs */
    const char *sqlite;   /* SQLite text, several statements, for sqlite3_exec */
    const char *postgres; /* PostgreSQL text, several statements, run as one script */
};

/* Every step in order (steps[i].version == i + 1); *n gets the count.  Static storage. */
const struct schema_step *schema_steps(size_t *n);

#endif

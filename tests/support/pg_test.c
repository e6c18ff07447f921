/* pg_test.c: databases on the test PostgreSQL server (see pg_test.h). */
#include "tests/support/pg_test.h"

#include <libpq-fe.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

const char *pg_test_uri(void)
{
    const char *uri = getenv("TPV_TEST_PG_URI");
    if (!uri || !*uri) {
        fail_msg("TPV_TEST_PG_URI is not set: this test needs PostgreSQL.  Run ./scripts/tpv test, "
                 "or export TPV_TEST_PG_URI=$(tests/support/pg_server.sh start) first "
                 "(and tests/support/pg_server.sh stop \"$TPV_TEST_PG_URI\" afterwards)");
    }
    return uri;
}

char *pg_test_sql(const char *conninfo, const char *sql)
{
    PGconn *c = PQconnectdb(conninfo);
    char *out = NULL;
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "pg_test_sql: connect: %s", PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
        out = strdup(st == PGRES_TUPLES_OK && PQntuples(r) > 0 && PQnfields(r) > 0
                         ? PQgetvalue(r, 0, 0)
                         : "");
    else
        fprintf(stderr, "pg_test_sql: %s: %s", sql, PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
    return out;
}

/* The conninfo `base` with its dbname replaced, as a key=value string. */
static char *with_dbname(const char *base, const char *dbname)
{
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(base, &perr);
    if (!opts) {
        fprintf(stderr, "bad TPV_TEST_PG_URI: %s", perr ? perr : "?");
        PQfreemem(perr);
        return NULL;
    }
    size_t cap = 1024, len = 0;
    char *out = malloc(cap);
    if (!out) {
        PQconninfoFree(opts);
        return NULL;
    }
    out[0] = '\0';
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        const char *v = strcmp(o->keyword, "dbname") == 0 ? dbname : o->val;
        if (!v)
            continue;
        /* Values are quoted, with ' and \ escaped, as libpq's key=value syntax wants. */
        char quoted[600];
        size_t q = 0;
        for (const char *s = v; *s && q + 3 < sizeof quoted; s++) {
            if (*s == '\'' || *s == '\\')
                quoted[q++] = '\\';
            quoted[q++] = *s;
        }
        quoted[q] = '\0';
        int n = snprintf(out + len, cap - len, "%s%s='%s'", len ? " " : "", o->keyword, quoted);
        if (n < 0 || (size_t)n >= cap - len) {
            free(out);
            PQconninfoFree(opts);
            return NULL;
        }
        len += (size_t)n;
    }
    PQconninfoFree(opts);
    return out;
}

char *pg_test_db_create(const char *tag)
{
    static int counter;
    const char *base = pg_test_uri();
    char name[64], sql[128];
    snprintf(name, sizeof name, "tpvt_%s_%d_%d", tag, (int)getpid(), __atomic_fetch_add(&counter, 1, __ATOMIC_SEQ_CST));
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", name);
    char *r = pg_test_sql(base, sql);
    if (!r)
        fail_msg("cannot create test database %s", name);
    free(r);
    char *ci = with_dbname(base, name);
    if (!ci)
        fail_msg("cannot build a conninfo for %s", name);
    return ci;
}

void pg_test_db_url(const char *conninfo, char *url, size_t cap)
{
    char *name = pg_test_sql(conninfo, "SELECT current_database()");
    const char *base = pg_test_uri();
    const char *q = strchr(base, '?');
    const char *slash = strstr(base, "@/");
    assert_non_null(name);
    assert_non_null(q);
    assert_non_null(slash);
    int len = snprintf(url, cap, "%.*s/%s%s", (int)(slash + 1 - base), base, name, q);
    assert_true(len > 0 && (size_t)len < cap);
    free(name);
}

void pg_test_db_drop(char *conninfo)
{
    if (!conninfo)
        return;
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &perr);
    PQfreemem(perr);
    const char *dbname = NULL;
    for (PQconninfoOption *o = opts; o && o->keyword; o++)
        if (strcmp(o->keyword, "dbname") == 0)
            dbname = o->val;
    if (dbname && strncmp(dbname, "tpvt_", 5) == 0) {
        char sql[128];
        snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", dbname);
        free(pg_test_sql(pg_test_uri(), sql));
    }
    PQconninfoFree(opts);
    free(conninfo);
}

int pg_test_server(const char *cmd)
{
    const char *root = getenv("TPV_SOURCE_ROOT");
    char line[1024];
    snprintf(line, sizeof line, "'%s/tests/support/pg_server.sh' %s '%s'", root ? root : ".", cmd,
             pg_test_uri());
    int rc = system(line);
    return rc == 0 ? 0 : -1;
}

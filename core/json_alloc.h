/* json_alloc.h: jansson allocation failures made visible to the core.
 *
 * jansson reports a failed allocation inside json_loadb mostly as a syntax error ("string or '}'
 * expected"), and json_object_set_new(o, k, json_real(v)) silently drops the key when json_real
 * fails.  The core therefore routes jansson's allocations (once per process, chaining to the
 * functions installed before, so blocks allocated earlier stay valid) through a counter of the
 * failures on each thread. */
#ifndef TPV_JSON_ALLOC_H
#define TPV_JSON_ALLOC_H

#include <jansson.h>
#include <stddef.h>

/* Installs the hook on the first call (thread-safe) and returns how many jansson allocations have
 * failed on the calling thread so far: compare the values before and after a piece of work. */
unsigned long tpv_json_alloc_failures(void);

/* JSON text of j (json_dumpb's flags), NUL-terminated and malloc'd (free()), or NULL when j is
 * NULL or memory ran out.  Use it instead of json_dumps: jansson 2.14's json_dumps drops an
 * object key whose buffer growth failed and returns the broken text as a success; this writes
 * into a buffer of the measured size, which cannot fail half-way. */
char *tpv_json_dump(const json_t *j, size_t flags);

#endif

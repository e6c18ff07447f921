/* json_alloc.c: the jansson allocation hook of json_alloc.h (the previous malloc/free pair plus a
 * per-thread count of failed allocations) and a dump that cannot lose keys. */
#include "core/json_alloc.h"

#include <jansson.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>

static json_malloc_t prev_malloc;
static json_free_t prev_free;
static _Thread_local unsigned long failures;
static pthread_once_t install_once = PTHREAD_ONCE_INIT;

static void *hook_malloc(size_t size)
{
    void *p = prev_malloc(size);
    failures += p == NULL;
    return p;
}

static void hook_free(void *ptr)
{
    prev_free(ptr);
}

static void install(void)
{
    json_get_alloc_funcs(&prev_malloc, &prev_free);
    json_set_alloc_funcs(hook_malloc, hook_free);
}

unsigned long tpv_json_alloc_failures(void)
{
    pthread_once(&install_once, install);
    return failures;
}

char *tpv_json_dump(const json_t *j, size_t flags)
{
    size_t need = j ? json_dumpb(j, NULL, 0, flags) : 0;
    char *text = need ? malloc(need + 1) : NULL;
    if (text && json_dumpb(j, text, need, flags) != need) {
        free(text);
        return NULL;
    }
    if (text)
        text[need] = '\0';
    return text;
}

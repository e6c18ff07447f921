/* fault_alloc.c: the allocation hook behind fault_alloc.h: __wrap_* functions for the linker's
 * --wrap, an allocation counter that fails the Nth call, and a set of the live blocks it handed
 * out (open addressing, backward-shift deletion) for the leak count. */
#include "tests/support/fault_alloc.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The real functions (resolved by --wrap to the libc or sanitizer symbols) and our wrappers. */
void *__real_malloc(size_t size);
void *__real_calloc(size_t nmemb, size_t size);
void *__real_realloc(void *ptr, size_t size);
void __real_free(void *ptr);
char *__real_strdup(const char *s);
char *__real_strndup(const char *s, size_t n);
int __real_posix_memalign(void **memptr, size_t alignment, size_t size);
void *__real_aligned_alloc(size_t alignment, size_t size);
void *__wrap_malloc(size_t size);
void *__wrap_calloc(size_t nmemb, size_t size);
void *__wrap_realloc(void *ptr, size_t size);
void __wrap_free(void *ptr);
char *__wrap_strdup(const char *s);
char *__wrap_strndup(const char *s, size_t n);
int __wrap_posix_memalign(void **memptr, size_t alignment, size_t size);
void *__wrap_aligned_alloc(size_t alignment, size_t size);

/* Live blocks.  Stored complemented so that LeakSanitizer, which scans globals for pointers, does
 * not take a leaked block for a reachable one. */
#define SET_BITS 20
#define SET_CAP ((size_t)1 << SET_BITS)
#define SET_MASK (SET_CAP - 1)
static uintptr_t set_slots[SET_CAP]; /* 0 = empty */
static size_t set_count;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long calls;
static unsigned long fail_at;   /* 0 = never */
static bool fail_persistent;
static bool fired;

static size_t slot_of(uintptr_t key)
{
    return (size_t)((key * UINT64_C(0x9E3779B97F4A7C15)) >> (64 - SET_BITS));
}

static void set_add(const void *p)
{
    uintptr_t key = ~(uintptr_t)p;
    if (set_count >= SET_CAP - SET_CAP / 4) {
        fprintf(stderr, "fault_alloc: more than %zu live blocks\n", set_count);
        abort();
    }
    size_t i = slot_of(key);
    while (set_slots[i] != 0)
        i = (i + 1) & SET_MASK;
    set_slots[i] = key;
    set_count++;
}

/* Removes p when the hook handed it out; false for a pointer it does not know. */
static bool set_remove(const void *p)
{
    uintptr_t key = ~(uintptr_t)p;
    size_t i = slot_of(key);
    while (set_slots[i] != key) {
        if (set_slots[i] == 0)
            return false;
        i = (i + 1) & SET_MASK;
    }
    /* Backward shift: move later entries of the run into the hole when their home slot allows. */
    for (size_t j = i;;) {
        j = (j + 1) & SET_MASK;
        if (set_slots[j] == 0)
            break;
        size_t home = slot_of(set_slots[j]);
        bool stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
        if (stays)
            continue;
        set_slots[i] = set_slots[j];
        i = j;
    }
    set_slots[i] = 0;
    set_count--;
    return true;
}

/* Counts one allocation; true when this one must fail. */
static bool should_fail(void)
{
    calls++;
    bool f = fail_at != 0 && (calls == fail_at || (fail_persistent && calls > fail_at));
    fired |= f;
    return f;
}

static void *tracked(void *p)
{
    if (p)
        set_add(p);
    return p;
}

void *__wrap_malloc(size_t size)
{
    pthread_mutex_lock(&lock);
    void *p = should_fail() ? NULL : tracked(__real_malloc(size));
    pthread_mutex_unlock(&lock);
    if (!p)
        errno = ENOMEM;
    return p;
}

void *__wrap_calloc(size_t nmemb, size_t size)
{
    pthread_mutex_lock(&lock);
    void *p = should_fail() ? NULL : tracked(__real_calloc(nmemb, size));
    pthread_mutex_unlock(&lock);
    if (!p)
        errno = ENOMEM;
    return p;
}

void *__wrap_realloc(void *ptr, size_t size)
{
    pthread_mutex_lock(&lock);
    void *p = NULL;
    if (!should_fail()) {
        p = __real_realloc(ptr, size);
        if (p || size == 0) { /* moved, or freed by realloc(ptr, 0) */
            if (ptr)
                set_remove(ptr);
            tracked(p);
        }
    }
    pthread_mutex_unlock(&lock);
    if (!p && size != 0)
        errno = ENOMEM;
    return p;
}

void __wrap_free(void *ptr)
{
    if (!ptr)
        return;
    pthread_mutex_lock(&lock);
    set_remove(ptr); /* a block from libc (realpath, getline) is simply not in the set */
    pthread_mutex_unlock(&lock);
    __real_free(ptr);
}

char *__wrap_strdup(const char *s)
{
    pthread_mutex_lock(&lock);
    char *p = should_fail() ? NULL : tracked(__real_strdup(s));
    pthread_mutex_unlock(&lock);
    if (!p)
        errno = ENOMEM;
    return p;
}

char *__wrap_strndup(const char *s, size_t n)
{
    pthread_mutex_lock(&lock);
    char *p = should_fail() ? NULL : tracked(__real_strndup(s, n));
    pthread_mutex_unlock(&lock);
    if (!p)
        errno = ENOMEM;
    return p;
}

int __wrap_posix_memalign(void **memptr, size_t alignment, size_t size)
{
    pthread_mutex_lock(&lock);
    int rc = ENOMEM;
    if (!should_fail()) {
        rc = __real_posix_memalign(memptr, alignment, size);
        if (rc == 0)
            tracked(*memptr);
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

void *__wrap_aligned_alloc(size_t alignment, size_t size)
{
    pthread_mutex_lock(&lock);
    void *p = should_fail() ? NULL : tracked(__real_aligned_alloc(alignment, size));
    pthread_mutex_unlock(&lock);
    if (!p)
        errno = ENOMEM;
    return p;
}

void fault_alloc_install(void)
{
    json_set_alloc_funcs(__wrap_malloc, __wrap_free);
}

void fault_alloc_arm(unsigned long n, bool persistent)
{
    pthread_mutex_lock(&lock);
    calls = 0;
    fail_at = n;
    fail_persistent = persistent;
    fired = false;
    pthread_mutex_unlock(&lock);
}

unsigned long fault_alloc_calls(void)
{
    pthread_mutex_lock(&lock);
    unsigned long n = calls;
    pthread_mutex_unlock(&lock);
    return n;
}

bool fault_alloc_fired(void)
{
    pthread_mutex_lock(&lock);
    bool f = fired;
    pthread_mutex_unlock(&lock);
    return f;
}

long fault_alloc_live(void)
{
    pthread_mutex_lock(&lock);
    long n = (long)set_count;
    pthread_mutex_unlock(&lock);
    return n;
}

int fault_fd_count(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    return n - 1; /* the directory's own descriptor */
}

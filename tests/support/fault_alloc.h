/* fault_alloc.h: allocation fault injection for tests, as SQLite's test_malloc.c does it: the Nth
 * allocation fails, and the test counts the allocations still live and the file descriptors still
 * open afterwards as failures.
 *
 * How calls reach the hook: a test executable is linked with
 *   -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=free,--wrap=strdup,
 *   --wrap=posix_memalign,--wrap=aligned_alloc
 * (FAULT_ALLOC_LINK_ARGS in tests/meson.build), so every call from its own objects and from the
 * static libraries it links (libtpvcore, libtpvstore, ...) goes through __wrap_*.  Shared libraries
 * (libc, OpenBLAS, SQLite) keep their own allocator; jansson is routed through the hook by
 * fault_alloc_install() (json_set_alloc_funcs).  Pointers the hook did not hand out (libc's
 * realpath, getline, ...) are passed through to the real free untouched, so mixing is safe.
 *
 * Works under AddressSanitizer: __real_malloc is the interposed malloc of the sanitizer runtime, so
 * ASan still sees every block (overflows, use after free, leaks).  Thread-safe (one mutex). */
#ifndef TPV_TEST_FAULT_ALLOC_H
#define TPV_TEST_FAULT_ALLOC_H

#include <stdbool.h>
#include <stddef.h>

/* Routes jansson's allocations through the hook.  Call once, before the first jansson call. */
void fault_alloc_install(void);

/* Resets the allocation counter; the `n`th hooked allocation from now fails (returns NULL with
 * errno ENOMEM); with `persistent` every one after it fails too.  n = 0 disarms: nothing fails. */
void fault_alloc_arm(unsigned long n, bool persistent);

/* Hooked allocations (malloc, calloc, realloc, strdup, posix_memalign, aligned_alloc, jansson)
 * since the last fault_alloc_arm(), the failed ones included. */
unsigned long fault_alloc_calls(void);

/* Whether an allocation failed on purpose since the last fault_alloc_arm(). */
bool fault_alloc_fired(void);

/* Blocks handed out by the hook and not yet freed (a leak check: compare before and after). */
long fault_alloc_live(void);

/* Open file descriptors of this process (entries of /proc/self/fd), or -1 when unreadable. */
int fault_fd_count(void);

#endif

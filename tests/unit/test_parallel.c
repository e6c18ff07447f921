/* test_parallel.c: the thread split (core/parallel.h): every part runs once, back to back over
 * many splits; parts that wait for each other run at the same time on distinct threads (so the
 * helpers take parts while the caller runs its own); nested splits run inline; callers on several
 * threads each get their own helpers; a caller's helpers end with it; BLAS is single-threaded
 * inside a split and restored after. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <cblas.h>
#include <dirent.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/parallel.h"

#define PARTS_MAX 8

struct record {
    atomic_int runs[PARTS_MAX];
    atomic_int started;     /* parts that have begun */
    int rendezvous;         /* > 0: every part waits until that many have begun */
    atomic_int timed_out;
    pthread_t who[PARTS_MAX];
    int nthreads_seen[PARTS_MAX];
    int blas_threads[PARTS_MAX];
};

/* Waits up to 5 s until r->rendezvous parts have begun: only parts running at once get there. */
static void meet(struct record *r)
{
    atomic_fetch_add(&r->started, 1);
    for (int i = 0; r->rendezvous > 0 && atomic_load(&r->started) < r->rendezvous; i++) {
        if (i == 500000) {
            atomic_store(&r->timed_out, 1);
            return;
        }
        usleep(10);
    }
}

static void record_part(void *ctx, int t, int nt)
{
    struct record *r = ctx;
    meet(r);
    atomic_fetch_add(&r->runs[t], 1);
    r->who[t] = pthread_self();
    r->nthreads_seen[t] = nt;
    r->blas_threads[t] = openblas_get_num_threads();
}

/* Threads of this process, from /proc/self/task. */
static int thread_count(void)
{
    DIR *d = opendir("/proc/self/task");
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

/* The thread count once it has settled at `want` (a joined thread's task may linger in /proc for
 * a moment after pthread_join), or what it is after 2 s. */
static int settled_thread_count(int want)
{
    int n = thread_count();
    for (int i = 0; i < 200 && n != want; i++) {
        usleep(10000);
        n = thread_count();
    }
    return n;
}

static void test_parts_at_once_on_distinct_threads(void **state)
{
    (void)state;
    openblas_set_num_threads(4);
    for (int nt = 1; nt <= PARTS_MAX; nt++) {
        struct record r;
        memset(&r, 0, sizeof r);
        r.rendezvous = nt;
        tpv_parallel_run(nt, record_part, &r);
        assert_int_equal(atomic_load(&r.timed_out), 0);
        for (int t = 0; t < nt; t++) {
            assert_int_equal(atomic_load(&r.runs[t]), 1);
            assert_int_equal(r.nthreads_seen[t], nt);
            assert_int_equal(r.blas_threads[t], nt > 1 ? 1 : 4);
        }
        for (int t = nt; t < PARTS_MAX; t++)
            assert_int_equal(atomic_load(&r.runs[t]), 0);
        assert_true(pthread_equal(r.who[0], pthread_self()));
        for (int a = 0; a < nt; a++)
            for (int b = a + 1; b < nt; b++)
                assert_false(pthread_equal(r.who[a], r.who[b]));
        assert_int_equal(openblas_get_num_threads(), 4);
    }
    openblas_set_num_threads(1);
}

/* Many short splits back to back (as kernels issue them per layer), with fewer parts than
 * helpers in between: no part is lost or run twice, and the helpers are reused, not restarted. */
struct counter {
    atomic_long sum;
};

static void add_part(void *ctx, int t, int nt)
{
    struct counter *c = ctx;
    atomic_fetch_add(&c->sum, (long)(t + 1) * 1000 + nt);
}

static void test_back_to_back_splits(void **state)
{
    (void)state;
    tpv_parallel_run(4, add_part, &(struct counter){ 0 }); /* starts the helpers */
    int threads = thread_count();
    struct counter c = { 0 };
    long want = 0;
    for (int i = 0; i < 5000; i++) {
        int nt = 1 + i % 4;
        tpv_parallel_run(nt, add_part, &c);
        for (int t = 0; t < nt; t++)
            want += (long)(t + 1) * 1000 + nt;
    }
    assert_int_equal(atomic_load(&c.sum), want);
    assert_int_equal(settled_thread_count(threads), threads);
}

/* Parts that do not wait for each other: each still runs exactly once, whoever takes it (the
 * caller takes those no helper has claimed yet). */
static void test_each_part_once(void **state)
{
    (void)state;
    for (int round = 0; round < 1000; round++) {
        int nt = 2 + round % (PARTS_MAX - 1);
        struct record r;
        memset(&r, 0, sizeof r);
        tpv_parallel_run(nt, record_part, &r);
        for (int t = 0; t < PARTS_MAX; t++)
            assert_int_equal(atomic_load(&r.runs[t]), t < nt ? 1 : 0);
        assert_true(pthread_equal(r.who[0], pthread_self()));
    }
}

/* A split inside a part runs its parts one after another on that part's thread. */
struct nested {
    struct record outer;
    struct record inner[PARTS_MAX];
};

static void outer_part(void *ctx, int t, int nt)
{
    (void)nt;
    struct nested *n = ctx;
    meet(&n->outer);
    tpv_parallel_run(3, record_part, &n->inner[t]);
}

static void test_nested_split_runs_inline(void **state)
{
    (void)state;
    struct nested n;
    memset(&n, 0, sizeof n);
    n.outer.rendezvous = 2;
    tpv_parallel_run(2, outer_part, &n);
    assert_int_equal(atomic_load(&n.outer.timed_out), 0);
    for (int o = 0; o < 2; o++)
        for (int t = 0; t < 3; t++) {
            assert_int_equal(atomic_load(&n.inner[o].runs[t]), 1);
            assert_true(pthread_equal(n.inner[o].who[t], n.inner[o].who[0]));
        }
    assert_false(pthread_equal(n.inner[0].who[0], n.inner[1].who[0]));
}

/* Two callers splitting at once (two jobs' workers): each part of each split runs once. */
static void *caller_main(void *p)
{
    struct counter *c = p;
    for (int i = 0; i < 5000; i++)
        tpv_parallel_run(2 + i % 2, add_part, c);
    return NULL;
}

static void test_concurrent_callers(void **state)
{
    (void)state;
    struct counter c[2] = { { 0 }, { 0 } };
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, caller_main, &c[i]), 0);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    long want = 0;
    for (int i = 0; i < 5000; i++) {
        int nt = 2 + i % 2;
        for (int t = 0; t < nt; t++)
            want += (long)(t + 1) * 1000 + nt;
    }
    assert_int_equal(atomic_load(&c[0].sum), want);
    assert_int_equal(atomic_load(&c[1].sum), want);
}

/* A caller's helpers end with it: a thread that split 4 ways leaves no thread behind. */
static void *split_once_main(void *p)
{
    tpv_parallel_run(4, add_part, p);
    return NULL;
}

static void test_helpers_end_with_their_caller(void **state)
{
    (void)state;
    int before = thread_count();
    for (int round = 0; round < 20; round++) {
        struct counter c = { 0 };
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, split_once_main, &c), 0);
        assert_int_equal(pthread_join(th, NULL), 0);
        assert_int_equal(atomic_load(&c.sum), 1004 + 2004 + 3004 + 4004);
    }
    /* the caller's key destructor joined its helpers as the caller exited */
    assert_int_equal(settled_thread_count(before), before);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parts_at_once_on_distinct_threads),
        cmocka_unit_test(test_each_part_once),
        cmocka_unit_test(test_back_to_back_splits),
        cmocka_unit_test(test_nested_split_runs_inline),
        cmocka_unit_test(test_concurrent_callers),
        cmocka_unit_test(test_helpers_end_with_their_caller),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* parallel.c: the thread split (parallel.h): OpenBLAS kept single-threaded inside a split, and a
 * pool of parked helpers per calling thread. */
#include "core/parallel.h"

#include <cblas.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

/* BLAS runs single-threaded while any split of tpv_parallel_run is active (the split is the
 * parallelism; OpenBLAS's own threads on top would oversubscribe the job's cores).  OpenBLAS's
 * setting is process-wide, so the splits of concurrent jobs share one count: the first to start
 * saves the setting and sets 1, the last to end restores it.  tpv_linalg_threads answers the
 * saved setting meanwhile, so a job sizes its splits by its configured threads. */
static pthread_mutex_t blas_mu = PTHREAD_MUTEX_INITIALIZER;
static int blas_splits;
static int blas_saved;
static _Thread_local bool in_split;

static int clamp_threads(int t)
{
    return t < 1 ? 1 : t > 64 ? 64 : t;
}

int tpv_linalg_threads(void)
{
    pthread_mutex_lock(&blas_mu);
    int t = blas_splits > 0 ? blas_saved : openblas_get_num_threads();
    pthread_mutex_unlock(&blas_mu);
    return clamp_threads(t);
}

static void blas_single_begin(void)
{
    pthread_mutex_lock(&blas_mu);
    if (blas_splits++ == 0) {
        blas_saved = openblas_get_num_threads();
        if (blas_saved != 1)
            openblas_set_num_threads(1);
    }
    pthread_mutex_unlock(&blas_mu);
}

static void blas_single_end(void)
{
    pthread_mutex_lock(&blas_mu);
    if (--blas_splits == 0 && blas_saved != 1)
        openblas_set_num_threads(blas_saved);
    pthread_mutex_unlock(&blas_mu);
}

/* The helpers of one calling thread (a job's worker, a test, the CLI): started on its first
 * split, parked between splits, joined when the calling thread exits (pool_key's destructor).
 *
 * Why a pool: starting a thread per split cost 30-50 us here, a fifth of a small split's work.
 * A parked helper that is still spinning takes a part within about a microsecond; one that has
 * gone to sleep can take 70-90 us to wake on this kind of VM.  So parts are not bound to
 * helpers: part 0 runs on the caller, and the others go to whoever claims them first, the
 * caller included once it is done with part 0.  A late helper then costs nothing but its wake,
 * and a split is never slower than running its parts on the caller.  Each part still computes
 * the same range (fn(ctx, t, nthreads)), so results do not depend on who ran it. */
#define POOL_MAX 63
#define SPIN_NS 50000 /* how long a parked helper or the waiting caller spins before it sleeps */

/* One split, on the caller's stack; pool.cur points to it while parts may be claimed. */
struct split {
    void (*fn)(void *ctx, int t, int nthreads);
    void *ctx;
    int nthreads;
    int next;             /* the next unclaimed part (under the pool's mu) */
    atomic_int remaining; /* parts 1 .. nthreads - 1 not finished yet */
};

struct helper {
    struct pool *pool;
    pthread_t th;
    pthread_cond_t go;
    atomic_uint_fast64_t gen; /* moved to wake this helper */
};

struct pool {
    pthread_mutex_t mu;
    pthread_cond_t done;     /* the caller: the last part of a split finished */
    struct helper *helper[POOL_MAX];
    int helpers;             /* started */
    bool ready;              /* mu and done are initialised */
    bool quit;
    struct split *cur;       /* the split whose parts may be claimed, or NULL */
};

static _Thread_local struct pool caller_pool;
static pthread_key_t pool_key;
static pthread_once_t pool_key_once = PTHREAD_ONCE_INIT;

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Spins up to SPIN_NS until *gen differs from seen; true if it did. */
static bool spin_for_gen(const atomic_uint_fast64_t *gen, uint64_t seen)
{
    uint64_t t0 = mono_ns();
    for (unsigned i = 0;; i++) {
        if (atomic_load_explicit(gen, memory_order_acquire) != seen)
            return true;
        cpu_relax();
        if ((i & 63) == 63 && mono_ns() - t0 > SPIN_NS)
            return false;
    }
}

/* Claims and runs parts of the current split until none is left.  A part's split stays alive
 * until its `remaining` reaches 0, which only its last finished part does. */
static void run_claimed_parts(struct pool *pl)
{
    for (;;) {
        pthread_mutex_lock(&pl->mu);
        struct split *sp = pl->cur;
        int part = sp && sp->next < sp->nthreads ? sp->next++ : -1;
        pthread_mutex_unlock(&pl->mu);
        if (part < 0)
            return;
        sp->fn(sp->ctx, part, sp->nthreads);
        if (atomic_fetch_sub_explicit(&sp->remaining, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&pl->mu);
            pthread_cond_signal(&pl->done);
            pthread_mutex_unlock(&pl->mu);
        }
    }
}

static void *helper_main(void *p)
{
    struct helper *h = p;
    struct pool *pl = h->pool;
    in_split = true; /* a helper only runs parts: a split inside one runs inline */
    uint64_t seen = 0;
    for (;;) {
        if (!spin_for_gen(&h->gen, seen)) {
            pthread_mutex_lock(&pl->mu);
            while (atomic_load(&h->gen) == seen)
                pthread_cond_wait(&h->go, &pl->mu);
            pthread_mutex_unlock(&pl->mu);
        }
        seen = atomic_load_explicit(&h->gen, memory_order_acquire);
        pthread_mutex_lock(&pl->mu);
        bool quit = pl->quit;
        pthread_mutex_unlock(&pl->mu);
        if (quit)
            return NULL;
        run_claimed_parts(pl);
    }
}

/* Wakes helper h (pl->mu held). */
static void helper_wake(struct helper *h)
{
    atomic_fetch_add_explicit(&h->gen, 1, memory_order_release);
    pthread_cond_signal(&h->go);
}

/* At the calling thread's exit: its helpers end and are joined. */
static void pool_destroy(void *p)
{
    struct pool *pl = p;
    pthread_mutex_lock(&pl->mu);
    pl->quit = true;
    for (int t = 0; t < pl->helpers; t++)
        helper_wake(pl->helper[t]);
    pthread_mutex_unlock(&pl->mu);
    for (int t = 0; t < pl->helpers; t++) {
        pthread_join(pl->helper[t]->th, NULL);
        pthread_cond_destroy(&pl->helper[t]->go);
        free(pl->helper[t]);
    }
    pthread_cond_destroy(&pl->done);
    pthread_mutex_destroy(&pl->mu);
    pl->helpers = 0;
    pl->ready = false;
}

static void pool_key_create(void)
{
    (void)pthread_key_create(&pool_key, pool_destroy);
}

static bool pool_init(struct pool *pl)
{
    pthread_once(&pool_key_once, pool_key_create);
    if (pthread_mutex_init(&pl->mu, NULL) != 0)
        return false;
    if (pthread_cond_init(&pl->done, NULL) != 0) {
        pthread_mutex_destroy(&pl->mu);
        return false;
    }
    pl->ready = true;
    pthread_setspecific(pool_key, pl);
    return true;
}

static bool helper_add(struct pool *pl)
{
    struct helper *h = calloc(1, sizeof *h);
    if (!h)
        return false;
    h->pool = pl;
    if (pthread_cond_init(&h->go, NULL) != 0) {
        free(h);
        return false;
    }
    if (pthread_create(&h->th, NULL, helper_main, h) != 0) {
        pthread_cond_destroy(&h->go);
        free(h);
        return false;
    }
    pl->helper[pl->helpers++] = h;
    return true;
}

/* The calling thread's pool with `want` helpers, or fewer when threads cannot be created (the
 * caller then runs the parts nobody claims); NULL if it cannot be set up at all. */
static struct pool *pool_get(int want)
{
    struct pool *pl = &caller_pool;
    if (!pl->ready && !pool_init(pl))
        return NULL;
    while (pl->helpers < want && pl->helpers < POOL_MAX && helper_add(pl))
        ;
    return pl;
}

/* Waits until every part of sp but the caller's has finished. */
static void split_wait(struct pool *pl, struct split *sp)
{
    uint64_t t0 = mono_ns();
    for (unsigned i = 0; atomic_load_explicit(&sp->remaining, memory_order_acquire) > 0; i++) {
        cpu_relax();
        if ((i & 63) == 63 && mono_ns() - t0 > SPIN_NS)
            break;
    }
    pthread_mutex_lock(&pl->mu);
    while (atomic_load(&sp->remaining) > 0)
        pthread_cond_wait(&pl->done, &pl->mu);
    pl->cur = NULL;
    pthread_mutex_unlock(&pl->mu);
}

/* Parts one after another on this thread: a nested split, or no pool. */
static void run_inline(int nthreads, void (*fn)(void *ctx, int t, int nthreads), void *ctx)
{
    for (int t = 0; t < nthreads; t++)
        fn(ctx, t, nthreads);
}

void tpv_parallel_run(int nthreads, void (*fn)(void *ctx, int t, int nthreads), void *ctx)
{
    if (nthreads <= 1) {
        fn(ctx, 0, 1);
        return;
    }
    if (nthreads > POOL_MAX + 1)
        nthreads = POOL_MAX + 1;
    if (in_split) {
        run_inline(nthreads, fn, ctx);
        return;
    }
    blas_single_begin();
    in_split = true;
    struct pool *pl = pool_get(nthreads - 1);
    if (!pl) {
        run_inline(nthreads, fn, ctx);
    } else {
        struct split sp = { fn, ctx, nthreads, 1, nthreads - 1 };
        int wake = pl->helpers < nthreads - 1 ? pl->helpers : nthreads - 1;
        pthread_mutex_lock(&pl->mu);
        pl->cur = &sp;
        for (int t = 0; t < wake; t++)
            helper_wake(pl->helper[t]);
        pthread_mutex_unlock(&pl->mu);
        fn(ctx, 0, nthreads);
        run_claimed_parts(pl);
        split_wait(pl, &sp);
    }
    in_split = false;
    blas_single_end();
}

void tpv_split_range(uint64_t n, uint64_t align, int t, int nthreads, uint64_t *first,
                     uint64_t *count)
{
    align = align ? align : 1;
    uint64_t chunks = n / align, ut = (uint64_t)t, nt = (uint64_t)nthreads;
    uint64_t q = chunks / nt, r = chunks % nt;
    *first = (ut * q + (ut < r ? ut : r)) * align;
    *count = (q + (ut < r ? 1 : 0)) * align;
    if (ut + 1 == nt)
        *count += n % align; /* the remainder stays at the end, as in the whole */
}

static _Atomic double split_min_flops = TPV_SPLIT_MIN_FLOPS;

void tpv_split_set_min_flops(double flops)
{
    split_min_flops = flops > 0 ? flops : 0;
}

int tpv_split_threads(double flops)
{
    int t = tpv_linalg_threads();
    double min = split_min_flops;
    if (min > 0 && flops / min < t)
        t = (int)(flops / min);
    return t < 1 ? 1 : t;
}

struct par_for {
    uint64_t n;
    void (*fn)(void *ctx, uint64_t first, uint64_t count);
    void *ctx;
};

static void par_for_part(void *ctx, int t, int nt)
{
    const struct par_for *f = ctx;
    uint64_t first, count;
    tpv_split_range(f->n, TPV_SPLIT_ALIGN, t, nt, &first, &count);
    if (count)
        f->fn(f->ctx, first, count);
}

void tpv_parallel_for(uint64_t n, double flops_per_item,
                      void (*fn)(void *ctx, uint64_t first, uint64_t count), void *ctx)
{
    if (n == 0)
        return;
    struct par_for f = { n, fn, ctx };
    int nt = tpv_split_threads((double)n * flops_per_item);
    if ((uint64_t)nt > n)
        nt = (int)n;
    tpv_parallel_run(nt, par_for_part, &f);
}

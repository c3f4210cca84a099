/* ff_thread.c - fflib's own worker threads.
 *
 * OpenBLAS always runs single-threaded; fflib parallelises itself: a large GEMM is split into
 * independent row or column panels (ff_sgemm), and a convolution into groups of images
 * (ff_conv.c).  Workers sleep on a condition variable between jobs, so an idle fflib never
 * spins on a core another process wants (OpenBLAS's own workers busy-wait after every call,
 * which made two threads slower than one on small convolution GEMMs of a shared machine).
 *
 * The workers are created once, when the thread count is first raised above one, never in a
 * kernel's hot path.  A job started from inside a job, or while another thread of the process
 * runs one, runs inline on the calling thread.  After fork() the child starts with no workers.
 *
 * Helping: the parts of a job started with ff_parallel_run_helped (the pipeline's stages) may
 * each post one nested job at a time, of work whose result does not depend on how it is split
 * (GEMM panels, elementwise ranges): the posting thread runs its parts, and a thread that has
 * finished its own parts takes the others instead of waiting.  The split is the same whether
 * help comes or not, so results never depend on timing.
 */
#include <pthread.h>
#include "fflib.h"

#define FF_MAX_THREADS 64

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work_cv = PTHREAD_COND_INITIALIZER;
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;
static pthread_mutex_t run_mu = PTHREAD_MUTEX_INITIALIZER; /* one job at a time */
static int num_threads = 1;     /* the caller plus num_threads - 1 workers */
static int started = 0;         /* workers created */
static unsigned long job_gen = 0;
static ff_task_fn job_fn = NULL;
static void *job_ctx = NULL;
static int job_parts = 0, job_next = 0, job_pending = 0, job_helped = 0;
static _Thread_local int in_job = 0;
static int atfork_set = 0;
/* the one nested job open for help (help_fn NULL: none), under pool_mu */
static pthread_cond_t help_cv = PTHREAD_COND_INITIALIZER;
static ff_task_fn help_fn = NULL;
static void *help_ctx = NULL;
static int help_parts = 0, help_next = 0, help_pending = 0;
static _Thread_local int can_post = 0;   /* running a part of a helped job */

/* Runs parts of the current job until none is left.  Called with pool_mu held; returns with it held. */
static void drain(void) {
    while (job_next < job_parts) {
        int p = job_next++;
        ff_task_fn fn = job_fn;
        void *ctx = job_ctx;
        int n = job_parts;
        can_post = job_helped;
        pthread_mutex_unlock(&pool_mu);
        fn(ctx, p, n);
        can_post = 0;
        pthread_mutex_lock(&pool_mu);
        if (--job_pending == 0) pthread_cond_signal(&done_cv);
    }
}

static int help_open(void) { return help_fn != NULL && help_next < help_parts; }

/* Runs parts of the open nested job until none is left to take.  Called with pool_mu held. */
static void drain_help(void) {
    while (help_open()) {
        int p = help_next++;
        ff_task_fn fn = help_fn;
        void *ctx = help_ctx;
        int n = help_parts, saved_job = in_job, saved_post = can_post;
        pthread_mutex_unlock(&pool_mu);
        in_job = 1;
        can_post = 0;
        fn(ctx, p, n);
        in_job = saved_job;
        can_post = saved_post;
        pthread_mutex_lock(&pool_mu);
        if (--help_pending == 0) pthread_cond_broadcast(&help_cv);
    }
}

/* A nested job from a part of a helped job: open it for help and run parts until all are
 * done.  Returns 0 (nothing run) when another part's nested job holds the slot. */
static int post_for_help(ff_task_fn fn, void *ctx, int nparts) {
    pthread_mutex_lock(&pool_mu);
    if (help_fn != NULL) {
        pthread_mutex_unlock(&pool_mu);
        return 0;
    }
    help_fn = fn;
    help_ctx = ctx;
    help_parts = nparts;
    help_next = 0;
    help_pending = nparts;
    pthread_cond_broadcast(&work_cv);   /* idle workers */
    pthread_cond_broadcast(&done_cv);   /* the caller, if it waits for the other parts */
    drain_help();
    while (help_pending > 0) pthread_cond_wait(&help_cv, &pool_mu);
    help_fn = NULL;
    help_ctx = NULL;
    help_parts = 0;
    pthread_mutex_unlock(&pool_mu);
    return 1;
}

static void *worker(void *arg) {
    (void)arg;
    in_job = 1;
    pthread_mutex_lock(&pool_mu);
    unsigned long seen = job_gen;
    for (;;) {
        while (job_gen == seen && !help_open()) pthread_cond_wait(&work_cv, &pool_mu);
        if (job_gen != seen) {
            seen = job_gen;
            drain();
        } else {
            drain_help();
        }
    }
    return NULL;
}

static void after_fork_child(void) {
    /* the workers do not exist in the child; the locks are re-created unlocked */
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t c = PTHREAD_COND_INITIALIZER;
    pool_mu = m;
    run_mu = m;
    work_cv = c;
    done_cv = c;
    help_cv = c;
    started = 0;
    job_parts = job_next = job_pending = 0;
    help_fn = NULL;
    help_parts = help_next = help_pending = 0;
}

/* Creates workers up to num_threads - 1; returns how many exist. */
static int ensure_workers(void) {
    if (!atfork_set) {
        pthread_atfork(NULL, NULL, after_fork_child);
        atfork_set = 1;
    }
    while (started < num_threads - 1) {
        pthread_t t;
        pthread_attr_t attr;
        if (pthread_attr_init(&attr) != 0) break;
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&t, &attr, worker, NULL);
        pthread_attr_destroy(&attr);
        if (rc != 0) break; /* fewer workers: the job still runs, on fewer threads */
        started++;
    }
    return started;
}

void ff_set_num_threads(int n) {
    if (n < 1) n = 1;
    if (n > FF_MAX_THREADS) n = FF_MAX_THREADS;
    ff_blas_set_threads(1);
    pthread_mutex_lock(&run_mu);
    num_threads = n;
    if (n > 1) {
        pthread_mutex_lock(&pool_mu);
        ensure_workers();
        pthread_mutex_unlock(&pool_mu);
    }
    pthread_mutex_unlock(&run_mu);
}

int ff_get_num_threads(void) { return num_threads; }

int ff_parallel_width(void) { return in_job ? 1 : num_threads; }

int ff_parallel_split_width(void) { return in_job && !can_post ? 1 : num_threads; }

static void run_job(ff_task_fn fn, void *ctx, int nparts, int helped) {
    if (nparts <= 0) return;
    if (in_job && can_post && nparts > 1 && post_for_help(fn, ctx, nparts)) return;
    if (nparts == 1 || num_threads <= 1 || in_job || pthread_mutex_trylock(&run_mu) != 0) {
        int saved = in_job;
        in_job = 1;
        for (int p = 0; p < nparts; p++) fn(ctx, p, nparts);
        in_job = saved;
        return;
    }
    int saved_post = can_post;
    pthread_mutex_lock(&pool_mu);
    if (started == 0 && ensure_workers() == 0) { /* no worker could be created */
        pthread_mutex_unlock(&pool_mu);
        pthread_mutex_unlock(&run_mu);
        in_job = 1;
        for (int p = 0; p < nparts; p++) fn(ctx, p, nparts);
        in_job = 0;
        return;
    }
    job_fn = fn;
    job_ctx = ctx;
    job_parts = nparts;
    job_next = 0;
    job_pending = nparts;
    job_helped = helped;
    job_gen++;
    pthread_cond_broadcast(&work_cv);
    in_job = 1;
    drain();
    while (job_pending > 0) {
        if (help_open()) drain_help();
        else pthread_cond_wait(&done_cv, &pool_mu);
    }
    in_job = 0;
    can_post = saved_post;
    job_fn = NULL;
    job_parts = 0;
    pthread_mutex_unlock(&pool_mu);
    pthread_mutex_unlock(&run_mu);
}

void ff_parallel_run(ff_task_fn fn, void *ctx, int nparts) { run_job(fn, ctx, nparts, 0); }

void ff_parallel_run_helped(ff_task_fn fn, void *ctx, int nparts) { run_job(fn, ctx, nparts, 1); }

typedef struct {
    ff_range_fn fn;
    void *ctx;
    size_t n;
} range_job;

static void range_part(void *ctx, int p, int nparts) {
    const range_job *j = ctx;
    size_t lo = j->n * (size_t)p / (size_t)nparts, hi = j->n * (size_t)(p + 1) / (size_t)nparts;
    if (hi > lo) j->fn(j->ctx, lo, hi);
}

void ff_parallel_for(ff_range_fn fn, void *ctx, size_t n, size_t min_per_part) {
    if (n == 0) return;
    size_t parts = (size_t)ff_parallel_split_width();
    if (min_per_part < 1) min_per_part = 1;
    if (parts > n / min_per_part) parts = n / min_per_part;
    if (parts <= 1) {
        fn(ctx, 0, n);
        return;
    }
    range_job j = {fn, ctx, n};
    ff_parallel_run(range_part, &j, (int)parts);
}

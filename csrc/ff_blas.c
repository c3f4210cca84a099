/* ff_blas.c - the one place fflib touches BLAS: OpenBLAS when built with it, a plain loop
 * otherwise (so the core also builds where no BLAS exists).  OpenBLAS runs single-threaded;
 * a GEMM large enough is split here into independent panels run on fflib's own threads
 * (ff_thread.c). */
#include "fflib.h"

#if defined(FF_USE_SCIPY_OPENBLAS)
#include <cblas.h>
#define FF_CBLAS_SGEMM scipy_cblas_sgemm
#define FF_SET_THREADS scipy_openblas_set_num_threads
#define FF_BLAS_NAME "openblas (scipy-openblas32)"
#elif defined(FF_USE_OPENBLAS)
#include <cblas.h>
#define FF_CBLAS_SGEMM cblas_sgemm
#define FF_SET_THREADS openblas_set_num_threads
#define FF_BLAS_NAME "openblas (system)"
#endif

/* Below this many flops a GEMM is not split: waking a worker costs some microseconds. */
#ifndef FF_GEMM_SPLIT_FLOPS
#define FF_GEMM_SPLIT_FLOPS 4.0e6
#endif

#ifdef FF_CBLAS_SGEMM
static void sgemm1(int ta, int tb, int M, int N, int Kd, float alpha, const float *A, int lda,
                   const float *Bm, int ldb, float beta, float *Cm, int ldc) {
    FF_CBLAS_SGEMM(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                   M, N, Kd, alpha, A, lda, Bm, ldb, beta, Cm, ldc);
}
void ff_blas_set_threads(int n) { FF_SET_THREADS(n < 1 ? 1 : n); }
const char *ff_blas_name(void) { return FF_BLAS_NAME; }
#else
/* Reference loop: i-k-j order so the inner loop is contiguous in B and C when untransposed. */
static void sgemm1(int ta, int tb, int M, int N, int Kd, float alpha, const float *A, int lda,
                   const float *Bm, int ldb, float beta, float *Cm, int ldc) {
    for (int i = 0; i < M; i++) {
        float *c = Cm + (size_t)i * ldc;
        for (int j = 0; j < N; j++) c[j] = beta == 0.0f ? 0.0f : beta * c[j];
        for (int k = 0; k < Kd; k++) {
            float a = alpha * (ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]);
            if (tb) for (int j = 0; j < N; j++) c[j] += a * Bm[(size_t)j * ldb + k];
            else {
                const float *b = Bm + (size_t)k * ldb;
                for (int j = 0; j < N; j++) c[j] += a * b[j];
            }
        }
    }
}
void ff_blas_set_threads(int n) { (void)n; }
const char *ff_blas_name(void) { return "reference loop"; }
#endif

typedef struct {
    int ta, tb, M, N, Kd, lda, ldb, ldc, by_rows;
    float alpha, beta;
    const float *A, *B;
    float *C;
} gemm_job;

/* Panel p of nparts: rows (or columns) of C in [lo, hi), the cut on multiples of 16 so
 * every panel keeps whole micro-kernel tiles. */
static void gemm_panel(void *ctx, int p, int nparts) {
    const gemm_job *j = ctx;
    int n = j->by_rows ? j->M : j->N;
    int lo = (int)(((long long)n * p / nparts) & ~15LL), hi = (int)(((long long)n * (p + 1) / nparts) & ~15LL);
    if (p == nparts - 1) hi = n;
    if (hi <= lo) return;
    if (j->by_rows) { /* rows of C come from rows of op(A) */
        const float *a = j->ta ? j->A + lo : j->A + (size_t)lo * j->lda;
        sgemm1(j->ta, j->tb, hi - lo, j->N, j->Kd, j->alpha, a, j->lda, j->B, j->ldb, j->beta,
               j->C + (size_t)lo * j->ldc, j->ldc);
    } else {          /* columns of C come from columns of op(B) */
        const float *b = j->tb ? j->B + (size_t)lo * j->ldb : j->B + lo;
        sgemm1(j->ta, j->tb, j->M, hi - lo, j->Kd, j->alpha, j->A, j->lda, b, j->ldb, j->beta,
               j->C + lo, j->ldc);
    }
}

void ff_sgemm(int ta, int tb, int M, int N, int Kd, float alpha, const float *A, int lda,
              const float *Bm, int ldb, float beta, float *Cm, int ldc) {
    if (M <= 0 || N <= 0) return;
    int t = ff_parallel_split_width();
    int by_rows = M >= N, n = by_rows ? M : N;
    if (t > n / 16) t = n / 16;
    if (t < 2 || 2.0 * M * N * (Kd > 0 ? Kd : 1) < FF_GEMM_SPLIT_FLOPS) {
        sgemm1(ta, tb, M, N, Kd, alpha, A, lda, Bm, ldb, beta, Cm, ldc);
        return;
    }
    gemm_job j = {ta, tb, M, N, Kd, lda, ldb, ldc, by_rows, alpha, beta, A, Bm, Cm};
    ff_parallel_run(gemm_panel, &j, t);
}

/* ff_blas.c - the one place fflib touches BLAS: OpenBLAS when built with it, a plain loop
 * otherwise (so the core also builds where no BLAS exists). */
#include "fflib.h"

#if defined(FF_USE_SCIPY_OPENBLAS)
#include <cblas.h>
#define FF_CBLAS_SGEMM scipy_cblas_sgemm
#define FF_SET_THREADS scipy_openblas_set_num_threads
#define FF_GET_THREADS scipy_openblas_get_num_threads
#define FF_BLAS_NAME "openblas (scipy-openblas32)"
#elif defined(FF_USE_OPENBLAS)
#include <cblas.h>
#define FF_CBLAS_SGEMM cblas_sgemm
#define FF_SET_THREADS openblas_set_num_threads
#define FF_GET_THREADS openblas_get_num_threads
#define FF_BLAS_NAME "openblas (system)"
#endif

#ifdef FF_CBLAS_SGEMM
void ff_sgemm(int ta, int tb, int M, int N, int Kd, float alpha, const float *A, int lda,
              const float *Bm, int ldb, float beta, float *Cm, int ldc) {
    if (M <= 0 || N <= 0) return;
    FF_CBLAS_SGEMM(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                   M, N, Kd, alpha, A, lda, Bm, ldb, beta, Cm, ldc);
}
void ff_set_num_threads(int n) { FF_SET_THREADS(n < 1 ? 1 : n); }
int ff_get_num_threads(void) { return FF_GET_THREADS(); }
const char *ff_blas_name(void) { return FF_BLAS_NAME; }
#else
/* Reference loop: i-k-j order so the inner loop is contiguous in B and C when untransposed. */
void ff_sgemm(int ta, int tb, int M, int N, int Kd, float alpha, const float *A, int lda,
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
void ff_set_num_threads(int n) { (void)n; }
int ff_get_num_threads(void) { return 1; }
const char *ff_blas_name(void) { return "reference loop"; }
#endif

/* ff_conv.c - 2-D convolution (NCHW) as im2col + sgemm.
 *
 * The GEMMs run on chunks of about FF_CONV_COLS output positions (columns): a band of output
 * rows of one image when its plane is large, or nb whole images when planes are small, so
 * small planes still give BLAS wide products while the column matrix of one group
 * (Cg*KH*KW, columns) stays near cache size.  The workspace is bounded by the image shape
 * alone, never by the batch size.  A 1x1, stride-1, unpadded conv on one image is a plain
 * GEMM on the input (no column matrix).
 */
#include <limits.h>
#include <string.h>
#include "fflib.h"

/* target GEMM width in output positions */
#ifndef FF_CONV_COLS
#define FF_CONV_COLS 512
#endif

typedef struct {
    int C, H, W, OC, KH, KW, stride, pad, groups;
    int OH, OW, OHW, Cg, OCg, CgK; /* CgK = Cg*KH*KW, the GEMM's inner dimension */
    int nb;                        /* images per chunk (> 1 only when rows == OH) */
    int rows;                      /* output rows per chunk */
    int direct;                    /* 1x1, stride 1, pad 0: the input is its own column matrix */
} conv_shape;

/* Checks the sizes and fills s.  The checks mirror what PyTorch would reject. */
static ff_status conv_setup(conv_shape *s, int C, int H, int W, int OC, int KH, int KW,
                            int stride, int pad, int groups) {
    if (KH < 1 || KW < 1 || stride < 1 || pad < 0 || groups < 1) return FF_ERR_ARG;
    if (C < 1 || H < 1 || W < 1 || OC < 1) return FF_ERR_SHAPE;
    if (C % groups != 0 || OC % groups != 0) return FF_ERR_SHAPE;
    if ((long long)KH > (long long)H + 2LL * pad || (long long)KW > (long long)W + 2LL * pad)
        return FF_ERR_SHAPE;
    s->C = C; s->H = H; s->W = W; s->OC = OC; s->KH = KH; s->KW = KW;
    s->stride = stride; s->pad = pad; s->groups = groups;
    long long oh = ((long long)H + 2LL * pad - KH) / stride + 1;
    long long ow = ((long long)W + 2LL * pad - KW) / stride + 1;
    /* every GEMM dimension and leading dimension must fit in an int */
    long long cgkh = (long long)(C / groups) * KH;
    if (oh > INT_MAX || ow > INT_MAX || oh * ow > INT_MAX || (long long)H * W > INT_MAX ||
        cgkh > INT_MAX || cgkh * KW > INT_MAX)
        return FF_ERR_SHAPE;
    s->OH = (int)oh;
    s->OW = (int)ow;
    s->Cg = C / groups;
    s->OCg = OC / groups;
    s->OHW = s->OH * s->OW;
    s->CgK = s->Cg * KH * KW;
    s->direct = KH == 1 && KW == 1 && stride == 1 && pad == 0;
    if (s->OHW >= FF_CONV_COLS) {
        s->nb = 1;
        /* the direct path needs no column matrix, so it takes whole images */
        s->rows = s->direct ? s->OH : (FF_CONV_COLS / s->OW > 0 ? FF_CONV_COLS / s->OW : 1);
        if (s->rows > s->OH) s->rows = s->OH;
    } else {
        s->nb = FF_CONV_COLS / s->OHW;
        s->rows = s->OH;
    }
    return FF_OK;
}

/* Floats of workspace of one part, forward and backward alike: the column matrix (CgK, cols),
 * plus with nb > 1 a (OCg, cols) matrix holding the chunk's output (forward) or output
 * gradient (backward) in GEMM layout; cols = nb*rows*OW <= max(FF_CONV_COLS, OW). */
static size_t part_ws_floats(const conv_shape *s) {
    size_t cols = (size_t)s->nb * s->rows * s->OW;
    if (s->nb == 1) return s->direct ? 0 : (size_t)s->CgK * cols;
    return ((size_t)s->CgK + (size_t)s->OCg) * cols;
}

/* Floats of workspace for `parts` parts: each part's column matrices, and for parts after the
 * first a private weight gradient (OC, CgK) that the backward sums at the end. */
static size_t conv_ws_floats(const conv_shape *s, int parts) {
    if (parts < 1) parts = 1;
    return (size_t)parts * part_ws_floats(s) + (size_t)(parts - 1) * s->OC * s->CgK;
}

size_t ff_conv2d_workspace(int C, int H, int W, int OC, int KH, int KW, int stride, int pad,
                           int groups, int parts) {
    conv_shape s;
    if (conv_setup(&s, C, H, W, OC, KH, KW, stride, pad, groups) != FF_OK) return 0;
    return conv_ws_floats(&s, parts); /* the backward needs the same */
}

/* Output columns [lo, hi) of a kernel column kw read inside the input row; the others
 * fall in the zero padding.  iw = ow*stride + kw - pad. */
static void conv_valid_range(const conv_shape *s, int kw, int *lo, int *hi) {
    int a = s->pad - kw; /* need ow*stride >= a */
    int l = a <= 0 ? 0 : (a + s->stride - 1) / s->stride;
    int b = s->W + s->pad - kw; /* need ow*stride < b */
    int h = b <= 0 ? 0 : (b + s->stride - 1) / s->stride;
    if (h > s->OW) h = s->OW;
    if (l > h) l = h;
    *lo = l;
    *hi = h;
}

/* col (CgK, nb*R*OW) <- patches of channels [g*Cg, (g+1)*Cg) of images img (nb,C,H,W) for
 * output rows [oh0, oh0+R).  Row (c,kh,kw), column (i,oh-oh0,ow) holds
 * img[i, g*Cg+c, oh*stride-pad+kh, ow*stride-pad+kw], zero in the padding. */
static void im2col(float *col, const float *img, const conv_shape *s, int g, int nb, int oh0,
                   int R) {
    const size_t cols = (size_t)nb * R * s->OW, HW = (size_t)s->H * s->W;
    const size_t img_size = (size_t)s->C * HW;
    const int OW = s->OW, st = s->stride;
    /* stride 1 with OW == W ("same" padding): the rows of a band are one contiguous run of
     * the input shifted by kw - pad, so one copy per band, then the columns that wrapped
     * around a row edge are zeroed */
    const int same = st == 1 && OW == s->W;
    for (int c = 0; c < s->Cg; c++) {
        for (int kh = 0; kh < s->KH; kh++) {
            /* output rows [oa, ob) of the band read inside the input */
            int oa = (s->pad - kh + st - 1) / st, ob = (s->H + s->pad - kh + st - 1) / st;
            if (s->pad - kh <= 0) oa = 0;
            if (s->H + s->pad - kh <= 0) ob = 0;
            if (oa < oh0) oa = oh0;
            if (ob > oh0 + R) ob = oh0 + R;
            if (ob < oa) ob = oa;
            for (int kw = 0; kw < s->KW; kw++) {
                float *d = col + ((size_t)(c * s->KH + kh) * s->KW + kw) * cols;
                int lo, hi;
                conv_valid_range(s, kw, &lo, &hi);
                const int iw0 = lo * st + kw - s->pad;
                for (int i = 0; i < nb; i++, d += (size_t)R * OW) {
                    const float *plane = img + i * img_size + (size_t)(g * s->Cg + c) * HW;
                    if (lo == hi || oa == ob) {
                        memset(d, 0, (size_t)R * OW * sizeof(float));
                        continue;
                    }
                    memset(d, 0, (size_t)(oa - oh0) * OW * sizeof(float));
                    memset(d + (size_t)(ob - oh0) * OW, 0, (size_t)(oh0 + R - ob) * OW * sizeof(float));
                    float *dr = d + (size_t)(oa - oh0) * OW;
                    const float *src = plane + (size_t)(oa * st - s->pad + kh) * s->W + iw0;
                    if (same) {
                        memcpy(dr + lo, src, ((size_t)(ob - oa - 1) * OW + (size_t)(hi - lo)) * sizeof(float));
                        for (int oh = oa; oh < ob; oh++, dr += OW) {
                            for (int ow = 0; ow < lo; ow++) dr[ow] = 0.0f;
                            for (int ow = hi; ow < OW; ow++) dr[ow] = 0.0f;
                        }
                        continue;
                    }
                    for (int oh = oa; oh < ob; oh++, dr += OW, src += (size_t)st * s->W) {
                        for (int ow = 0; ow < lo; ow++) dr[ow] = 0.0f;
                        if (st == 1 && hi - lo >= 32) {
                            memcpy(dr + lo, src, (size_t)(hi - lo) * sizeof(float));
                        } else if (st == 1) { /* short rows: a call costs more than the copy */
                            for (int j = 0; j < hi - lo; j++) dr[lo + j] = src[j];
                        } else {
                            for (int ow = lo, j = 0; ow < hi; ow++, j += st) dr[ow] = src[j];
                        }
                        for (int ow = hi; ow < OW; ow++) dr[ow] = 0.0f;
                    }
                }
            }
        }
    }
}

/* dimg (nb,C,H,W) channels of group g += col (CgK, nb*R*OW) folded back: the adjoint of
 * im2col for output rows [oh0, oh0+R). */
static void col2im(float *dimg, const float *col, const conv_shape *s, int g, int nb, int oh0,
                   int R) {
    const size_t cols = (size_t)nb * R * s->OW, HW = (size_t)s->H * s->W;
    const size_t img_size = (size_t)s->C * HW;
    const int OW = s->OW, st = s->stride;
    for (int c = 0; c < s->Cg; c++) {
        for (int kh = 0; kh < s->KH; kh++) {
            for (int kw = 0; kw < s->KW; kw++) {
                const float *d = col + ((size_t)(c * s->KH + kh) * s->KW + kw) * cols;
                int lo, hi;
                conv_valid_range(s, kw, &lo, &hi);
                if (lo == hi) continue;
                const int iw0 = lo * st + kw - s->pad;
                for (int i = 0; i < nb; i++) {
                    float *plane = dimg + i * img_size + (size_t)(g * s->Cg + c) * HW;
                    for (int oh = oh0; oh < oh0 + R; oh++, d += OW) {
                        int ih = oh * st - s->pad + kh;
                        if (ih < 0 || ih >= s->H) continue;
                        float *dst = plane + (size_t)ih * s->W + iw0;
                        if (st == 1) {
                            const float *e = d + lo;
                            for (int j = 0; j < hi - lo; j++) dst[j] += e[j];
                        } else {
                            for (int ow = lo, j = 0; ow < hi; ow++, j += st) dst[j] += d[ow];
                        }
                    }
                }
            }
        }
    }
}

/* Forward on images [n_begin, n_end) (whole chunks), with one part's workspace ws. */
static void conv_forward_range(float *out, const float *inp, const float *weight, const float *bias,
                               const conv_shape *sp, int n_begin, int n_end, float *ws) {
    const conv_shape s = *sp;
    const int groups = s.groups;
    const size_t in_img = (size_t)s.C * s.H * s.W, out_img = (size_t)s.OC * s.OHW;
    const size_t cols_max = (size_t)s.nb * s.rows * s.OW;
    for (int n0 = n_begin; n0 < n_end; n0 += s.nb) {
        const int nb = n_end - n0 < s.nb ? n_end - n0 : s.nb;
        const float *x = inp + (size_t)n0 * in_img;
        float *y = out + (size_t)n0 * out_img;
        for (int oh0 = 0; oh0 < s.OH; oh0 += s.rows) {
            const int R = s.OH - oh0 < s.rows ? s.OH - oh0 : s.rows;
            const int cols = nb * R * s.OW;
            const size_t off = (size_t)oh0 * s.OW; /* the band's first output position */
            for (int g = 0; g < groups; g++) {
                const float *wg = weight + (size_t)g * s.OCg * s.CgK;
                const float *colm = ws;
                int ldcol = cols;
                if (s.direct && nb == 1) {
                    colm = x + (size_t)g * s.Cg * s.OHW + off;
                    ldcol = s.OHW;
                } else {
                    im2col(ws, x, &s, g, nb, oh0, R);
                }
                if (nb == 1) {
                    /* the product lands straight in the output: (OCg, cols) of image n0 */
                    float *yg = y + (size_t)g * s.OCg * s.OHW + off;
                    ff_sgemm(0, 0, s.OCg, cols, s.CgK, 1.0f, wg, s.CgK, colm, ldcol, 0.0f,
                             yg, s.OHW);
                    if (bias) {
                        for (int o = 0; o < s.OCg; o++) {
                            float b = bias[g * s.OCg + o], *p = yg + (size_t)o * s.OHW;
                            for (int j = 0; j < cols; j++) p[j] += b;
                        }
                    }
                } else {
                    /* (OCg, nb*OHW) in scratch, then scattered to NCHW with the bias */
                    float *tmp = ws + (size_t)s.CgK * cols_max;
                    ff_sgemm(0, 0, s.OCg, cols, s.CgK, 1.0f, wg, s.CgK, colm, ldcol, 0.0f,
                             tmp, cols);
                    for (int o = 0; o < s.OCg; o++) {
                        float b = bias ? bias[g * s.OCg + o] : 0.0f;
                        for (int i = 0; i < nb; i++) {
                            const float *t = tmp + (size_t)o * cols + (size_t)i * s.OHW;
                            float *p = y + i * out_img + (size_t)(g * s.OCg + o) * s.OHW;
                            for (int j = 0; j < s.OHW; j++) p[j] = t[j] + b;
                        }
                    }
                }
            }
        }
    }
}

/* dinp +=, dweight += on images [n_begin, n_end), with one part's workspace ws. */
static void conv_backward_range(float *dinp, float *dweight, const float *dout, const float *inp,
                                const float *weight, const conv_shape *sp, int n_begin, int n_end,
                                float *ws) {
    const conv_shape s = *sp;
    const int groups = s.groups;
    const size_t in_img = (size_t)s.C * s.H * s.W, out_img = (size_t)s.OC * s.OHW;
    const size_t cols_max = (size_t)s.nb * s.rows * s.OW;
    for (int n0 = n_begin; n0 < n_end; n0 += s.nb) {
        const int nb = n_end - n0 < s.nb ? n_end - n0 : s.nb;
        const float *x = inp ? inp + (size_t)n0 * in_img : NULL;
        float *dx = dinp ? dinp + (size_t)n0 * in_img : NULL;
        for (int oh0 = 0; oh0 < s.OH; oh0 += s.rows) {
            const int R = s.OH - oh0 < s.rows ? s.OH - oh0 : s.rows;
            const int cols = nb * R * s.OW;
            const size_t off = (size_t)oh0 * s.OW;
            for (int g = 0; g < groups; g++) {
                const float *wg = weight ? weight + (size_t)g * s.OCg * s.CgK : NULL;
                /* the chunk's output gradient for this group as an (OCg, cols) matrix */
                const float *dg;
                int lddg;
                if (nb == 1) {
                    dg = dout + (size_t)n0 * out_img + (size_t)g * s.OCg * s.OHW + off;
                    lddg = s.OHW;
                } else {
                    float *tmp = ws + (size_t)s.CgK * cols_max;
                    for (int o = 0; o < s.OCg; o++)
                        for (int i = 0; i < nb; i++)
                            memcpy(tmp + (size_t)o * cols + (size_t)i * s.OHW,
                                   dout + (size_t)(n0 + i) * out_img + (size_t)(g * s.OCg + o) * s.OHW,
                                   (size_t)s.OHW * sizeof(float));
                    dg = tmp;
                    lddg = cols;
                }
                const int direct = s.direct && nb == 1;
                if (dweight) {
                    /* dW_g (OCg, CgK) += dout_g (OCg, cols) . col^T (cols, CgK) */
                    const float *colm = ws;
                    int ldcol = cols;
                    if (direct) {
                        colm = x + (size_t)g * s.Cg * s.OHW + off;
                        ldcol = s.OHW;
                    } else {
                        im2col(ws, x, &s, g, nb, oh0, R);
                    }
                    ff_sgemm(0, 1, s.OCg, s.CgK, cols, 1.0f, dg, lddg, colm, ldcol, 1.0f,
                             dweight + (size_t)g * s.OCg * s.CgK, s.CgK);
                }
                if (dinp) {
                    if (direct) {
                        /* dinp_g (Cg, cols) += W_g^T (Cg, OCg) . dout_g */
                        float *dxg = dx + (size_t)g * s.Cg * s.OHW + off;
                        ff_sgemm(1, 0, s.Cg, cols, s.OCg, 1.0f, wg, s.CgK, dg, lddg, 1.0f, dxg,
                                 s.OHW);
                    } else {
                        /* dcol (CgK, cols) = W_g^T . dout_g, then folded back into dinp */
                        ff_sgemm(1, 0, s.CgK, cols, s.OCg, 1.0f, wg, s.CgK, dg, lddg, 0.0f, ws,
                                 cols);
                        col2im(dx, ws, &s, g, nb, oh0, R);
                    }
                }
            }
        }
    }
}

/* A convolution split into parts, each a run of whole chunks of images with its own workspace. */
typedef struct {
    const conv_shape *s;
    float *out, *dinp, *dweight;
    const float *inp, *weight, *bias, *dout;
    int N, parts, backward;
    float *ws;
} conv_job;

/* Images [lo, hi) of part p: whole chunks of nb images, spread evenly. */
static void part_images(const conv_job *j, int p, int *lo, int *hi) {
    const int nb = j->s->nb, chunks = (j->N + nb - 1) / nb;
    long long a = (long long)chunks * p / j->parts, b = (long long)chunks * (p + 1) / j->parts;
    *lo = (int)(a * nb);
    *hi = (int)(b * nb < j->N ? b * nb : j->N);
}

static void conv_part(void *ctx, int p, int nparts) {
    (void)nparts;
    const conv_job *j = ctx;
    int lo, hi;
    part_images(j, p, &lo, &hi);
    float *ws = j->ws ? j->ws + (size_t)p * part_ws_floats(j->s) : NULL;
    if (!j->backward) {
        if (hi > lo) conv_forward_range(j->out, j->inp, j->weight, j->bias, j->s, lo, hi, ws);
        return;
    }
    float *dw = j->dweight;
    if (dw && p > 0) { /* a private gradient, summed into dweight after the join */
        size_t nw = (size_t)j->s->OC * j->s->CgK;
        dw = j->ws + (size_t)j->parts * part_ws_floats(j->s) + (size_t)(p - 1) * nw;
        memset(dw, 0, nw * sizeof(float));
    }
    if (hi > lo) conv_backward_range(j->dinp, dw, j->dout, j->inp, j->weight, j->s, lo, hi, ws);
}

/* How many parts to split N images into: at most ws_parts (what ws was sized for), the
 * threads free to run them, and the number of chunks. */
static int conv_parts(const conv_shape *s, int N, int ws_parts) {
    int chunks = (N + s->nb - 1) / s->nb, p = ff_parallel_width();
    if (p > ws_parts) p = ws_parts;
    if (p > chunks) p = chunks;
    return p < 1 ? 1 : p;
}

/* out (N,OC,OH,OW) = conv(inp (N,C,H,W)) + bias */
ff_status ff_conv2d_forward(float *out, const float *inp, const float *weight, const float *bias,
                            int N, int C, int H, int W, int OC, int KH, int KW, int stride,
                            int pad, int groups, float *ws, int ws_parts) {
    conv_shape s;
    ff_status st = conv_setup(&s, C, H, W, OC, KH, KW, stride, pad, groups);
    if (st != FF_OK) return st;
    if (N < 0 || ws_parts < 1) return N < 0 ? FF_ERR_SHAPE : FF_ERR_ARG;
    if (N == 0) return FF_OK;
    if (!out || !inp || !weight || (!ws && conv_ws_floats(&s, 1) > 0)) return FF_ERR_ARG;
    conv_job j = {&s, out, NULL, NULL, inp, weight, bias, NULL, N, conv_parts(&s, N, ws_parts), 0, ws};
    ff_parallel_run(conv_part, &j, j.parts);
    return FF_OK;
}

/* Sum of n floats in double, eight independent lanes so the loop pipelines (and vectorises). */
static double sum_f64(const float *x, size_t n) {
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) acc[l] += x[i + l];
    double s = 0.0;
    for (; i < n; i++) s += x[i];
    for (int l = 0; l < 8; l++) s += acc[l];
    return s;
}

/* dinp (N,C,H,W) +=, dweight (OC,C/groups,KH,KW) +=, dbias (OC) += from dout (N,OC,OH,OW) */
ff_status ff_conv2d_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                             const float *inp, const float *weight, int N, int C, int H, int W,
                             int OC, int KH, int KW, int stride, int pad, int groups, float *ws,
                             int ws_parts) {
    conv_shape s;
    ff_status st = conv_setup(&s, C, H, W, OC, KH, KW, stride, pad, groups);
    if (st != FF_OK) return st;
    if (N < 0 || ws_parts < 1) return N < 0 ? FF_ERR_SHAPE : FF_ERR_ARG;
    if (N == 0) return FF_OK;
    if ((dinp || dweight || dbias) && !dout) return FF_ERR_ARG;
    if ((dweight && !inp) || (dinp && !weight)) return FF_ERR_ARG;
    if ((dinp || dweight) && !ws && conv_ws_floats(&s, 1) > 0) return FF_ERR_ARG;
    const size_t out_img = (size_t)OC * s.OHW;

    if (dbias) {
        for (int o = 0; o < OC; o++) {
            double acc = 0.0;
            for (int n = 0; n < N; n++)
                acc += sum_f64(dout + n * out_img + (size_t)o * s.OHW, (size_t)s.OHW);
            dbias[o] += (float)acc;
        }
    }
    if (!dinp && !dweight) return FF_OK;
    /* private weight gradients need workspace that ws == NULL (a direct conv) lacks */
    int parts = conv_parts(&s, N, ws ? ws_parts : 1);
    conv_job j = {&s, NULL, dinp, dweight, inp, weight, NULL, dout, N, parts, 1, ws};
    ff_parallel_run(conv_part, &j, parts);
    if (dweight && parts > 1) {
        const size_t nw = (size_t)OC * s.CgK;
        const float *priv = ws + (size_t)parts * part_ws_floats(&s);
        for (int p = 1; p < parts; p++, priv += nw)
            for (size_t i = 0; i < nw; i++) dweight[i] += priv[i];
    }
    return FF_OK;
}

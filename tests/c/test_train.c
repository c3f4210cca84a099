/* test_train.c - the C core used without Python: build a tiny FF MLP through the public API,
 * train it on a synthetic two-cluster problem and check that every block's loss falls and the
 * net classifies the training data.  Exit status 0 on success; the test suite compiles and
 * runs this file. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fflib.h"

#define B 32
#define D 24
#define K 3
#define CHECK(call) do { ff_status st_ = (call); if (st_ != FF_OK) { \
    fprintf(stderr, "%s failed: %s\n", #call, ff_status_str(st_)); return 1; } } while (0)

static unsigned lcg(unsigned *s) { *s = *s * 1664525u + 1013904223u; return *s >> 8; }

int main(void) {
    ff_net *net = ff_net_create(D, 1, 1, K, 42);
    if (!net) { fprintf(stderr, "ff_net_create failed\n"); return 1; }
    /* two FF layers, each length-normalising its input: [norm, linear, relu] x 2 */
    CHECK(ff_net_add_lennorm(net, FF_NORM_RMS, 1e-4f));
    CHECK(ff_net_add_linear(net, 40, 1));
    CHECK(ff_net_add_relu(net));
    CHECK(ff_net_add_lennorm(net, FF_NORM_RMS, 1e-4f));
    CHECK(ff_net_add_linear(net, 20, 1));
    CHECK(ff_net_add_relu(net));
    int head_layers[1] = {5};
    CHECK(ff_net_set_head(net, 1, head_layers));
    CHECK(ff_net_finalize(net));
    if (ff_net_num_blocks(net) != 2) { fprintf(stderr, "expected 2 blocks\n"); return 1; }
    ff_config cfg = ff_config_default();
    cfg.goodness = FF_GOODNESS_MEAN; cfg.theta = 1.0f; cfg.norm = FF_NORM_RMS;  /* head features */
    CHECK(ff_net_set_config(net, &cfg));
    ff_opt_config opt = ff_opt_config_default();
    opt.lr = 0.01f;
    for (int l = 0; l < ff_net_num_layers(net); l++)
        if (ff_net_layer_kind(net, l) == FF_LAYER_LINEAR) CHECK(ff_net_set_opt(net, l, &opt));
    CHECK(ff_net_set_opt(net, -1, &opt));

    /* class k: noise plus a bump on features K + 5k .. K + 5k + 4 (the first K carry the label) */
    static float x[B * D];
    static int64_t y[B];
    unsigned seed = 7;
    float first[3] = {0}, last[3] = {0};
    for (int step = 0; step < 600; step++) {
        for (int b = 0; b < B; b++) {
            y[b] = (int64_t)(lcg(&seed) % K);
            for (int d = 0; d < D; d++) x[b * D + d] = (float)(lcg(&seed) % 1000) / 4000.0f;
            for (int d = 0; d < 5; d++) x[b * D + K + 5 * y[b] + d] += 1.0f;
        }
        float losses[3];
        CHECK(ff_net_train_step(net, x, y, NULL, B, NULL, 1, 1, losses));
        for (int i = 0; i < 3; i++) {
            if (!isfinite(losses[i])) { fprintf(stderr, "non-finite loss\n"); return 1; }
            if (step < 10) first[i] += losses[i] / 10;
            if (step >= 590) last[i] += losses[i] / 10;
        }
    }
    printf("losses first %.4f %.4f %.4f  last %.4f %.4f %.4f\n", first[0], first[1], first[2], last[0],
           last[1], last[2]);
    for (int i = 0; i < 3; i++)
        if (!(last[i] < 0.7f * first[i])) { fprintf(stderr, "loss %d did not fall\n", i); return 1; }

    /* multi-pass and one-pass accuracy on the last batch */
    static float g[B * K * 2], probs[B * K];
    CHECK(ff_net_goodness(net, x, B, g));
    CHECK(ff_net_head_predict(net, x, B, probs));
    int ok_multi = 0, ok_one = 0;
    for (int b = 0; b < B; b++) {
        int am = 0, ao = 0;
        for (int k = 1; k < K; k++) {
            if (g[(b * K + k) * 2] + g[(b * K + k) * 2 + 1] > g[(b * K + am) * 2] + g[(b * K + am) * 2 + 1]) am = k;
            if (probs[b * K + k] > probs[b * K + ao]) ao = k;
        }
        ok_multi += am == y[b];
        ok_one += ao == y[b];
    }
    printf("accuracy multi-pass %d/%d one-pass %d/%d (blas: %s)\n", ok_multi, B, ok_one, B, ff_blas_name());
    if (ok_multi < B * 9 / 10 || ok_one < B * 9 / 10) { fprintf(stderr, "accuracy too low\n"); return 1; }

    /* the local gradient of every block's loss and the head's, against a central difference
     * along a random direction (ff_net_check_grad) */
    static int64_t neg[B];
    for (int b = 0; b < B; b++) neg[b] = (y[b] + 1) % K;
    for (int blk = 0; blk <= ff_net_num_blocks(net); blk++) {
        double fd, an, rel;
        CHECK(ff_net_check_grad(net, x, y, neg, B, blk, 1e-3f, 11u + (unsigned)blk, &fd, &an, &rel));
        printf("gradient check block %d: %.6g vs %.6g (rel %.2g)\n", blk, an, fd, rel);
        if (!(rel < 2e-2) || an == 0.0) { fprintf(stderr, "gradient check failed\n"); return 1; }
    }

    /* input standardisation: x * scale + shift where the sample is encoded; with scale 2 and
     * shift 0.25 the goodness equals that of 2x + 0.25 fed as is (the label slots included:
     * the label is written after the map) */
    static float sc[D], sh[D], x2[B * D], g2[B * K * 2];
    for (int d = 0; d < D; d++) { sc[d] = 2.0f; sh[d] = 0.25f; }
    for (int i = 0; i < B * D; i++) x2[i] = x[i] * 2.0f + 0.25f;
    CHECK(ff_net_goodness(net, x2, B, g));
    CHECK(ff_net_set_input_affine(net, sc, sh));
    CHECK(ff_net_goodness(net, x, B, g2));
    if (memcmp(g, g2, sizeof g) != 0) { fprintf(stderr, "input affine: goodness differs\n"); return 1; }
    const float *shift_back = NULL;
    if (ff_net_input_affine(net, &shift_back) == NULL || shift_back == NULL || shift_back[3] != 0.25f) return 1;
    sc[5] = INFINITY;
    if (ff_net_set_input_affine(net, sc, sh) != FF_ERR_ARG || !strstr(ff_net_last_error(net), "scale[5]")) return 1;
    if (ff_net_set_input_affine(net, sc, NULL) != FF_ERR_ARG) return 1;
    CHECK(ff_net_set_input_affine(net, NULL, NULL));
    if (ff_net_input_affine(net, NULL) != NULL) return 1;

    /* errors are statuses with a reason, never crashes */
    int64_t bad[1] = {K};
    if (ff_net_train_step(net, x, bad, NULL, 1, NULL, 0, 1, NULL) != FF_ERR_LABEL) return 1;
    if (!strstr(ff_net_last_error(net), "labels[0] = 3 is out of range: labels must be in [0, 3)")) {
        fprintf(stderr, "unexpected error text: %s\n", ff_net_last_error(net));
        return 1;
    }
    if (ff_net_train_step(net, x, y, NULL, 0, NULL, 0, 1, NULL) != FF_ERR_ARG) return 1;
    ff_net *huge = NULL;
    char msg[200];
    if (ff_net_new(&huge, 1 << 30, 2, 2, 4, 0, msg, sizeof msg) != FF_ERR_ARG || huge) return 1;
    ff_net_destroy(net);
    printf("ok\n");
    return 0;
}

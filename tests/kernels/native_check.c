/* A standalone check of kernels/cpu_quant_gemm.c for CPUs this machine is not: built
 * with a cross compiler and run under an emulator by `make native-check` (Arm with and
 * without the dot-product instructions), it holds every compiled code path to the plain
 * sums below, as tests/kernels/test_cpu_native.py does on the machine's own CPU. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "../../kernels/cpu_native.h"

enum { ROWS = 4, QBLOCK = 32 };

static float uniform(void) { return (float)rand() / (float)RAND_MAX; }

static int check(const char *what, const float *ours, const float *reference, int64_t n) {
    float worst = 0.0f, largest = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        worst = fmaxf(worst, fabsf(ours[i] - reference[i]));
        largest = fmaxf(largest, fabsf(reference[i]));
    }
    const int ok = worst <= 1e-5f * largest + 1e-6f;
    printf("%s %s: max error %.3g of %.3g\n", ok ? "ok  " : "FAIL", what, worst, largest);
    return ok;
}

/* A: in-features per activation scale */
static int check_int4(int64_t M, int64_t N, int64_t K, int64_t G, int64_t A) {
    const int64_t tiles = (N + ROWS - 1) / ROWS, groups = K / G, blocks = K / QBLOCK;
    float *x = malloc(sizeof(float) * M * K), *xs = malloc(sizeof(float) * M * (K / A));
    float *xsum = malloc(sizeof(float) * M * (K / A));
    int8_t *xq = malloc(M * K);
    uint8_t *codes = malloc(N * K), *w = calloc(tiles * ROWS * K / 2, 1);
    float *s = calloc(tiles * groups * ROWS, sizeof(float));
    float *m = calloc(tiles * groups * ROWS, sizeof(float));
    float *y = malloc(sizeof(float) * M * N), *ref = calloc(M * N, sizeof(float));
    for (int64_t i = 0; i < M * K; i++) x[i] = uniform() * 2.0f - 1.0f;
    for (int64_t n = 0; n < N; n++) {
        const int64_t t = n / ROWS, r = n % ROWS;
        for (int64_t k = 0; k < K; k++) {
            codes[n * K + k] = (uint8_t)(rand() % 16);
            const int64_t b = k / QBLOCK, j = k % QBLOCK;
            uint8_t *byte = w + ((t * blocks + b) * ROWS + r) * (QBLOCK / 2) + j % (QBLOCK / 2);
            *byte |= (uint8_t)(codes[n * K + k] << (j < QBLOCK / 2 ? 0 : 4));
        }
        for (int64_t g = 0; g < groups; g++) {
            s[(t * groups + g) * ROWS + r] = 0.01f + 0.01f * uniform();
            m[(t * groups + g) * ROWS + r] = (float)(rand() % 16) * s[(t * groups + g) * ROWS + r];
        }
    }
    edgechat_quantize_rows(x, M, K, A, xq, xs, xsum);
    if (edgechat_int4_linear(x, M, w, s, m, NULL, N, K, G, A, y, 2)) return 0;
    for (int64_t i = 0; i < M; i++)
        for (int64_t n = 0; n < N; n++)
            for (int64_t k = 0; k < K; k++) {
                const int64_t at = (n / ROWS * groups + k / G) * ROWS + n % ROWS;
                const float weight = (float)codes[n * K + k] * s[at] - m[at];
                ref[i * N + n] += weight * (float)xq[i * K + k] * xs[i * (K / A) + k / A];
            }
    char what[80];
    snprintf(what, sizeof what, "int4 M=%lld N=%lld K=%lld G=%lld A=%lld", (long long)M,
             (long long)N, (long long)K, (long long)G, (long long)A);
    const int ok = check(what, y, ref, M * N);
    free(x), free(xs), free(xsum), free(xq), free(codes), free(w), free(s), free(m), free(y);
    free(ref);
    return ok;
}

static int check_int8(int64_t M, int64_t N, int64_t K, int64_t A) {
    const int64_t blocks = K / QBLOCK;
    float *x = malloc(sizeof(float) * M * K), *xs = malloc(sizeof(float) * M * (K / A));
    float *xsum = malloc(sizeof(float) * M * (K / A)), *s = malloc(sizeof(float) * N);
    int8_t *xq = malloc(M * K), *w = malloc(N * K);
    float *y = malloc(sizeof(float) * M * N), *ref = calloc(M * N, sizeof(float));
    for (int64_t i = 0; i < M * K; i++) x[i] = uniform() * 2.0f - 1.0f;
    int8_t *rows = malloc(N * K); /* row by row; w holds them in tiles (then the rest) */
    for (int64_t i = 0; i < N * K; i++) rows[i] = (int8_t)(rand() % 255 - 127);
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) {
            const int64_t t = n / ROWS, r = n % ROWS, b = k / QBLOCK, j = k % QBLOCK;
            const int in_tile = t < N / ROWS;
            w[in_tile ? ((t * blocks + b) * ROWS + r) * QBLOCK + j : n * K + k] = rows[n * K + k];
        }
    for (int64_t n = 0; n < N; n++) s[n] = 0.001f + 0.001f * uniform();
    edgechat_quantize_rows(x, M, K, A, xq, xs, xsum);
    if (edgechat_int8_linear(x, M, w, s, NULL, N, K, A, y, 2)) return 0;
    for (int64_t i = 0; i < M; i++)
        for (int64_t n = 0; n < N; n++)
            for (int64_t k = 0; k < K; k++)
                ref[i * N + n] += s[n] * (float)rows[n * K + k] * (float)xq[i * K + k] *
                                  xs[i * (K / A) + k / A];
    char what[80];
    snprintf(what, sizeof what, "int8 M=%lld N=%lld K=%lld A=%lld", (long long)M, (long long)N,
             (long long)K, (long long)A);
    const int ok = check(what, y, ref, M * N);
    free(x), free(xs), free(xsum), free(s), free(xq), free(w), free(rows), free(y), free(ref);
    return ok;
}

int main(void) {
    printf("code path: %s\n", edgechat_simd());
    int ok = 1;
    /* every pass: 4, 2 and 1 activation rows (M = 7, 17), whole tiles and padded ones */
    ok &= check_int4(1, 37, 256, 32, 32);
    ok &= check_int4(3, 64, 256, 128, 128);
    ok &= check_int4(7, 38, 384, 64, 64);
    ok &= check_int4(17, 130, 512, 256, 128);
    ok &= check_int8(1, 37, 160, 32);
    ok &= check_int8(5, 64, 896, 128);
    ok &= check_int8(7, 38, 192, 64);
    return ok ? 0 : 1;
}

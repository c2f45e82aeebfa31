/* Weight-only int4 and int8 matmuls for CPUs, with the activations quantized to int8 on
 * the fly (blocks of 32, as llama.cpp's Q8_0): integer dot products of 32 weights at a
 * time, one float multiply-add per block. torch's own CPU int4 kernel dequantizes every
 * weight to float on AVX2 and runs at a third of memory bandwidth; this one is memory
 * bound. Built at run time by kernels/cpu_native.py (-O3 -march=native -fopenmp); the
 * torch twins are in kernels/cpu_linear.py.
 *
 * Activations x [M, K] fp32, quantized per row in blocks of 32:
 *   xs[b] = max|x_b| / 127, xq = round(x / xs[b]) (half to even), xsum[b] = xs[b] * sum(xq_b).
 * int4 weights [N, K/2] bytes, per 32-block of a row 16 bytes: byte j holds code j (low
 * nibble) and code j + 16 (high nibble); w = q * s[n, g] - m[n, g] (m = z * s), G | K:
 *   y[m, n] = sum_g s[n, g] * sum_{b in g} xs[b] * dot(q_b, xq_b) - m[n, g] * sum_{b in g} xsum[b].
 * int8 weights [N, K] with a scale per row: y[m, n] = s[n] * sum_b xs[b] * dot(w_b, xq_b).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define EDGECHAT_AVX2 1
#elif defined(__ARM_NEON) && defined(__ARM_FEATURE_DOTPROD)
#include <arm_neon.h>
#define EDGECHAT_NEON_DOT 1
#endif

#define QBLOCK 32
#define ROWS 4 /* weight rows per tile: one activation block load serves four */
#define PREFETCH_BYTES 1024 /* how far ahead of a tile's stream to prefetch */

const char *edgechat_simd(void) {
#if defined(EDGECHAT_AVX2)
    return "avx2";
#elif defined(EDGECHAT_NEON_DOT)
    return "neon-dotprod";
#else
    return "portable";
#endif
}

/* xq [M, K] int8, xs and xsum [M, K/32] */
void edgechat_quantize_rows(const float *x, int64_t M, int64_t K, int8_t *xq, float *xs,
                            float *xsum) {
    const int64_t nb = K / QBLOCK;
    for (int64_t i = 0; i < M * nb; i++) {
        const float *xb = x + i * QBLOCK;
        float amax = 0.0f;
        for (int j = 0; j < QBLOCK; j++) amax = fmaxf(amax, fabsf(xb[j]));
        const float scale = amax / 127.0f;
        const float inverse = scale > 0.0f ? 1.0f / scale : 0.0f;
        int sum = 0;
        for (int j = 0; j < QBLOCK; j++) {
            const int q = (int)nearbyintf(xb[j] * inverse);
            xq[i * QBLOCK + j] = (int8_t)q;
            sum += q;
        }
        xs[i] = scale;
        xsum[i] = scale * (float)sum;
    }
}

#if defined(EDGECHAT_AVX2)
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 32 unsigned 4-bit codes (16 bytes) as 32 bytes */
static inline __m256i codes_int4(const uint8_t *w) {
    const __m128i raw = _mm_loadu_si128((const __m128i *)w);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw),
                            _mm256_set1_epi8(0x0F));
}

/* dot of 32 codes in [0, 15] with 32 int8 activations, as 8 int32 lanes */
static inline __m256i dot_codes(__m256i codes, __m256i xv) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(codes, xv), _mm256_set1_epi16(1));
}

/* dot of 32 int8 weights with 32 int8 activations (|xq| <= 127, so the pairs fit int16) */
static inline __m256i dot_int8(const int8_t *w, __m256i xv, __m256i abs_x) {
    const __m256i signed_w = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)w), xv);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(abs_x, signed_w), _mm256_set1_epi16(1));
}
#endif

/* A tile of ROWS rows of an int4 weight is one run of bytes: for each 32-block b, the 16
 * bytes of row 0, then of rows 1..ROWS-1 (one cache line), so that a tile streams from
 * memory in order; its scales and offsets likewise [K/G][ROWS]. */

/* ROWS outputs of one weight tile against one quantized activation row */
static void int4_tile(const uint8_t *w, const float *s, const float *m, const int8_t *xq,
                      const float *xs, const float *xsum, int64_t K, int64_t G, float *y) {
    const int64_t per_group = G / QBLOCK, num_groups = K / G;
    const int64_t block_bytes = ROWS * (QBLOCK / 2);
#if defined(EDGECHAT_AVX2)
    __m256 acc[ROWS];
    float zero_terms[ROWS] = {0};
    for (int r = 0; r < ROWS; r++) acc[r] = _mm256_setzero_ps();
    for (int64_t g = 0; g < num_groups; g++) {
        __m256 group[ROWS];
        float sums = 0.0f;
        for (int r = 0; r < ROWS; r++) group[r] = _mm256_setzero_ps();
        for (int64_t b = g * per_group; b < (g + 1) * per_group; b++) {
            const uint8_t *wb = w + b * block_bytes;
            _mm_prefetch((const char *)(wb + PREFETCH_BYTES), _MM_HINT_T0);
            const __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + b * QBLOCK));
            const __m256 scale = _mm256_set1_ps(xs[b]);
            for (int r = 0; r < ROWS; r++) {
                const __m256i dot = dot_codes(codes_int4(wb + r * (QBLOCK / 2)), xv);
                group[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, group[r]);
            }
            sums += xsum[b];
        }
        for (int r = 0; r < ROWS; r++) {
            acc[r] = _mm256_fmadd_ps(group[r], _mm256_set1_ps(s[g * ROWS + r]), acc[r]);
            zero_terms[r] += m[g * ROWS + r] * sums;
        }
    }
    for (int r = 0; r < ROWS; r++) y[r] = hsum(acc[r]) - zero_terms[r];
#elif defined(EDGECHAT_NEON_DOT)
    float32x4_t acc[ROWS];
    float zero_terms[ROWS] = {0};
    for (int r = 0; r < ROWS; r++) acc[r] = vdupq_n_f32(0.0f);
    for (int64_t g = 0; g < num_groups; g++) {
        float32x4_t group[ROWS];
        float sums = 0.0f;
        for (int r = 0; r < ROWS; r++) group[r] = vdupq_n_f32(0.0f);
        for (int64_t b = g * per_group; b < (g + 1) * per_group; b++) {
            const uint8_t *wb = w + b * block_bytes;
            const int8x16_t x_low = vld1q_s8(xq + b * QBLOCK);
            const int8x16_t x_high = vld1q_s8(xq + b * QBLOCK + QBLOCK / 2);
            for (int r = 0; r < ROWS; r++) {
                const uint8x16_t raw = vld1q_u8(wb + r * (QBLOCK / 2));
                const int8x16_t low = vreinterpretq_s8_u8(vandq_u8(raw, vdupq_n_u8(0x0F)));
                const int8x16_t high = vreinterpretq_s8_u8(vshrq_n_u8(raw, 4));
                int32x4_t dot = vdotq_s32(vdupq_n_s32(0), low, x_low);
                dot = vdotq_s32(dot, high, x_high);
                group[r] = vfmaq_n_f32(group[r], vcvtq_f32_s32(dot), xs[b]);
            }
            sums += xsum[b];
        }
        for (int r = 0; r < ROWS; r++) {
            acc[r] = vfmaq_n_f32(acc[r], group[r], s[g * ROWS + r]);
            zero_terms[r] += m[g * ROWS + r] * sums;
        }
    }
    for (int r = 0; r < ROWS; r++) y[r] = vaddvq_f32(acc[r]) - zero_terms[r];
#else
    for (int r = 0; r < ROWS; r++) {
        float total = 0.0f;
        for (int64_t g = 0; g < num_groups; g++) {
            float group = 0.0f, sums = 0.0f;
            for (int64_t b = g * per_group; b < (g + 1) * per_group; b++) {
                const uint8_t *wb = w + b * block_bytes + r * (QBLOCK / 2);
                const int8_t *xb = xq + b * QBLOCK;
                int dot = 0;
                for (int j = 0; j < QBLOCK / 2; j++)
                    dot += (wb[j] & 0x0F) * xb[j] + (wb[j] >> 4) * xb[j + QBLOCK / 2];
                group += xs[b] * (float)dot;
                sums += xsum[b];
            }
            total += s[g * ROWS + r] * group - m[g * ROWS + r] * sums;
        }
        y[r] = total;
    }
#endif
}

#if defined(EDGECHAT_AVX2)
/* int4_tile for two activation rows at once (batches, prefill): each weight row's codes
 * are unpacked once for both; two weight rows a pass, so the accumulators stay in the
 * 16 vector registers. */
static void int4_tile_pair(const uint8_t *w, const float *s, const float *m,
                           const int8_t *const xq[2], const float *const xs[2],
                           const float *const xsum[2], int64_t K, int64_t G,
                           float y[2][ROWS]) {
    const int64_t per_group = G / QBLOCK, num_groups = K / G;
    const int64_t block_bytes = ROWS * (QBLOCK / 2);
    for (int half = 0; half < ROWS; half += 2) {
        __m256 acc[2][2];
        float zero_terms[2][2] = {{0}};
        for (int i = 0; i < 2; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
        for (int64_t g = 0; g < num_groups; g++) {
            __m256 group[2][2];
            float sums[2] = {0.0f, 0.0f};
            for (int i = 0; i < 2; i++) group[i][0] = group[i][1] = _mm256_setzero_ps();
            for (int64_t b = g * per_group; b < (g + 1) * per_group; b++) {
                const uint8_t *wb = w + b * block_bytes + half * (QBLOCK / 2);
                _mm_prefetch((const char *)(wb + PREFETCH_BYTES), _MM_HINT_T0);
                __m256i xv[2];
                __m256 scale[2];
                for (int i = 0; i < 2; i++) {
                    xv[i] = _mm256_loadu_si256((const __m256i *)(xq[i] + b * QBLOCK));
                    scale[i] = _mm256_set1_ps(xs[i][b]);
                    sums[i] += xsum[i][b];
                }
                for (int r = 0; r < 2; r++) {
                    const __m256i codes = codes_int4(wb + r * (QBLOCK / 2));
                    for (int i = 0; i < 2; i++) {
                        const __m256 dot = _mm256_cvtepi32_ps(dot_codes(codes, xv[i]));
                        group[i][r] = _mm256_fmadd_ps(dot, scale[i], group[i][r]);
                    }
                }
            }
            for (int i = 0; i < 2; i++)
                for (int r = 0; r < 2; r++) {
                    const int64_t at = g * ROWS + half + r;
                    acc[i][r] = _mm256_fmadd_ps(group[i][r], _mm256_set1_ps(s[at]), acc[i][r]);
                    zero_terms[i][r] += m[at] * sums[i];
                }
        }
        for (int i = 0; i < 2; i++)
            for (int r = 0; r < 2; r++) y[i][half + r] = hsum(acc[i][r]) - zero_terms[i][r];
    }
}
#endif

/* out's first ``rows`` values (plus bias, if any) into y */
static inline void store(float *y, const float *out, int64_t rows, const float *bias) {
    for (int64_t r = 0; r < rows; r++) y[r] = out[r] + (bias ? bias[r] : 0.0f);
}

static float int8_row(const int8_t *w, float s, const int8_t *xq, const float *xs, int64_t K) {
    float total = 0.0f;
    for (int64_t b = 0; b < K / QBLOCK; b++) {
        int dot = 0;
        for (int j = 0; j < QBLOCK; j++) dot += w[b * QBLOCK + j] * xq[b * QBLOCK + j];
        total += xs[b] * (float)dot;
    }
    return s * total;
}

/* An int8 weight's whole tiles of ROWS rows are runs of bytes like int4's (for each
 * 32-block, its 32 bytes of row 0, then of rows 1..ROWS-1); its last N % ROWS rows, if
 * any, stay plain rows after them. */
static void int8_tile(const int8_t *w, const float *s, const int8_t *xq, const float *xs,
                      int64_t K, float *y) {
    const int64_t block_bytes = ROWS * QBLOCK;
#if defined(EDGECHAT_AVX2)
    __m256 acc[ROWS];
    for (int r = 0; r < ROWS; r++) acc[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < K / QBLOCK; b++) {
        const int8_t *wb = w + b * block_bytes;
        _mm_prefetch((const char *)(wb + PREFETCH_BYTES), _MM_HINT_T0);
        _mm_prefetch((const char *)(wb + PREFETCH_BYTES + 64), _MM_HINT_T0);
        const __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + b * QBLOCK));
        const __m256i abs_x = _mm256_sign_epi8(xv, xv);
        const __m256 scale = _mm256_set1_ps(xs[b]);
        for (int r = 0; r < ROWS; r++) {
            const __m256i dot = dot_int8(wb + r * QBLOCK, xv, abs_x);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[r]);
        }
    }
    for (int r = 0; r < ROWS; r++) y[r] = s[r] * hsum(acc[r]);
#elif defined(EDGECHAT_NEON_DOT)
    float32x4_t acc[ROWS];
    for (int r = 0; r < ROWS; r++) acc[r] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < K / QBLOCK; b++) {
        const int8_t *wb = w + b * block_bytes;
        const int8x16_t x_low = vld1q_s8(xq + b * QBLOCK);
        const int8x16_t x_high = vld1q_s8(xq + b * QBLOCK + QBLOCK / 2);
        for (int r = 0; r < ROWS; r++) {
            int32x4_t dot = vdotq_s32(vdupq_n_s32(0), vld1q_s8(wb + r * QBLOCK), x_low);
            dot = vdotq_s32(dot, vld1q_s8(wb + r * QBLOCK + QBLOCK / 2), x_high);
            acc[r] = vfmaq_n_f32(acc[r], vcvtq_f32_s32(dot), xs[b]);
        }
    }
    for (int r = 0; r < ROWS; r++) y[r] = s[r] * vaddvq_f32(acc[r]);
#else
    for (int r = 0; r < ROWS; r++) {
        float total = 0.0f;
        for (int64_t b = 0; b < K / QBLOCK; b++) {
            const int8_t *wb = w + b * block_bytes + r * QBLOCK;
            int dot = 0;
            for (int j = 0; j < QBLOCK; j++) dot += wb[j] * xq[b * QBLOCK + j];
            total += xs[b] * (float)dot;
        }
        y[r] = s[r] * total;
    }
#endif
}

/* Scratch for x's quantized rows: codes [M, K], then scales and scaled sums [M, K/32]. */
typedef struct {
    int8_t *codes;
    float *scales, *scaled_sums;
} Quantized;

static int quantize(const float *x, int64_t M, int64_t K, Quantized *q) {
    const int64_t blocks = M * (K / QBLOCK);
    float *floats = malloc(sizeof(float) * 2 * blocks);
    int8_t *codes = malloc(M * K);
    if (!floats || !codes) {
        free(floats), free(codes);
        return -1;
    }
    q->codes = codes, q->scales = floats, q->scaled_sums = floats + blocks;
    edgechat_quantize_rows(x, M, K, q->codes, q->scales, q->scaled_sums);
    return 0;
}

static void release(Quantized *q) { free(q->codes), free(q->scales); }

/* y [M, N] = x @ W.T (+ bias) for x [M, K] fp32 and int4 W packed in tiles (N rounded up
 * to ROWS); bias may be NULL. The tiles are shared out among the threads; each tile's
 * bytes stay in L1 for all M rows of x. 0, or -1 when out of memory. */
int edgechat_int4_linear(const float *x, int64_t M, const uint8_t *w, const float *s,
                         const float *m, const float *bias, int64_t N, int64_t K, int64_t G,
                         float *y, int threads) {
    Quantized q;
    if (quantize(x, M, K, &q)) return -1;
    const int64_t nb = K / QBLOCK, num_groups = K / G, num_tiles = (N + ROWS - 1) / ROWS;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = 0; t < num_tiles; t++) {
        const int64_t n = t * ROWS, rows = N - n < ROWS ? N - n : ROWS;
        const uint8_t *wt = w + t * ROWS * (K / 2);
        const float *st = s + t * num_groups * ROWS, *mt = m + t * num_groups * ROWS;
        const float *bt = bias ? bias + n : NULL;
        int64_t i = 0;
#if defined(EDGECHAT_AVX2)
        for (; i + 1 < M; i += 2) {
            const int8_t *xq[2] = {q.codes + i * K, q.codes + (i + 1) * K};
            const float *xs[2] = {q.scales + i * nb, q.scales + (i + 1) * nb};
            const float *xsum[2] = {q.scaled_sums + i * nb, q.scaled_sums + (i + 1) * nb};
            float out[2][ROWS];
            int4_tile_pair(wt, st, mt, xq, xs, xsum, K, G, out);
            store(y + i * N + n, out[0], rows, bt);
            store(y + (i + 1) * N + n, out[1], rows, bt);
        }
#endif
        for (; i < M; i++) {
            float out[ROWS];
            int4_tile(wt, st, mt, q.codes + i * K, q.scales + i * nb, q.scaled_sums + i * nb, K,
                      G, out);
            store(y + i * N + n, out, rows, bt);
        }
    }
    release(&q);
    return 0;
}

/* y [M, N] = x @ W.T (+ bias) for int8 W [N, K] (tiled as above) with a scale per row */
int edgechat_int8_linear(const float *x, int64_t M, const int8_t *w, const float *s,
                         const float *bias, int64_t N, int64_t K, float *y, int threads) {
    Quantized q;
    if (quantize(x, M, K, &q)) return -1;
    const int64_t nb = K / QBLOCK, num_tiles = (N + ROWS - 1) / ROWS;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = 0; t < num_tiles; t++) {
        const int64_t n = t * ROWS;
        for (int64_t i = 0; i < M; i++) {
            const int8_t *xq = q.codes + i * K;
            const float *xs = q.scales + i * nb;
            float out[ROWS];
            const int64_t rows = n + ROWS <= N ? ROWS : N - n;
            if (rows == ROWS)
                int8_tile(w + n * K, s + n, xq, xs, K, out);
            else
                for (int64_t r = 0; r < rows; r++)
                    out[r] = int8_row(w + (n + r) * K, s[n + r], xq, xs, K);
            store(y + i * N + n, out, rows, bias ? bias + n : NULL);
        }
    }
    release(&q);
    return 0;
}

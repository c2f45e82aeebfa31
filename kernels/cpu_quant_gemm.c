/* Weight-only int4 and int8 matmuls for CPUs, with the activations quantized to int8 on
 * the fly: integer dot products of 32 weights at a time, summed in int32 over a block of
 * A in-features that shares one activation scale, then one float multiply-add per block.
 * torch's own CPU int4 kernel dequantizes every weight to float on AVX2 and runs at a
 * third of memory bandwidth; this one is memory bound for one row of activations, and
 * for a batch its float work is a fraction of the integer work. Built at run time by
 * kernels/cpu_native.py (-O3 -march=native -fopenmp); the torch twins are in
 * kernels/cpu_linear.py, which also picks A (``activation_block``).
 *
 * Activations x [M, K] fp32, quantized per row in blocks of A (a multiple of 32):
 *   xs[a] = max|x_a| / 127, xq = round(x / xs[a]) (half to even), xsum[a] = xs[a] * sum(xq_a).
 * int4 weights [N, K/2] bytes, per 32-block of a row 16 bytes: byte j holds code j (low
 * nibble) and code j + 16 (high nibble); w = q * s[n, g] - m[n, g] (m = z * s), A | G | K:
 *   y[m, n] = sum_a xs[a] * (s[n, g(a)] * dot(q_a, xq_a) - m[n, g(a)] * sum(xq_a)).
 * int8 weights [N, K] with a scale per row, A | K: y[m, n] = s[n] * sum_a xs[a] * dot(w_a, xq_a).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_native.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define EDGECHAT_AVX2 1
#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define EDGECHAT_AVX512 1 /* 512-bit tile passes (below); AVX2 for the rest */
#endif
#elif defined(__ARM_NEON) && defined(__ARM_FEATURE_DOTPROD)
#include <arm_neon.h>
#define EDGECHAT_NEON_DOT 1
#endif

#define QBLOCK 32 /* codes per vector of bytes */
#define ROWS 4    /* weight rows per tile: one activation block load serves four */
#define MAX_ACT_ROWS 8 /* activation rows a pass reads each weight vector for (AVX2, NEON: 4) */
#define PREFETCH_BYTES 1024 /* how far ahead of a tile's stream to prefetch */
#define INLINE static inline __attribute__((always_inline))

/* The primitives the passes below are written in, one set per instruction set:
 *   Bytes: 32 int8 activations (and, on AVX2, their absolute values);
 *   Codes: 32 weights as bytes; IntAcc: int32 partial dot products; FloatAcc: fp32 ones. */
#if defined(EDGECHAT_AVX2)
typedef struct { __m256i x, abs_x; } Bytes;
typedef __m256i Codes;
typedef __m256i IntAcc;
typedef __m256 FloatAcc;

INLINE Bytes load_bytes(const int8_t *x) {
    const __m256i v = _mm256_loadu_si256((const __m256i *)x);
    return (Bytes){v, _mm256_sign_epi8(v, v)};
}
/* 32 unsigned 4-bit codes (16 bytes) as 32 bytes */
INLINE Codes load_int4(const uint8_t *w) {
    const __m256i raw = _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)w));
    const __m256i both = _mm256_inserti128_si256(raw, _mm_srli_epi16(_mm256_castsi256_si128(raw), 4), 1);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}
INLINE Codes load_int8(const int8_t *w) { return _mm256_loadu_si256((const __m256i *)w); }
INLINE IntAcc int_zero(void) { return _mm256_setzero_si256(); }
/* acc + the dot of 32 unsigned bytes with 32 signed ones, as 8 int32 lanes (the pairs'
 * int16 sums fit: |u| <= 127 or u <= 15, |s| <= 127) */
INLINE IntAcc dot_unsigned(IntAcc acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(acc, u, s);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, u, s);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}
INLINE IntAcc dot_int4(IntAcc acc, Codes q, Bytes x) { return dot_unsigned(acc, q, x.x); }
INLINE IntAcc dot_int8(IntAcc acc, Codes w, Bytes x) {
    return dot_unsigned(acc, x.abs_x, _mm256_sign_epi8(w, x.x));
}
INLINE FloatAcc float_zero(void) { return _mm256_setzero_ps(); }
INLINE FloatAcc add_scaled(FloatAcc f, IntAcc acc, float scale) {
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), _mm256_set1_ps(scale), f);
}
INLINE float total(FloatAcc v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
INLINE void prefetch(const void *p) { _mm_prefetch((const char *)p, _MM_HINT_T0); }
#elif defined(EDGECHAT_NEON_DOT)
typedef struct { int8x16_t low, high; } Bytes;
typedef Bytes Codes;
typedef int32x4_t IntAcc;
typedef float32x4_t FloatAcc;

INLINE Bytes load_bytes(const int8_t *x) { return (Bytes){vld1q_s8(x), vld1q_s8(x + 16)}; }
INLINE Codes load_int4(const uint8_t *w) {
    const uint8x16_t raw = vld1q_u8(w);
    return (Codes){vreinterpretq_s8_u8(vandq_u8(raw, vdupq_n_u8(0x0F))),
                   vreinterpretq_s8_u8(vshrq_n_u8(raw, 4))};
}
INLINE Codes load_int8(const int8_t *w) { return load_bytes(w); }
INLINE IntAcc int_zero(void) { return vdupq_n_s32(0); }
INLINE IntAcc dot_int4(IntAcc acc, Codes q, Bytes x) {
    return vdotq_s32(vdotq_s32(acc, q.low, x.low), q.high, x.high);
}
INLINE IntAcc dot_int8(IntAcc acc, Codes w, Bytes x) { return dot_int4(acc, w, x); }
INLINE FloatAcc float_zero(void) { return vdupq_n_f32(0.0f); }
INLINE FloatAcc add_scaled(FloatAcc f, IntAcc acc, float scale) {
    return vfmaq_n_f32(f, vcvtq_f32_s32(acc), scale);
}
INLINE float total(FloatAcc v) { return vaddvq_f32(v); }
INLINE void prefetch(const void *p) { __builtin_prefetch(p); }
#else
typedef struct { int8_t v[QBLOCK]; } Bytes;
typedef Bytes Codes;
typedef int32_t IntAcc;
typedef float FloatAcc;

INLINE Bytes load_bytes(const int8_t *x) {
    Bytes b;
    memcpy(b.v, x, QBLOCK);
    return b;
}
INLINE Codes load_int4(const uint8_t *w) {
    Codes q;
    for (int j = 0; j < QBLOCK / 2; j++) q.v[j] = w[j] & 0x0F, q.v[j + QBLOCK / 2] = w[j] >> 4;
    return q;
}
INLINE Codes load_int8(const int8_t *w) { return load_bytes(w); }
INLINE IntAcc int_zero(void) { return 0; }
INLINE IntAcc dot_int4(IntAcc acc, Codes q, Bytes x) {
    for (int j = 0; j < QBLOCK; j++) acc += q.v[j] * x.v[j];
    return acc;
}
INLINE IntAcc dot_int8(IntAcc acc, Codes w, Bytes x) { return dot_int4(acc, w, x); }
INLINE FloatAcc float_zero(void) { return 0.0f; }
INLINE FloatAcc add_scaled(FloatAcc f, IntAcc acc, float scale) { return f + (float)acc * scale; }
INLINE float total(FloatAcc v) { return v; }
INLINE void prefetch(const void *p) { (void)p; }
#endif

const char *edgechat_simd(void) {
#if defined(EDGECHAT_AVX512)
    return "avx512-vnni";
#elif defined(EDGECHAT_AVX2) && ((defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__))
    return "avx2-vnni";
#elif defined(EDGECHAT_AVX2)
    return "avx2";
#elif defined(EDGECHAT_NEON_DOT)
    return "neon-dotprod";
#else
    return "portable";
#endif
}

/* One block of A activations (a multiple of 32) to int8 codes; its scale and its scale
 * times the codes' sum. Rounding is to nearest even, as the twin's torch.round (the
 * vector conversions round so under the default floating-point environment). */
static void quantize_block(const float *x, int64_t A, int8_t *q, float *scale_out,
                           float *scaled_sum_out) {
#if defined(EDGECHAT_AVX2)
    __m256 amax = _mm256_setzero_ps();
    for (int64_t j = 0; j < A; j += 8)
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_loadu_ps(x + j)));
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    const float scale = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m))) / 127.0f;
    const __m256 inverse = _mm256_set1_ps(scale > 0.0f ? 1.0f / scale : 0.0f);
    /* packs interleave the 128-bit lanes: this puts the 4-byte groups back in order */
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    __m256i sums = _mm256_setzero_si256();
    for (int64_t j = 0; j < A; j += QBLOCK) {
        __m256i v[4];
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + j + 8 * k), inverse));
            sums = _mm256_add_epi32(sums, v[k]);
        }
        const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]),
                                                 _mm256_packs_epi32(v[2], v[3]));
        _mm256_storeu_si256((__m256i *)(q + j), _mm256_permutevar8x32_epi32(bytes, order));
    }
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(sums), _mm256_extracti128_si256(sums, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    const int sum = _mm_cvtsi128_si32(s);
#elif defined(EDGECHAT_NEON_DOT)
    float32x4_t amax = vdupq_n_f32(0.0f);
    for (int64_t j = 0; j < A; j += 4) amax = vmaxq_f32(amax, vabsq_f32(vld1q_f32(x + j)));
    const float scale = vmaxvq_f32(amax) / 127.0f;
    const float inverse = scale > 0.0f ? 1.0f / scale : 0.0f;
    int32x4_t sums = vdupq_n_s32(0);
    for (int64_t j = 0; j < A; j += 8) {
        const int32x4_t low = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x + j), inverse));
        const int32x4_t high = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x + j + 4), inverse));
        sums = vaddq_s32(sums, vaddq_s32(low, high));
        vst1_s8(q + j, vqmovn_s16(vcombine_s16(vqmovn_s32(low), vqmovn_s32(high))));
    }
    const int sum = vaddvq_s32(sums);
#else
    float amax = 0.0f;
    for (int64_t j = 0; j < A; j++) amax = fmaxf(amax, fabsf(x[j]));
    const float scale = amax / 127.0f;
    const float inverse = scale > 0.0f ? 1.0f / scale : 0.0f;
    int sum = 0;
    for (int64_t j = 0; j < A; j++) {
        const int code = (int)nearbyintf(x[j] * inverse);
        q[j] = (int8_t)code;
        sum += code;
    }
#endif
    *scale_out = scale;
    *scaled_sum_out = scale * (float)sum;
}

/* xq [M, K] int8, xs and xsum [M, K/A] */
void edgechat_quantize_rows(const float *x, int64_t M, int64_t K, int64_t A, int8_t *xq,
                            float *xs, float *xsum) {
    for (int64_t i = 0; i < M * (K / A); i++) quantize_block(x + i * A, A, xq + i * A, xs + i, xsum + i);
}

/* x's quantized rows: codes [M, K], then scales and scaled sums [M, K/A] */
typedef struct {
    int8_t *codes;
    float *scales, *scaled_sums;
    int64_t K, A;
} Activations;

static int quantize(const float *x, int64_t M, int64_t K, int64_t A, Activations *q) {
    const int64_t blocks = M * (K / A);
    float *floats = malloc(sizeof(float) * 2 * blocks);
    int8_t *codes = malloc(M * K);
    if (!floats || !codes) {
        free(floats), free(codes);
        return -1;
    }
    *q = (Activations){codes, floats, floats + blocks, K, A};
    edgechat_quantize_rows(x, M, K, A, q->codes, q->scales, q->scaled_sums);
    return 0;
}

static void release(Activations *q) { free(q->codes), free(q->scales); }

/* Where a weight row's 32-blocks lie: block b of row r at w + b * block_step + r * row_step.
 * A tile of ROWS rows is one run of bytes (for each 32-block, that block of row 0, then
 * of rows 1..ROWS-1), so that it streams from memory in order; a plain row is its own run. */
typedef struct {
    int64_t block_step, row_step;
} Layout;

/* out[i][r] += the int4 dot products of NI activation rows (from i0) with NW weight rows
 * (from r0) of one tile, for the tile's scales and offsets [K/G][ROWS]. NI and NW are
 * constants where this is inlined, so the accumulators live in registers. */
INLINE void int4_pass(const uint8_t *w, const float *s, const float *m, const Activations *a,
                      int64_t i0, const int NI, const int r0, const int NW, int64_t G,
                      float out[MAX_ACT_ROWS][ROWS]) {
    const int64_t per_block = a->A / QBLOCK, num_blocks = a->K / a->A, tile_bytes = QBLOCK / 2;
    const int64_t K = a->K;
    FloatAcc f[MAX_ACT_ROWS][ROWS];
    float zero_terms[MAX_ACT_ROWS][ROWS] = {{0}};
    for (int i = 0; i < NI; i++)
        for (int r = 0; r < NW; r++) f[i][r] = float_zero();
    for (int64_t ab = 0; ab < num_blocks; ab++) {
        IntAcc acc[MAX_ACT_ROWS][ROWS];
        for (int i = 0; i < NI; i++)
            for (int r = 0; r < NW; r++) acc[i][r] = int_zero();
        for (int64_t b = ab * per_block; b < (ab + 1) * per_block; b++) {
            const uint8_t *wb = w + (b * ROWS + r0) * tile_bytes;
            prefetch(wb + PREFETCH_BYTES);
            Bytes x[MAX_ACT_ROWS];
            for (int i = 0; i < NI; i++) x[i] = load_bytes(a->codes + (i0 + i) * K + b * QBLOCK);
            for (int r = 0; r < NW; r++) {
                const Codes q = load_int4(wb + r * tile_bytes);
                for (int i = 0; i < NI; i++) acc[i][r] = dot_int4(acc[i][r], q, x[i]);
            }
        }
        const int64_t g = ab * a->A / G;
        for (int i = 0; i < NI; i++) {
            const float xs = a->scales[(i0 + i) * num_blocks + ab];
            const float xsum = a->scaled_sums[(i0 + i) * num_blocks + ab];
            for (int r = 0; r < NW; r++) {
                f[i][r] = add_scaled(f[i][r], acc[i][r], xs * s[g * ROWS + r0 + r]);
                zero_terms[i][r] += m[g * ROWS + r0 + r] * xsum;
            }
        }
    }
    for (int i = 0; i < NI; i++)
        for (int r = 0; r < NW; r++) out[i][r0 + r] = total(f[i][r]) - zero_terms[i][r];
}

/* out[i][r] = the int8 dot products (before the rows' scales) of NI activation rows (from
 * i0) with NW weight rows (from r0) laid out from w as ``layout`` says */
INLINE void int8_pass(const int8_t *w, Layout layout, const Activations *a, int64_t i0,
                      const int NI, const int r0, const int NW, float out[MAX_ACT_ROWS][ROWS]) {
    const int64_t per_block = a->A / QBLOCK, num_blocks = a->K / a->A, K = a->K;
    FloatAcc f[MAX_ACT_ROWS][ROWS];
    for (int i = 0; i < NI; i++)
        for (int r = 0; r < NW; r++) f[i][r] = float_zero();
    for (int64_t ab = 0; ab < num_blocks; ab++) {
        IntAcc acc[MAX_ACT_ROWS][ROWS];
        for (int i = 0; i < NI; i++)
            for (int r = 0; r < NW; r++) acc[i][r] = int_zero();
        for (int64_t b = ab * per_block; b < (ab + 1) * per_block; b++) {
            const int8_t *wb = w + b * layout.block_step;
            prefetch(wb + PREFETCH_BYTES);
            prefetch(wb + PREFETCH_BYTES + 64);
            Bytes x[MAX_ACT_ROWS];
            for (int i = 0; i < NI; i++) x[i] = load_bytes(a->codes + (i0 + i) * K + b * QBLOCK);
            for (int r = 0; r < NW; r++) {
                const Codes q = load_int8(wb + (r0 + r) * layout.row_step);
                for (int i = 0; i < NI; i++) acc[i][r] = dot_int8(acc[i][r], q, x[i]);
            }
        }
        for (int i = 0; i < NI; i++) {
            const float xs = a->scales[(i0 + i) * num_blocks + ab];
            for (int r = 0; r < NW; r++) f[i][r] = add_scaled(f[i][r], acc[i][r], xs);
        }
    }
    for (int i = 0; i < NI; i++)
        for (int r = 0; r < NW; r++) out[i][r0 + r] = total(f[i][r]);
}

/* y's rows i0.. (NI of them), columns n..n+rows: out times the rows' scales, if any, plus
 * the bias, if any */
static void scale_and_store(float *y, int64_t N, int64_t i0, int NI, int64_t n, int64_t rows,
                            float out[MAX_ACT_ROWS][ROWS], const float *s, const float *bias) {
    for (int i = 0; i < NI; i++)
        for (int64_t r = 0; r < rows; r++)
            y[(i0 + i) * N + n + r] = out[i][r] * (s ? s[r] : 1.0f) + (bias ? bias[n + r] : 0.0f);
}

#if defined(EDGECHAT_AVX512)
/* With 512-bit vectors one load holds a whole tile's 32-block (int4: 4 rows x 16 bytes;
 * int8: 2 rows x 32 bytes), and the 32 registers hold the sums of 8 activation rows. In
 * a vector of partial sums, lane l belongs to the row its bytes came from. */

/* v[0..3], each four times: a per-row value for the int4 tile's lanes */
INLINE __m512 per_row(const float *v) {
    const __m512i quad = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    return _mm512_permutexvar_ps(quad, _mm512_castps128_ps512(_mm_loadu_ps(v)));
}
/* v[0..3] in the first lane of each row's four, zeros elsewhere: a term counted once */
INLINE __m512 once_per_row(const float *v) {
    return _mm512_maskz_mov_ps(0x1111, per_row(v));
}
/* out[0..3] = the sums of each 128-bit quarter's four lanes */
INLINE void store_quarter_sums(__m512 f, float *out) {
    f = _mm512_add_ps(f, _mm512_permute_ps(f, _MM_SHUFFLE(2, 3, 0, 1)));
    f = _mm512_add_ps(f, _mm512_permute_ps(f, _MM_SHUFFLE(1, 0, 3, 2)));
    const __m512i firsts = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm_storeu_ps(out, _mm512_castps512_ps128(_mm512_permutexvar_ps(firsts, f)));
}
/* 16 activation bytes in each 128-bit quarter; 32 in each half */
INLINE __m512i quarters(const int8_t *x) {
    return _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)x));
}
INLINE __m512i halves(const int8_t *x) {
    return _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)x));
}

/* out[i][r] = the int4 dot products of NI activation rows (from i0) with one tile's rows,
 * for the tile's scales and offsets [K/G][ROWS]; low and high nibbles (codes j and
 * j + 16 of a 32-block) sum apart, so that no accumulator waits on its last product. */
INLINE void int4_tile_pass(const uint8_t *w, const float *s, const float *m,
                           const Activations *a, int64_t i0, const int NI, int64_t G,
                           float out[MAX_ACT_ROWS][ROWS]) {
    const int64_t per_block = a->A / QBLOCK, num_blocks = a->K / a->A, K = a->K;
    const __m512i nibble = _mm512_set1_epi8(0x0F);
    __m512 f[MAX_ACT_ROWS];
    for (int i = 0; i < NI; i++) f[i] = _mm512_setzero_ps();
    for (int64_t ab = 0; ab < num_blocks; ab++) {
        __m512i low[MAX_ACT_ROWS], high[MAX_ACT_ROWS];
        for (int i = 0; i < NI; i++) low[i] = high[i] = _mm512_setzero_si512();
        for (int64_t b = ab * per_block; b < (ab + 1) * per_block; b++) {
            const uint8_t *wb = w + b * ROWS * (QBLOCK / 2);
            prefetch(wb + PREFETCH_BYTES);
            const __m512i raw = _mm512_loadu_si512(wb);
            const __m512i q_low = _mm512_and_si512(raw, nibble);
            const __m512i q_high = _mm512_and_si512(_mm512_srli_epi16(raw, 4), nibble);
            for (int i = 0; i < NI; i++) {
                const int8_t *xb = a->codes + (i0 + i) * K + b * QBLOCK;
                low[i] = _mm512_dpbusd_epi32(low[i], q_low, quarters(xb));
                high[i] = _mm512_dpbusd_epi32(high[i], q_high, quarters(xb + QBLOCK / 2));
            }
        }
        const int64_t g = ab * a->A / G;
        const __m512 scale = per_row(s + g * ROWS), offset = once_per_row(m + g * ROWS);
        for (int i = 0; i < NI; i++) {
            const int64_t at = (i0 + i) * num_blocks + ab;
            const __m512 dots = _mm512_cvtepi32_ps(_mm512_add_epi32(low[i], high[i]));
            f[i] = _mm512_fmadd_ps(dots, _mm512_mul_ps(scale, _mm512_set1_ps(a->scales[at])), f[i]);
            f[i] = _mm512_fnmadd_ps(offset, _mm512_set1_ps(a->scaled_sums[at]), f[i]);
        }
    }
    for (int i = 0; i < NI; i++) store_quarter_sums(f[i], out[i]);
}

static void int4_tile(const uint8_t *w, const float *s, const float *m, const Activations *a,
                      int64_t M, int64_t G, float *y, int64_t N, int64_t n, int64_t rows,
                      const float *bias) {
    float out[MAX_ACT_ROWS][ROWS];
    int64_t i = 0;
    for (; i + 8 <= M; i += 8) {
        int4_tile_pass(w, s, m, a, i, 8, G, out);
        scale_and_store(y, N, i, 8, n, rows, out, NULL, bias);
    }
    if (i + 4 <= M) {
        int4_tile_pass(w, s, m, a, i, 4, G, out);
        scale_and_store(y, N, i, 4, n, rows, out, NULL, bias);
        i += 4;
    }
    if (i + 2 <= M) {
        int4_tile_pass(w, s, m, a, i, 2, G, out);
        scale_and_store(y, N, i, 2, n, rows, out, NULL, bias);
        i += 2;
    }
    if (i < M) {
        int4_tile_pass(w, s, m, a, i, 1, G, out);
        scale_and_store(y, N, i, 1, n, rows, out, NULL, bias);
    }
}

/* out[i][r] = the int8 dot products (before the rows' scales) of NI activation rows (from
 * i0) with one whole tile's rows. dpbusd takes unsigned bytes on one side: the
 * activations shifted by 128 (x ^ 0x80), and 128 times each weight row's sum taken off. */
INLINE void int8_tile_pass(const int8_t *w, const Activations *a, int64_t i0, const int NI,
                           float out[MAX_ACT_ROWS][ROWS]) {
    const int64_t per_block = a->A / QBLOCK, num_blocks = a->K / a->A, K = a->K;
    const __m512i ones = _mm512_set1_epi8(1), shift = _mm512_set1_epi8((char)0x80);
    __m512 f01[MAX_ACT_ROWS / 2], f23[MAX_ACT_ROWS / 2]; /* rows 0 and 1; rows 2 and 3 */
    for (int i = 0; i < NI; i++) f01[i] = f23[i] = _mm512_setzero_ps();
    for (int64_t ab = 0; ab < num_blocks; ab++) {
        __m512i acc01[MAX_ACT_ROWS / 2], acc23[MAX_ACT_ROWS / 2];
        __m512i sum01 = _mm512_setzero_si512(), sum23 = _mm512_setzero_si512();
        for (int i = 0; i < NI; i++) acc01[i] = acc23[i] = _mm512_setzero_si512();
        for (int64_t b = ab * per_block; b < (ab + 1) * per_block; b++) {
            const int8_t *wb = w + b * ROWS * QBLOCK;
            prefetch(wb + PREFETCH_BYTES);
            prefetch(wb + PREFETCH_BYTES + 64);
            const __m512i w01 = _mm512_loadu_si512(wb), w23 = _mm512_loadu_si512(wb + 2 * QBLOCK);
            sum01 = _mm512_dpbusd_epi32(sum01, ones, w01);
            sum23 = _mm512_dpbusd_epi32(sum23, ones, w23);
            for (int i = 0; i < NI; i++) {
                const __m512i x = _mm512_xor_si512(halves(a->codes + (i0 + i) * K + b * QBLOCK), shift);
                acc01[i] = _mm512_dpbusd_epi32(acc01[i], x, w01);
                acc23[i] = _mm512_dpbusd_epi32(acc23[i], x, w23);
            }
        }
        sum01 = _mm512_slli_epi32(sum01, 7), sum23 = _mm512_slli_epi32(sum23, 7);
        for (int i = 0; i < NI; i++) {
            const __m512 xs = _mm512_set1_ps(a->scales[(i0 + i) * num_blocks + ab]);
            f01[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc01[i], sum01)), xs, f01[i]);
            f23[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc23[i], sum23)), xs, f23[i]);
        }
    }
    for (int i = 0; i < NI; i++) {
        /* quarters (row 0, row 0, row 1, row 1) and (row 2, ...): one row a quarter */
        const __m512 even = _mm512_shuffle_f32x4(f01[i], f23[i], _MM_SHUFFLE(2, 0, 2, 0));
        const __m512 odd = _mm512_shuffle_f32x4(f01[i], f23[i], _MM_SHUFFLE(3, 1, 3, 1));
        store_quarter_sums(_mm512_add_ps(even, odd), out[i]);
    }
}

/* An int8 tile's passes: 4 activation rows at a time, as its sums fill the registers */
static void int8_tile(const int8_t *w, const float *s, const Activations *a, int64_t M,
                      float *y, int64_t N, int64_t n, const float *bias) {
    float out[MAX_ACT_ROWS][ROWS];
    int64_t i = 0;
    for (; i + 4 <= M; i += 4) {
        int8_tile_pass(w, a, i, 4, out);
        scale_and_store(y, N, i, 4, n, ROWS, out, s, bias);
    }
    for (; i + 2 <= M; i += 2) {
        int8_tile_pass(w, a, i, 2, out);
        scale_and_store(y, N, i, 2, n, ROWS, out, s, bias);
    }
    for (; i < M; i++) {
        int8_tile_pass(w, a, i, 1, out);
        scale_and_store(y, N, i, 1, n, ROWS, out, s, bias);
    }
}
#else
/* A tile's passes: two weight rows a pass when several activation rows share it, so that
 * the accumulators fit the registers. */
static void int4_tile(const uint8_t *w, const float *s, const float *m, const Activations *a,
                      int64_t M, int64_t G, float *y, int64_t N, int64_t n, int64_t rows,
                      const float *bias) {
    float out[MAX_ACT_ROWS][ROWS];
    int64_t i = 0;
    for (; i + 4 <= M; i += 4) {
        int4_pass(w, s, m, a, i, 4, 0, 2, G, out);
        int4_pass(w, s, m, a, i, 4, 2, 2, G, out);
        scale_and_store(y, N, i, 4, n, rows, out, NULL, bias);
    }
    for (; i + 2 <= M; i += 2) {
        int4_pass(w, s, m, a, i, 2, 0, 2, G, out);
        int4_pass(w, s, m, a, i, 2, 2, 2, G, out);
        scale_and_store(y, N, i, 2, n, rows, out, NULL, bias);
    }
    for (; i < M; i++) {
        int4_pass(w, s, m, a, i, 1, 0, 4, G, out);
        scale_and_store(y, N, i, 1, n, rows, out, NULL, bias);
    }
}

static void int8_tile(const int8_t *w, const float *s, const Activations *a, int64_t M,
                      float *y, int64_t N, int64_t n, const float *bias) {
    const Layout tile = {ROWS * QBLOCK, QBLOCK};
    float out[MAX_ACT_ROWS][ROWS];
    int64_t i = 0;
    for (; i + 4 <= M; i += 4) {
        int8_pass(w, tile, a, i, 4, 0, 2, out);
        int8_pass(w, tile, a, i, 4, 2, 2, out);
        scale_and_store(y, N, i, 4, n, ROWS, out, s, bias);
    }
    for (; i < M; i++) {
        int8_pass(w, tile, a, i, 1, 0, 4, out);
        scale_and_store(y, N, i, 1, n, ROWS, out, s, bias);
    }
}
#endif

/* y [M, N] = x @ W.T (+ bias) for x [M, K] fp32 and int4 W packed in tiles (N rounded up
 * to ROWS), activations in blocks of A; bias may be NULL. The tiles are shared out among
 * the threads; each tile's bytes stay in L1 for all M rows of x, read once per pass.
 * 0, or -1 when out of memory. */
int edgechat_int4_linear(const float *x, int64_t M, const uint8_t *w, const float *s,
                         const float *m, const float *bias, int64_t N, int64_t K, int64_t G,
                         int64_t A, float *y, int threads) {
    Activations a;
    if (quantize(x, M, K, A, &a)) return -1;
    const int64_t num_groups = K / G, num_tiles = (N + ROWS - 1) / ROWS;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = 0; t < num_tiles; t++) {
        const int64_t n = t * ROWS, rows = N - n < ROWS ? N - n : ROWS;
        int4_tile(w + t * ROWS * (K / 2), s + t * num_groups * ROWS, m + t * num_groups * ROWS,
                  &a, M, G, y, N, n, rows, bias);
    }
    release(&a);
    return 0;
}

/* The last N % ROWS rows of an int8 weight, plain rows after its whole tiles */
static void int8_plain_rows(const int8_t *w, const float *s, const Activations *a, int64_t M,
                            float *y, int64_t N, int64_t n, int64_t rows, const float *bias) {
    const Layout plain = {QBLOCK, a->K};
    float out[MAX_ACT_ROWS][ROWS];
    for (int64_t i = 0; i < M; i++) {
        for (int r = 0; r < rows; r++) int8_pass(w, plain, a, i, 1, r, 1, out);
        scale_and_store(y, N, i, 1, n, rows, out, s, bias);
    }
}

/* y [M, N] = x @ W.T (+ bias) for int8 W [N, K] with a scale per row, activations in
 * blocks of A. Its whole tiles of ROWS rows are runs of bytes like int4's (for each
 * 32-block, its 32 bytes of row 0, then of rows 1..ROWS-1); its last N % ROWS rows, if
 * any, stay plain rows after them. */
int edgechat_int8_linear(const float *x, int64_t M, const int8_t *w, const float *s,
                         const float *bias, int64_t N, int64_t K, int64_t A, float *y,
                         int threads) {
    Activations a;
    if (quantize(x, M, K, A, &a)) return -1;
    const int64_t num_tiles = (N + ROWS - 1) / ROWS;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = 0; t < num_tiles; t++) {
        const int64_t n = t * ROWS, rows = n + ROWS <= N ? ROWS : N - n;
        if (rows == ROWS) int8_tile(w + n * K, s + n, &a, M, y, N, n, bias);
        else int8_plain_rows(w + n * K, s + n, &a, M, y, N, n, rows, bias);
    }
    release(&a);
    return 0;
}

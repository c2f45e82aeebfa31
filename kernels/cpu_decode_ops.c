/* The fp32 ops of a decoder layer between its linears, for CPUs: RMSNorm (with the
 * residual add before it), the rotary embedding with the KV cache write, decode
 * attention over the paged cache, and SiLU-and-multiply. Each is one call where torch
 * takes 3-25 ops, whose dispatch costs more than a decode row's arithmetic. Plain C that
 * the compiler vectorizes (-O3 -march=native); built with cpu_quant_gemm.c into one
 * library by kernels/cpu_native.py. The twins are in kernels/reference.py, and
 * kernels/cpu_ops.py says which calls come here.
 *
 * KV pool per layer, for K and for V: [num_blocks, block_size, num_kv_heads, head_dim];
 * token position p of a sequence lives at slot block_table[p / block_size] * block_size
 * + p % block_size.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "cpu_native.h"

/* Work under this many floats is not worth waking the other threads for. */
#define PARALLEL_MIN (1 << 15)

/* e^x, vectorizable: x = n ln2 + r with |r| <= ln2 / 2, e^r by Cephes' expf polynomial
 * (about 1 ulp), times 2^n through the exponent bits. x is clamped to [-87.3, 88.3],
 * where e^x is a normal float: all that softmax (x <= 0) and SiLU need of the tails. */
static inline float exp_approx(float x) {
    x = fminf(fmaxf(x, -87.3f), 88.3f);
    const float n = nearbyintf(x * 1.44269504088896341f);
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float er = p * r * r + r + 1.0f;
    union { int32_t i; float f; } scale = {.i = ((int32_t)n + 127) << 23};
    return er * scale.f;
}

/* out = RMSNorm(x + residual) * weight, residual_out = x + residual, per row of hidden;
 * without a residual (NULL) the norm of x alone. Statistics in fp32. */
void edgechat_add_rms_norm(const float *x, const float *residual, const float *weight,
                           int64_t rows, int64_t hidden, float eps, float *out,
                           float *residual_out, int threads) {
#pragma omp parallel for num_threads(threads) if (rows * hidden >= PARALLEL_MIN) schedule(static)
    for (int64_t i = 0; i < rows; i++) {
        const float *a = x + i * hidden;
        float *sum_row = residual ? residual_out + i * hidden : NULL;
        float squares = 0.0f;
        if (residual) {
            const float *b = residual + i * hidden;
#pragma omp simd reduction(+ : squares)
            for (int64_t j = 0; j < hidden; j++) {
                sum_row[j] = a[j] + b[j];
                squares += sum_row[j] * sum_row[j];
            }
            a = sum_row;
        } else {
#pragma omp simd reduction(+ : squares)
            for (int64_t j = 0; j < hidden; j++) squares += a[j] * a[j];
        }
        const float inverse = 1.0f / sqrtf(squares / (float)hidden + eps);
        float *o = out + i * hidden;
#pragma omp simd
        for (int64_t j = 0; j < hidden; j++) o[j] = weight[j] * (a[j] * inverse);
    }
}

/* out [rows, width] = silu(gate) * up for x [rows, 2 * width] = (gate, up) */
void edgechat_silu_and_mul(const float *x, int64_t rows, int64_t width, float *out,
                           int threads) {
#pragma omp parallel for num_threads(threads) if (rows * width >= PARALLEL_MIN) schedule(static)
    for (int64_t i = 0; i < rows; i++) {
        const float *gate = x + i * 2 * width, *up = gate + width;
        float *o = out + i * width;
#pragma omp simd
        for (int64_t j = 0; j < width; j++) o[j] = gate[j] / (1.0f + exp_approx(-gate[j])) * up[j];
    }
}

/* Each head's halves (x1, x2) to (x1 cos - x2 sin, x2 cos + x1 sin) */
static inline void rotate_heads(const float *x, int64_t heads, int64_t head_dim,
                                const float *cos, const float *sin, float *out) {
    const int64_t half = head_dim / 2;
    for (int64_t h = 0; h < heads; h++) {
        const float *x1 = x + h * head_dim, *x2 = x1 + half;
        float *o1 = out + h * head_dim, *o2 = o1 + half;
#pragma omp simd
        for (int64_t j = 0; j < half; j++) {
            const float a = x1[j], b = x2[j];
            o1[j] = a * cos[j] - b * sin[j];
            o2[j] = b * cos[j] + a * sin[j];
        }
    }
}

/* Rotate each token's query heads into query_out [tokens, heads, head_dim] and its key
 * heads into the K cache at its slot, and copy its value heads into the V cache there (a
 * negative slot: the query only). A token's heads are contiguous; from one token to the
 * next query, key and value step by their own strides (views of one qkv row). Token t
 * turns by row rows[t] of cos and sin [*, head_dim / 2]. */
void edgechat_rotary_write_kv(const int64_t *rows, const float *query, int64_t query_stride,
                              const float *key, int64_t key_stride, const float *value,
                              int64_t value_stride, int64_t tokens, int64_t heads,
                              int64_t kv_heads, int64_t head_dim, const float *cos,
                              const float *sin, float *k_cache, float *v_cache,
                              const int64_t *slots, float *query_out, int threads) {
    const int64_t half = head_dim / 2, kv_width = kv_heads * head_dim;
#pragma omp parallel for num_threads(threads) \
    if (tokens * (heads + kv_heads) * head_dim >= PARALLEL_MIN) schedule(static)
    for (int64_t t = 0; t < tokens; t++) {
        const float *c = cos + rows[t] * half, *s = sin + rows[t] * half;
        rotate_heads(query + t * query_stride, heads, head_dim, c, s,
                     query_out + t * heads * head_dim);
        if (slots[t] < 0) continue;
        rotate_heads(key + t * key_stride, kv_heads, head_dim, c, s, k_cache + slots[t] * kv_width);
        const float *v = value + t * value_stride;
        float *v_out = v_cache + slots[t] * kv_width;
        for (int64_t j = 0; j < kv_width; j++) v_out[j] = v[j];
    }
}

/* One sequence's query heads of one KV head (group of them, rows of head_dim at q)
 * attended over its first seq_len cached tokens; scores: group * seq_len scratch. */
static void attend_group(const float *q, int64_t group, const float *k_cache,
                         const float *v_cache, const int32_t *table, int64_t seq_len,
                         int64_t block_size, int64_t kv_width, int64_t head_dim, float scale,
                         float *scores, float *out) {
    for (int64_t p = 0; p < seq_len; p++) {
        const int64_t slot = (int64_t)table[p / block_size] * block_size + p % block_size;
        const float *k = k_cache + slot * kv_width;
        for (int64_t g = 0; g < group; g++) {
            const float *qg = q + g * head_dim;
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int64_t j = 0; j < head_dim; j++) dot += qg[j] * k[j];
            scores[g * seq_len + p] = dot * scale;
        }
    }
    for (int64_t g = 0; g < group; g++) {
        float *row = scores + g * seq_len, top = -INFINITY, total = 0.0f;
        for (int64_t p = 0; p < seq_len; p++) top = fmaxf(top, row[p]);
#pragma omp simd reduction(+ : total)
        for (int64_t p = 0; p < seq_len; p++) {
            row[p] = exp_approx(row[p] - top);
            total += row[p];
        }
        const float inverse = 1.0f / total;
        for (int64_t p = 0; p < seq_len; p++) row[p] *= inverse;
    }
    for (int64_t j = 0; j < group * head_dim; j++) out[j] = 0.0f;
    for (int64_t p = 0; p < seq_len; p++) {
        const int64_t slot = (int64_t)table[p / block_size] * block_size + p % block_size;
        const float *v = v_cache + slot * kv_width;
        for (int64_t g = 0; g < group; g++) {
            const float weight = scores[g * seq_len + p];
            float *o = out + g * head_dim;
#pragma omp simd
            for (int64_t j = 0; j < head_dim; j++) o[j] += weight * v[j];
        }
    }
}

/* Decode attention: sequence i's one query [heads, head_dim] (query [seqs, heads,
 * head_dim]) over its seq_lens[i] cached tokens, block table row i of block_tables
 * (table_stride ints apart). Grouped query heads share their KV head, whose rows are
 * read once for the group. 0, or -1 when out of memory. */
int edgechat_decode_attention(const float *query, const float *k_cache, const float *v_cache,
                              const int32_t *block_tables, int64_t table_stride,
                              const int32_t *seq_lens, int64_t seqs, int64_t heads,
                              int64_t kv_heads, int64_t head_dim, int64_t block_size,
                              float scale, float *out, int threads) {
    const int64_t group = heads / kv_heads, kv_width = kv_heads * head_dim;
    int64_t longest = 0, work = 0;
    for (int64_t i = 0; i < seqs; i++) {
        longest = seq_lens[i] > longest ? seq_lens[i] : longest;
        work += seq_lens[i];
    }
    int failed = 0;
#pragma omp parallel num_threads(threads) if (work * heads * head_dim >= PARALLEL_MIN)
    {
        float *scores = malloc(sizeof(float) * group * (longest > 0 ? longest : 1));
        if (!scores) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic)
        for (int64_t task = 0; task < seqs * kv_heads; task++) {
            if (!scores) continue;
            const int64_t i = task / kv_heads, h = task % kv_heads;
            const int64_t at = (i * heads + h * group) * head_dim;
            attend_group(query + at, group, k_cache + h * head_dim, v_cache + h * head_dim,
                         block_tables + i * table_stride, seq_lens[i], block_size, kv_width,
                         head_dim, scale, scores, out + at);
        }
        free(scores);
    }
    return failed ? -1 : 0;
}

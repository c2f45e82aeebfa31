/* What the native CPU library (kernels/cpu_native.py builds it from cpu_quant_gemm.c,
 * cpu_decode_ops.c and cpu_decode_layer.c) exports, for its own files and for
 * tests/kernels/native_check.c. Each function is described where it is defined. */
#ifndef EDGECHAT_CPU_NATIVE_H
#define EDGECHAT_CPU_NATIVE_H
#include <stdint.h>

/* cpu_quant_gemm.c: the weight layers */
const char *edgechat_simd(void);
void edgechat_quantize_rows(const float *x, int64_t M, int64_t K, int64_t A, int8_t *xq,
                            float *xs, float *xsum);
int edgechat_int4_linear(const float *x, int64_t M, const uint8_t *w, const float *s,
                         const float *m, const float *bias, int64_t N, int64_t K, int64_t G,
                         int64_t A, float *y, int threads);
int edgechat_int8_linear(const float *x, int64_t M, const int8_t *w, const float *s,
                         const float *bias, int64_t N, int64_t K, int64_t A, float *y,
                         int threads);

/* cpu_decode_ops.c: the fp32 ops between them */
void edgechat_add_rms_norm(const float *x, const float *residual, const float *weight,
                           int64_t rows, int64_t hidden, float eps, float *out,
                           float *residual_out, int threads);
void edgechat_silu_and_mul(const float *x, int64_t rows, int64_t width, float *out,
                           int threads);
void edgechat_rotary_write_kv(const int64_t *rows, const float *query, int64_t query_stride,
                              const float *key, int64_t key_stride, const float *value,
                              int64_t value_stride, int64_t tokens, int64_t heads,
                              int64_t kv_heads, int64_t head_dim, const float *cos,
                              const float *sin, float *k_cache, float *v_cache,
                              const int64_t *slots, float *query_out, int threads);
int edgechat_decode_attention(const float *query, const float *k_cache, const float *v_cache,
                              const int32_t *block_tables, int64_t table_stride,
                              const int32_t *seq_lens, int64_t seqs, int64_t heads,
                              int64_t kv_heads, int64_t head_dim, int64_t block_size,
                              float scale, float *out, int threads);

/* cpu_decode_layer.c: a whole decoder layer's decode step */
typedef struct {
    int64_t bits; /* 4: int4 tiles (scales and offsets per group), 8: int8 tiles (a scale a row) */
    int64_t out_features, in_features, group_size, activation_block;
    const void *weight;
    const float *scales, *offsets, *bias; /* offsets: int4 only; bias may be NULL */
} EdgechatLinear;

typedef struct {
    int64_t hidden, heads, kv_heads, head_dim, intermediate;
    float eps, scale;
    const float *input_norm, *post_attention_norm;
    EdgechatLinear qkv, o, gate_up, down;
} EdgechatDecoderLayer;

int edgechat_decoder_layer(const EdgechatDecoderLayer *layer, int64_t seqs, const float *x,
                           const float *residual, const int64_t *rows, const float *cos,
                           const float *sin, float *k_cache, float *v_cache,
                           const int64_t *slots, const int32_t *block_tables,
                           int64_t table_stride, const int32_t *seq_lens, int64_t block_size,
                           float *hidden_out, float *residual_out, int threads);
#endif

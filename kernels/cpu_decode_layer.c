/* A Llama-family decoder layer's decode step in one call: RMSNorm (with the previous
 * layer's residual add), the qkv projection, the rotary embedding with the KV cache
 * write, decode attention, the o projection, the second add + RMSNorm, gate_up, SiLU and
 * multiply, down. The ops are cpu_quant_gemm.c's and cpu_decode_ops.c's, in the order
 * and with the arithmetic the model's modules run them in (engine/models/llama.py),
 * so the results are the same to the bit; what goes is the Python between them, ~12
 * module calls and 9 library calls a layer, which cost a 0.5B model's decode step more
 * than its attention. engine/layers/cpu_decode_layer.py fills the layer's description
 * and says which steps come here (one new token a sequence, fp32). */
#include <stdlib.h>
#include <string.h>

#include "cpu_native.h"

static int linear(const EdgechatLinear *l, const float *x, int64_t M, float *y, int threads) {
    if (l->bits == 4)
        return edgechat_int4_linear(x, M, l->weight, l->scales, l->offsets, l->bias,
                                    l->out_features, l->in_features, l->group_size,
                                    l->activation_block, y, threads);
    return edgechat_int8_linear(x, M, l->weight, l->scales, l->bias, l->out_features,
                                l->in_features, l->activation_block, y, threads);
}

/* Sequence i's one new token: x [seqs, hidden] (the previous layer's MLP output) and
 * residual (the stream before it; NULL for the first layer, whose x is the embedding)
 * give hidden_out (this layer's MLP output) and residual_out (the stream before it), as
 * LlamaDecoderLayer.forward returns them. Token i turns by row rows[i] of cos and sin and
 * is cached at slots[i] (negative: not cached), its sequence's block table row i. 0, or
 * -1 when out of memory. */
int edgechat_decoder_layer(const EdgechatDecoderLayer *layer, int64_t seqs, const float *x,
                           const float *residual, const int64_t *rows, const float *cos,
                           const float *sin, float *k_cache, float *v_cache,
                           const int64_t *slots, const int32_t *block_tables,
                           int64_t table_stride, const int32_t *seq_lens, int64_t block_size,
                           float *hidden_out, float *residual_out, int threads) {
    const int64_t hidden = layer->hidden, head_dim = layer->head_dim;
    const int64_t q_width = layer->heads * head_dim, kv_width = layer->kv_heads * head_dim;
    const int64_t qkv_width = q_width + 2 * kv_width, mlp = layer->intermediate;
    /* Scratch, each [seqs, width]: normed and o (hidden each), qkv, rotated queries and
     * attended (q_width each), gate_up (2 mlp), activated (mlp). */
    float *scratch =
        malloc(sizeof(float) * seqs * (2 * hidden + qkv_width + 2 * q_width + 3 * mlp));
    if (!scratch) return -1;
    float *normed = scratch, *o = normed + seqs * hidden, *qkv = o + seqs * hidden;
    float *query = qkv + seqs * qkv_width, *attended = query + seqs * q_width;
    float *gate_up = attended + seqs * q_width, *activated = gate_up + seqs * 2 * mlp;
    int failed = 0;

    if (residual) {
        edgechat_add_rms_norm(x, residual, layer->input_norm, seqs, hidden, layer->eps, normed,
                              residual_out, threads);
    } else {
        edgechat_add_rms_norm(x, NULL, layer->input_norm, seqs, hidden, layer->eps, normed, NULL,
                              threads);
        memcpy(residual_out, x, sizeof(float) * seqs * hidden);
    }
    failed |= linear(&layer->qkv, normed, seqs, qkv, threads);
    edgechat_rotary_write_kv(rows, qkv, qkv_width, qkv + q_width, qkv_width,
                             qkv + q_width + kv_width, qkv_width, seqs, layer->heads,
                             layer->kv_heads, head_dim, cos, sin, k_cache, v_cache, slots, query,
                             threads);
    failed |= edgechat_decode_attention(query, k_cache, v_cache, block_tables, table_stride,
                                        seq_lens, seqs, layer->heads, layer->kv_heads, head_dim,
                                        block_size, layer->scale, attended, threads);
    failed |= linear(&layer->o, attended, seqs, o, threads);
    /* in place: each element of the stream is read before it is written */
    edgechat_add_rms_norm(o, residual_out, layer->post_attention_norm, seqs, hidden, layer->eps,
                          normed, residual_out, threads);
    failed |= linear(&layer->gate_up, normed, seqs, gate_up, threads);
    edgechat_silu_and_mul(gate_up, seqs, mlp, activated, threads);
    failed |= linear(&layer->down, activated, seqs, hidden_out, threads);
    free(scratch);
    return failed ? -1 : 0;
}

"""TinyChat's own AWQ checkpoints (llm-awq "v2" ``*-w4-g128-awq-v2.pt``) convert exactly to
AutoAWQ GEMM tensors, and malformed ones are refused with errors that name the tensor.

The checkpoints here are packed by ``pack_tinychat`` below, written from the format as
llm-awq defines it (``pack_intweight``, ``calculate_zeros_width`` and
``WQLinear.from_linear`` in awq/quantize/qmodule.py; see docs/tinychat-format.md), as an
element-wise index map rather than the converter's chain of reshapes.
"""

from __future__ import annotations

import math

import pytest
import torch

from engine.errors import ModelLoadError, UnsupportedModelError
from engine.quant.pack import dequantize
from engine.quant.tinychat import (
    TinyChatCheckpoint,
    find_tinychat_checkpoint,
    is_tinychat_checkpoint,
    open_tinychat_checkpoint,
    unpack_qweight,
)
from kernels.reference import awq_linear

HIDDEN, INTERMEDIATE, KV_OUT, NUM_LAYERS, VOCAB = 256, 384, 128, 2, 64
LINEAR_SHAPES = {  # name: (out features N, in features K)
    "self_attn.q_proj": (HIDDEN, HIDDEN),
    "self_attn.k_proj": (KV_OUT, HIDDEN),
    "self_attn.v_proj": (KV_OUT, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (INTERMEDIATE, HIDDEN),
    "mlp.up_proj": (INTERMEDIATE, HIDDEN),
    "mlp.down_proj": (HIDDEN, INTERMEDIATE),
}
PREFIX = "model.layers.0.self_attn.q_proj"


def convert(state: dict) -> dict[str, torch.Tensor]:
    return dict(TinyChatCheckpoint(state).tensors())


def pack_tinychat(codes: torch.Tensor) -> torch.Tensor:
    """[N, K] int4 codes -> int16 [N/4, K]: code (n, k) sits in word
    ``(k // 64) * 64 + (n % 4) * 16 + (k % 64) // 32 * 8 + k % 8`` of row n // 4, in nibble
    ``(k % 32) // 8``."""
    n, k = codes.shape
    rows, cols = torch.arange(n)[:, None], torch.arange(k)[None, :]
    words = (cols // 64) * 64 + (rows % 4) * 16 + (cols % 64) // 32 * 8 + cols % 8
    nibbles = (cols % 32) // 8
    packed = torch.zeros(n // 4, k, dtype=torch.int64)
    packed.index_put_(
        ((rows // 4).expand(n, k), words.expand(n, k)),
        codes.to(torch.int64) << (4 * nibbles),
        accumulate=True,
    )
    return (packed - ((packed >> 15) << 16)).to(torch.int16)  # two's-complement int16


def padded_rows(in_features: int, group_size: int) -> int:
    """llm-awq's ``calculate_zeros_width(K, G) * 8``."""
    width = math.ceil(in_features // group_size / 8)
    multiplier = {32: 4, 64: 2}.get(group_size, 1)
    return math.ceil(width / multiplier) * multiplier * 8


def fake_quantized_linear(out_features, in_features, group_size, generator):
    """Random int4 codes, zeros and fp16 scales; the weight [N, K] they stand for, and the
    layer in TinyChat's tensors."""
    num_groups = in_features // group_size
    codes = torch.randint(0, 16, (out_features, in_features), generator=generator)
    zeros = torch.randint(0, 16, (num_groups, out_features), generator=generator)
    scales = (torch.rand(num_groups, out_features, generator=generator) * 0.05 + 1e-4).half()
    scales[0, 0] = 6e-7  # an fp16 subnormal, as a near-constant group's scale can be
    zero_per_weight = zeros.repeat_interleave(group_size, 0).t()
    scale_per_weight = scales.float().repeat_interleave(group_size, 0).t()
    weight = (codes - zero_per_weight) * scale_per_weight  # [N, K] fp32, exact
    num_rows = padded_rows(in_features, group_size)
    padded_scales = torch.zeros(num_rows, out_features, dtype=torch.float16)
    padded_scales[:num_groups] = scales
    scaled_zeros = torch.zeros_like(padded_scales)
    scaled_zeros[:num_groups] = (-(scales.float() * zeros)).half()
    return weight, {
        "qweight": pack_tinychat(codes),
        "scales": padded_scales,
        "scaled_zeros": scaled_zeros,
    }


def tiny_llama_checkpoint(group_size: int, seed: int = 0):
    """A Llama-shaped TinyChat state dict and the float weight of each quantized layer."""
    generator = torch.Generator().manual_seed(seed)
    state = {"model.embed_tokens.weight": torch.randn(VOCAB, HIDDEN).half()}
    weights = {}
    for layer in range(NUM_LAYERS):
        for name, (out_features, in_features) in LINEAR_SHAPES.items():
            prefix = f"model.layers.{layer}.{name}"
            weight, tensors = fake_quantized_linear(
                out_features, in_features, group_size, generator
            )
            weights[prefix] = weight
            state.update({f"{prefix}.{part}": tensor for part, tensor in tensors.items()})
        for norm in ("input_layernorm", "post_attention_layernorm"):
            state[f"model.layers.{layer}.{norm}.weight"] = torch.ones(HIDDEN).half()
    state["model.norm.weight"] = torch.ones(HIDDEN).half()
    state["lm_head.weight"] = torch.randn(VOCAB, HIDDEN).half()
    return state, weights


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_converts_exactly_to_autoawq_gemm(tmp_path, group_size):
    state, weights = tiny_llama_checkpoint(group_size)
    path = tmp_path / f"tiny-llama-w4-g{group_size}-awq-v2.pt"
    torch.save(state, path)

    converted = open_tinychat_checkpoint(path)

    assert converted.group_size == group_size
    assert converted.quantized_layers == tuple(sorted(weights))
    tensors = dict(converted.tensors())
    for prefix, weight in weights.items():
        qweight, qzeros, scales = (
            tensors[f"{prefix}.{p}"] for p in ("qweight", "qzeros", "scales")
        )
        out_features, in_features = weight.shape
        assert qweight.shape == (in_features, out_features // 8) and qweight.dtype == torch.int32
        assert qzeros.shape == (in_features // group_size, out_features // 8)
        assert scales.shape == (in_features // group_size, out_features)
        assert scales.dtype == torch.float16
        assert torch.equal(dequantize(qweight, qzeros, scales.float(), group_size), weight.t())
        identity = torch.eye(in_features)
        assert torch.equal(awq_linear(identity, qweight, qzeros, scales, group_size), weight.t())
        assert f"{prefix}.scaled_zeros" not in tensors
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert torch.equal(tensors[name], state[name])


def test_qweight_word_layout_matches_llm_awq():
    # llm-awq's shuffle puts input columns 0, 8, 16, 24 of output row 0 in word 0, and the
    # same columns of row 1 sixteen words on (four rows share each run of 64 words).
    codes = torch.zeros(4, 64, dtype=torch.int32)
    codes[0, [0, 8, 16, 24]] = torch.tensor([1, 2, 3, 4], dtype=torch.int32)
    codes[1, [0, 8, 16, 24]] = torch.tensor([5, 6, 7, 8], dtype=torch.int32)
    packed = pack_tinychat(codes)
    assert int(packed[0, 0]) & 0xFFFF == 0x4321 and int(packed[0, 16]) & 0xFFFF == 0x8765
    assert torch.equal(unpack_qweight(packed), codes)


def test_unpack_inverts_packing_with_sign_bits():
    codes = torch.randint(0, 16, (16, 192), generator=torch.Generator().manual_seed(1))
    codes[:, :32] = 15  # every nibble set: int16 words of -1
    assert torch.equal(unpack_qweight(pack_tinychat(codes)), codes.to(torch.int32))


def layer_state(group_size: int = 128, in_features: int = 256, out_features: int = 64):
    generator = torch.Generator().manual_seed(2)
    _, tensors = fake_quantized_linear(out_features, in_features, group_size, generator)
    return {f"{PREFIX}.{part}": tensor for part, tensor in tensors.items()}


def test_non_integer_zeros_are_refused():
    state = layer_state()
    scales = state[f"{PREFIX}.scales"]
    state[f"{PREFIX}.scaled_zeros"][1, 5] = -(scales[1, 5].float() * 3.5).half()
    with pytest.raises(ModelLoadError, match=rf"{PREFIX}\.scaled_zeros.*group 1, column 5"):
        convert(state)


def test_zeros_outside_int4_are_refused():
    state = layer_state()
    scales = state[f"{PREFIX}.scales"]
    state[f"{PREFIX}.scaled_zeros"][0, 2] = -(scales[0, 2].float() * 16).half()
    with pytest.raises(ModelLoadError, match=r"in \[0, 15\]"):
        convert(state)


@pytest.mark.parametrize(
    ("part", "tensor", "message"),
    [
        ("qweight", torch.zeros(16, 96, dtype=torch.int16), "multiple of 64"),
        ("qweight", torch.zeros(16, 256), "expected int16"),
        ("scales", torch.ones(8, 60, dtype=torch.float16), r"expected float16 \[groups"),
        ("scaled_zeros", torch.zeros(8, 64), r"expected float16 \[groups"),
        ("scales", torch.ones(16, 64, dtype=torch.float16), "differ in shape"),
    ],
)
def test_bad_shapes_and_dtypes_name_the_tensor(part, tensor, message):
    state = layer_state()
    state[f"{PREFIX}.{part}"] = tensor
    with pytest.raises(ModelLoadError, match=message) as raised:
        convert(state)
    assert PREFIX in str(raised.value)


def test_padding_must_be_tinychats():
    state = layer_state()
    for part in ("scales", "scaled_zeros"):  # 2 groups of 128 padded to 16 rows, not 8
        state[f"{PREFIX}.{part}"] = torch.cat(
            [state[f"{PREFIX}.{part}"]] + [torch.zeros(8, 64, dtype=torch.float16)]
        )
    with pytest.raises(ModelLoadError, match="pads them to 8 rows"):
        convert(state)


def test_missing_part_is_named():
    state = layer_state()
    del state[f"{PREFIX}.scaled_zeros"]
    with pytest.raises(ModelLoadError, match=rf"{PREFIX} lacks scaled_zeros"):
        convert(state)


def test_unknown_tensor_kinds_are_refused():
    state = {**layer_state(), "model.layers.0.self_attn.position_ids": torch.arange(8)}
    with pytest.raises(ModelLoadError, match="position_ids .*of no kind TinyChat writes"):
        convert(state)


@pytest.mark.parametrize(
    ("name", "tensor"),
    [
        (f"{PREFIX}.qzeros", torch.zeros(2, 8, dtype=torch.int32)),
        (f"{PREFIX}.qweight", torch.zeros(64, 32, dtype=torch.int32)),
    ],
)
def test_older_v1_layout_is_refused(name, tensor):
    state = {**layer_state(), name: tensor}
    with pytest.raises(UnsupportedModelError, match="offline-weight-repacker"):
        convert(state)


def test_mixed_group_sizes_are_refused():
    state = {**layer_state(group_size=128)}
    state.update(
        {
            name.replace("q_proj", "k_proj"): tensor
            for name, tensor in layer_state(group_size=64).items()
        }
    )
    with pytest.raises(ModelLoadError, match="mixes group sizes"):
        convert(state)


def test_a_dense_state_dict_is_not_a_tinychat_checkpoint():
    with pytest.raises(ModelLoadError, match="no TinyChat int4 layers"):
        convert({"lm_head.weight": torch.zeros(4, 4)})


class Opaque:
    pass


@pytest.mark.parametrize("content", [[torch.zeros(2)], {"model": Opaque()}, b"not a pickle"])
def test_unreadable_files_are_model_load_errors(tmp_path, content):
    path = tmp_path / "bad-w4-g128-awq-v2.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ModelLoadError, match="bad-w4-g128-awq-v2.pt"):
        open_tinychat_checkpoint(path)


def test_file_names_and_vila_layout(tmp_path):
    assert is_tinychat_checkpoint(tmp_path / "vila-1.5-3b-w4-g128-awq-v2.pt")
    assert is_tinychat_checkpoint(tmp_path / "llama-2-7b-chat-w4-g128-awq.pt")
    assert not is_tinychat_checkpoint(tmp_path / "llama-2-7b-chat-w4-g128.pt")  # search results
    assert not is_tinychat_checkpoint(tmp_path / "model.safetensors")
    assert find_tinychat_checkpoint(tmp_path) is None
    (tmp_path / "llm").mkdir()
    quant = tmp_path / "llm" / "vila-1.5-3b-w4-g128-awq-v2.pt"
    quant.write_bytes(b"")
    assert find_tinychat_checkpoint(tmp_path) == quant
    (tmp_path / "vila-1.5-3b-w4-g64-awq-v2.pt").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="several"):
        find_tinychat_checkpoint(tmp_path)

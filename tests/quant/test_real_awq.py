"""AWQ against round-to-nearest on a real model (SmolLM2-135M-Instruct), scored on
held-out text by an independent dequantizer. Calibration is tiny, to fit the suite's
time; benchmarks/bench_awq.py measures the usual sizes."""

from __future__ import annotations

import torch

from engine.quant.calib import calibration_ids
from engine.quant.perplexity import windows
from engine.quant.quantizer import QuantizeConfig, quantize
from engine.tokenizer import load_tokenizer
from tests.quant.independent import load_dequantized, perplexity
from tests.real_model import python_docs

# 576 (SmolLM2-135M's hidden size) is not a multiple of 128.
GROUP_SIZE = 64
NUM_SAMPLES, SEQ_LEN = 1, 256
HELD_OUT_TOKENS = 512


def test_awq_beats_rtn_on_held_out_text(real_model, tmp_path):
    tokenizer = load_tokenizer(real_model)
    calib = calibration_ids(tokenizer, [python_docs("calibration")], NUM_SAMPLES, SEQ_LEN)
    held_out = windows(tokenizer(python_docs("held-out")).input_ids, SEQ_LEN, HELD_OUT_TOKENS)
    scores = {}
    for method in ("rtn", "awq"):
        config = QuantizeConfig(method, GROUP_SIZE, NUM_SAMPLES, SEQ_LEN, device="cpu")
        out = quantize(real_model, tmp_path / method, config, calib_ids=calib)
        scores[method] = perplexity(load_dequantized(out), torch.tensor(held_out))
    scores["16-bit"] = perplexity(load_dequantized(real_model), torch.tensor(held_out))
    assert scores["16-bit"] < scores["awq"] < scores["rtn"], scores

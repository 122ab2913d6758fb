"""Full-size parity of our pi0.5 with lerobot 0.6.1's ``PI05Policy``, float32 and bfloat16, plus B=1 latency.

Needs a CUDA GPU (about 40 GB) and lerobot 0.6.1 (Python >= 3.12). Both models hold the same
random weights (drawn with ``vla_ttq.models.tiny.randomize_`` on the GPU, copied into lerobot's
model; the real checkpoint cannot be downloaded there). Processor files and tokenizer are the
tiny checkpoint maker's (the gated PaliGemma tokenizer is not available offline): the prompt
logic, normalisation and padding to 200 tokens are lerobot's own either way. Writes
``parity_lerobot.json`` and ``parity_lerobot.txt`` into ``--out-dir``.

    python scripts/parity_lerobot.py --out-dir docs/parity
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lerobot_bridge import (build_lerobot_policy, compare, lerobot_processors, lerobot_version,  # noqa: E402
                            make_observations, run_lerobot, run_ours)

from vla_ttq.bench.measure import time_calls  # noqa: E402
from vla_ttq.models.config import Pi05Config  # noqa: E402
from vla_ttq.models.pi05 import Pi05Checkpoint, param_dtype  # noqa: E402
from vla_ttq.models.policy import Pi05Policy  # noqa: E402
from vla_ttq.models.processing import DEFAULT_TOKENIZER, PromptTokenizer, read_processor_files  # noqa: E402
from vla_ttq.models.tiny import randomize_, tiny_config, write_processor_files, write_tokenizer  # noqa: E402

TASKS = ["put both the alphabet soup and the tomato sauce in the basket", "open the top drawer of the cabinet"]
# lerobot/pi05_libero_finetuned's features (config.json of the hub checkpoint)
LIBERO_CONFIG = {
    "type": "pi05", "paligemma_variant": "gemma_2b", "action_expert_variant": "gemma_300m", "dtype": "float32",
    "chunk_size": 50, "n_action_steps": 10, "tokenizer_max_length": 200,
    "input_features": {"observation.images.image": {"type": "VISUAL", "shape": [3, 256, 256]},
                       "observation.images.image2": {"type": "VISUAL", "shape": [3, 256, 256]},
                       "observation.state": {"type": "STATE", "shape": [8]}},
    "output_features": {"action": {"type": "ACTION", "shape": [7]}},
    "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": "QUANTILES", "ACTION": "QUANTILES"},
}


def bench(fn, device: str, iters: int, warmup: int = 2) -> dict:
    for _ in range(warmup):
        fn()
    times = time_calls(fn, torch.device(device), iters, budget_s=math.inf)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "iters": len(times)}


def float_compare(a: dict, b: dict) -> dict:
    out = {}
    for k in ("prefix_embs", "actions_raw", "actions"):
        x, y = a[k].double(), b[k].double()
        out[f"{k}_max_abs"] = float((x - y).abs().max())
        out[f"{k}_rel_l2"] = float((x - y).norm() / y.norm().clamp_min(1e-30))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default="docs/parity")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="smoke-test the script at the tiny checkpoint's sizes")
    args = ap.parse_args(argv)
    dev = args.device
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    res: dict = {"env": {"gpu": torch.cuda.get_device_name(0) if dev.startswith("cuda") else "cpu", "torch": torch.__version__, "lerobot": lerobot_version(),
                         "python": sys.version.split()[0]}}
    import transformers

    res["env"]["transformers"] = transformers.__version__
    cfg = tiny_config() if args.tiny else Pi05Config.from_lerobot_json(LIBERO_CONFIG)
    full = not args.tiny
    res["sizes"] = "tiny" if args.tiny else "full"
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        proc_dir = Path(tmp)
        write_tokenizer(proc_dir)
        write_processor_files(proc_dir, cfg, seed=args.seed, tokenizer_name=DEFAULT_TOKENIZER)
        processor = read_processor_files(proc_dir)
        tokenizer = PromptTokenizer(proc_dir / "tokenizer.json", cfg.tokenizer_max_length)
        with torch.device(dev):
            root = Pi05Checkpoint(cfg)
        randomize_(root, args.seed)
        root.eval().requires_grad_(False)
        ours = Pi05Policy(root, processor, tokenizer, "random-full-size", torch.device(dev))
        res["ours_params"] = sum(p.numel() for p in root.parameters())
        state = root.state_dict()
        obs = make_observations(args.batch, 256, 256, seed=1, tasks=TASKS)
        noise = torch.randn((args.batch, cfg.chunk_size, cfg.max_action_dim), generator=torch.Generator().manual_seed(7))

        policy, load = build_lerobot_policy(cfg, state, dev, "float32", full_size=full)
        res["lerobot_load"] = load
        pre, post = lerobot_processors(proc_dir, proc_dir, dev)
        print(f"built both float32 models in {time.time() - t0:.0f}s", flush=True)
        ref32, ours32 = run_lerobot(policy, pre, post, obs, noise), run_ours(ours, obs, noise)
        res["float32"] = compare(ours32, ref32)
        res["prompts"] = ref32["prompts"]
        (out_dir / "parity_lerobot.json").write_text(json.dumps(res, indent=2))  # partial, in case of a crash
        del policy
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

        policy, _ = build_lerobot_policy(cfg, state, dev, "bfloat16", full_size=full)
        del state
        for name, p in root.named_parameters():  # lerobot's bfloat16 layout (vision, norms, heads stay fp32)
            p.data = p.data.to(param_dtype(name, torch.bfloat16))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        print(f"built both bfloat16 models at {time.time() - t0:.0f}s", flush=True)
        ref16, ours16 = run_lerobot(policy, pre, post, obs, noise), run_ours(ours, obs, noise)
        res["bfloat16"] = compare(ours16, ref16)
        # the scale of bfloat16 rounding: each bfloat16 model against lerobot in float32
        res["bfloat16_lerobot_vs_lerobot_float32"] = float_compare(ref16, ref32)
        res["bfloat16_ours_vs_lerobot_float32"] = float_compare(ours16, ref32)
        (out_dir / "parity_lerobot.json").write_text(json.dumps(res, indent=2))
        print(json.dumps({k: res[k] for k in ("float32", "bfloat16")}), flush=True)

        # B=1 latency, bfloat16: the model's sample_actions (10 flow steps) from prepared inputs
        one, n1 = obs[:1], noise[:1].to(dev)
        from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

        from lerobot_bridge import lerobot_batch

        lb = pre(lerobot_batch(one))
        limgs, lmasks = policy._preprocess_images(lb)
        ltok, lmask = lb[OBS_LANGUAGE_TOKENS], lb[OBS_LANGUAGE_ATTENTION_MASK]
        inp = ours.prepare(one)
        timing = {
            "lerobot_sample_actions": bench(lambda: policy.model.sample_actions(limgs, lmasks, ltok, lmask, noise=n1),
                                            dev, args.iters),
            "ours_sample_actions_eager": bench(lambda: root.model.sample_actions(
                inp["images"], inp["image_masks"], inp["tokens"], inp["token_masks"], n1), dev, args.iters),
        }
        root.model.attn_impl = "sdpa"
        timing["ours_sample_actions_sdpa"] = bench(lambda: root.model.sample_actions(
            inp["images"], inp["image_masks"], inp["tokens"], inp["token_masks"], n1), dev, args.iters)
        root.model.attn_impl = "eager"
        timing["lerobot_policy_call"] = bench(lambda: post(policy.predict_action_chunk(pre(lerobot_batch(one)),
                                                                                       noise=n1)), dev, args.iters)
        timing["ours_policy_call"] = bench(lambda: ours.predict_chunk(one, noise=noise[:1]), dev, args.iters)
        timing["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
        res["latency_bf16_b1"] = timing
    res["wall_s"] = time.time() - t0
    text = json.dumps(res, indent=2)
    (out_dir / "parity_lerobot.json").write_text(text)
    lines = [f"{res['sizes']}-size parity with lerobot {res['env']['lerobot']} on {res['env']['gpu']} (torch {res['env']['torch']}, "
             f"transformers {res['env']['transformers']}, python {res['env']['python']}), batch {args.batch}"]
    for dt in ("float32", "bfloat16"):
        r = res[dt]
        lines.append(f"{dt}: tokens equal {r['tokens_equal']}, masks equal {r['token_masks_equal']}, prompts equal "
                     f"{r['prompts_equal']}; prefix rel-L2 {r['prefix_embs_rel_l2']:.2e}; actions max|d| "
                     f"{r['actions_max_abs']:.2e} rel-L2 {r['actions_rel_l2']:.2e}")
    b = res["bfloat16_lerobot_vs_lerobot_float32"]
    lines.append(f"bf16 rounding scale (lerobot bf16 vs lerobot fp32): actions max|d| {b['actions_max_abs']:.2e} "
                 f"rel-L2 {b['actions_rel_l2']:.2e}")
    for k, v in res["latency_bf16_b1"].items():
        if isinstance(v, dict):
            lines.append(f"latency bf16 B=1 {k}: median {v['median_ms']:.1f} ms (min {v['min_ms']:.1f}, {v['iters']} runs)")
    lines.append(f"peak GPU memory {res['latency_bf16_b1']['peak_gpu_memory_gib']:.1f} GiB; wall {res['wall_s']:.0f} s")
    (out_dir / "parity_lerobot.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Reference outputs of lerobot 0.6.1's own pi0.5 at TINY sizes, for the CPU parity test.

Needs lerobot 0.6.1 (Python >= 3.12; wheels and install command: docs/parity/lerobot_wheels_README.txt).
Writes our tiny checkpoint (``vla_ttq.models.tiny``, seed 0), builds lerobot's ``PI05Policy`` at
the same sizes holding the same weights, runs lerobot's own preprocessor (normaliser, state
prompt, tokenizer from the checkpoint's tokenizer directory), image preprocessing, prefix
embedding, 10-step flow sampling from fixed noise and postprocessor (unnormaliser) on CPU in
float32, and stores inputs and outputs in ``tests/data/tiny_reference.npz``. Also prints how far
our model is from it here (the CI test checks the same on its own machine).

    python scripts/make_tiny_reference.py [--out tests/data/tiny_reference.npz]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lerobot_bridge import (build_lerobot_policy, compare, lerobot_processors, lerobot_version,  # noqa: E402
                            make_observations, run_lerobot, run_ours)

from vla_ttq.models import load_policy  # noqa: E402
from vla_ttq.models.loading import weights_digest  # noqa: E402
from vla_ttq.models.tiny import make_tiny_checkpoint  # noqa: E402

TASKS = ["put the black bowl on the plate", "open the top drawer_of the cabinet\n"]
# Two cases: both cameras, non-square raw images (resize-with-pad); wrist camera missing.
CASES = {"a": dict(batch=2, height=48, width=64, seed=1, wrist=True),
         "b": dict(batch=1, height=40, width=40, seed=2, wrist=False)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests/data/tiny_reference.npz"))
    ap.add_argument("--report", default=None, help="also write the comparison as JSON here")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_tiny_checkpoint(Path(tmp) / "tiny", seed=0)
        ours = load_policy(ckpt, dtype="float32")
        cfg = ours.config
        from safetensors.torch import load_file

        state = load_file(str(ckpt / "model.safetensors"))
        policy, load_report = build_lerobot_policy(cfg, state, device="cpu", dtype="float32", full_size=False)
        pre, post = lerobot_processors(ckpt, ckpt, device="cpu")
        arrays: dict[str, np.ndarray] = {"weights_sha256": np.array(weights_digest(ckpt / "model.safetensors"))}
        report = {"lerobot": lerobot_version(), "torch": torch.__version__, "python": sys.version.split()[0],
                  "load": {k: v for k, v in load_report.items() if k != "missing_keys_left_random"},
                  "lerobot_keys_left_random": load_report["missing_keys_left_random"], "cases": {}}
        for name, case in CASES.items():
            obs = make_observations(case["batch"], case["height"], case["width"], case["seed"], TASKS,
                                    wrist=case["wrist"])
            noise = torch.randn((case["batch"], cfg.chunk_size, cfg.max_action_dim),
                                generator=torch.Generator().manual_seed(100 + case["seed"]))
            ref = run_lerobot(policy, pre, post, obs, noise)
            mine = run_ours(ours, obs, noise)
            report["cases"][name] = compare(mine, ref)
            report["cases"][name]["prompts_lerobot"] = ref["prompts"]
            p = f"{name}_"
            arrays[p + "image"] = np.stack([o["observation/image"] for o in obs])
            if case["wrist"]:
                arrays[p + "wrist_image"] = np.stack([o["observation/wrist_image"] for o in obs])
            arrays[p + "state"] = np.stack([o["observation/state"] for o in obs])
            arrays[p + "prompt"] = np.array([o["prompt"] for o in obs])
            arrays[p + "noise"] = noise.numpy()
            arrays[p + "lerobot_prompts"] = np.array(ref["prompts"])
            for k in ("images", "image_masks", "tokens", "token_masks", "norm_state", "prefix_embs", "prefix_pad",
                      "actions_raw", "actions"):
                v = ref[k].numpy()
                arrays[p + k] = v.astype(np.float32) if v.dtype == np.float64 else v
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    text = json.dumps(report, indent=2)
    print(text)
    if args.report:
        Path(args.report).write_text(text)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

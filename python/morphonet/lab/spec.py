"""Hypothesis files: TOML (``tomllib``) or YAML (``pyyaml``; JSON is YAML too).

    [lab]                               # LabConfig fields (all optional)
    max_parallel_experiments = 2
    results_dir = "results/lab"

    [[hypothesis]]                      # Hypothesis fields, one table per hypothesis
    name = "block32_vs_element"
    category = "sparsity"
    experiment = "masks"
    control = "element"
    metric = "test_acc"
    seeds = 8
    [hypothesis.params]                 # every arm's parameters (the budget)
    epochs = 10
    [hypothesis.arms.element]
    mask_granularity = "element"
    [hypothesis.arms.block32]
    mask_granularity = "block"
    block_size = 32

YAML has the same shape (``lab:`` a mapping, ``hypothesis:`` a list). Unknown keys are
refused by name.
"""

from __future__ import annotations

import os
from typing import Any

from .config import Hypothesis, LabConfig

__all__ = ["read_lab_file"]


def _load(path: str) -> Any:
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            with open(path, "rb") as f:
                return tomllib.load(f)
        if ext in (".yaml", ".yml", ".json"):
            import yaml

            with open(path) as f:
                return yaml.safe_load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such hypothesis file") from None
    except Exception as e:  # a parser's error, with the file named
        if type(e).__name__ in ("TOMLDecodeError", "YAMLError") or "yaml" in type(e).__module__:
            raise ValueError(f"{path}: not valid {ext[1:].upper()}: {e}") from e
        raise
    raise ValueError(f"{path}: a hypothesis file is .toml, .yaml, .yml or .json")


def read_lab_file(path: str) -> tuple[LabConfig, list[Hypothesis]]:
    """The lab settings and hypotheses of a hypothesis file (each checked; errors name the
    file and the hypothesis)."""
    doc = _load(path)
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a table with 'lab' and 'hypothesis'")
    unknown = sorted(set(doc) - {"lab", "hypothesis"})
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {unknown} (known: lab, hypothesis)")
    try:
        cfg = LabConfig.from_dict(doc.get("lab") or {})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path} [lab]: {e}") from e
    items = doc.get("hypothesis") or []
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path}: no [[hypothesis]] in it")
    out = []
    for i, d in enumerate(items):
        try:
            out.append(Hypothesis.from_dict(d))
        except (TypeError, ValueError) as e:
            name = d.get("name", f"#{i + 1}") if isinstance(d, dict) else f"#{i + 1}"
            raise ValueError(f"{path} hypothesis {name}: {e}") from e
    names = [h.id for h in out]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: hypothesis names repeat: {names}")
    return cfg, out

"""``python -m trainer.tables``: the tables of penalties and explainers in docs/usage.md, rendered from
their registries (trainer/penalty.py, trainer/explain.py); tests/test_registry.py checks that
docs/usage.md holds them as printed here."""
from __future__ import annotations

from .config import TrainConfig
from .explain import EXPLAINERS
from .penalty import PENALTIES


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
           ["| " + " | ".join(row) + " |" for row in rows]


def _choice(name: str, default: str) -> str:
    return f"`{name}`" + (" (default)" if name == default else "")


def _needs(cls: type) -> str:
    return "`--head attention`" if cls.needs_attention_head else ""


def markdown() -> str:
    defaults = TrainConfig()
    penalties = _table(["`--penalty`", "what it penalises", "`--penalty-impl`", "needs"], [
        [_choice(name, defaults.penalty), cls.summary, ", ".join(f"`{impl}`" for impl in cls.implementations) or "–",
         _needs(cls)]
        for name, cls in PENALTIES.items()])
    explainers = _table(["`--saliency`", "the map", "needs"], [
        [_choice(name, defaults.saliency), cls.summary, _needs(cls)] for name, cls in EXPLAINERS.items()])
    return "\n".join(penalties + [""] + explainers) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")

"""The original tool's two end-of-run plots, written atomically into ``plots/``."""
from __future__ import annotations

import io

from . import protocol


def write_plots(run: protocol.RunDir, history: list[dict]) -> None:
    if not history:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    panels = {
        "loss_accuracy.png": [("loss", ["train_loss", "val_loss"]), ("accuracy", ["train_acc", "val_acc"])],
        "precision_recall_f1.png": [("validation (macro)", ["val_precision", "val_recall", "val_f1"])],
    }
    for name, axes_spec in panels.items():
        fig, axes = plt.subplots(1, len(axes_spec), figsize=(5 * len(axes_spec), 3.6), squeeze=False)
        for ax, (title, keys) in zip(axes[0], axes_spec):
            for k in keys:
                ax.plot(epochs, [r[k] for r in history], marker="o", label=k.replace("_", " "))
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        protocol.atomic_write_bytes(run.plots / name, buf.getvalue())

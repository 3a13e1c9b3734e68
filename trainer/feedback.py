"""The feedback set: every mask a person (or the simulated annotator) gave, kept on the device so a
batch finds its annotated images with one gather, and saved in the checkpoint."""
from __future__ import annotations

import torch

from . import protocol


class FeedbackSet:
    """Masks for training images by dataset index. Masks of the same image accumulate (union)."""

    def __init__(self, num_images: int, height: int, width: int, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.shape = (height, width)
        self.position = torch.full((num_images,), -1, dtype=torch.long, device=self.device)
        self.masks = torch.zeros((0, height, width), dtype=torch.bool, device=self.device)
        self.excluded = torch.zeros(num_images, dtype=torch.bool, device=self.device)

    def __len__(self) -> int:
        return len(self.masks)

    @property
    def indices(self) -> torch.Tensor:
        """Dataset indices of the annotated images, in the order they were first annotated."""
        order = torch.nonzero(self.position >= 0).flatten()
        return order[self.position[order].argsort()]

    def add(self, index: int, mask: torch.Tensor) -> None:
        mask = mask.to(self.device, torch.bool)
        if not mask.any():
            return
        pos = int(self.position[index])
        if pos >= 0:
            self.masks[pos] |= mask
        else:
            self.position[index] = len(self.masks)
            self.masks = torch.cat([self.masks, mask[None]])

    def add_all(self, masks: torch.Tensor) -> None:
        """Every image's mask at once (the "masks on all training images" upper bound of the
        benchmarks); images with an empty mask stay unannotated."""
        for index in torch.nonzero(masks.flatten(1).any(1)).flatten().tolist():
            self.add(index, masks[index])

    def apply(self, answers: list[protocol.QueryFeedback]) -> dict:
        """Add one mask file's answers; returns counts for the log. Pixels outside a "relevant"
        region count as forbidden, so both kinds of feedback use one penalty."""
        counts = {"masked": 0, "skipped": 0, "excluded": 0}
        for a in answers:
            if a.action == protocol.ACTION_WRONG_LABEL:
                self.excluded[a.index] = True
                counts["excluded"] += 1
                continue
            mask = torch.zeros(self.shape, dtype=torch.bool)
            if a.action == protocol.ACTION_MASK and a.forbidden is not None:
                mask |= torch.from_numpy(a.forbidden)
            if a.action == protocol.ACTION_MASK and a.relevant is not None and a.relevant.any():
                mask |= ~torch.from_numpy(a.relevant)
            if mask.any():
                self.add(a.index, mask)
                counts["masked"] += 1
            else:
                counts["skipped"] += 1
        return counts

    def lookup(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For a batch of dataset indices: which rows are annotated, and their masks (float)."""
        pos = self.position[idx]
        rows = torch.nonzero(pos >= 0).flatten()
        return rows, self.masks[pos[rows]].float()

    def state_dict(self) -> dict:
        return {"position": self.position.cpu(), "masks": self.masks.cpu(), "excluded": self.excluded.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"].to(self.device)
        self.masks = state["masks"].to(self.device)
        self.excluded = state["excluded"].to(self.device)

"""The feedback set: every mask a person (or the simulated annotator) gave, kept on the device so a
batch finds its annotated images with one gather, and saved in the checkpoint."""
from __future__ import annotations

import torch

from . import protocol


class FeedbackSet:
    """Masks for training images by dataset index. Masks of the same image accumulate (union).

    ``masks`` holds where the model must not look: the forbidden marks and, where a relevant region
    was drawn, everything outside it (what rrr and gradcam penalise). ``relevant`` keeps the relevant
    marks themselves, which hint rewards (``lookup(..., relevance=True)``)."""

    def __init__(self, num_images: int, height: int, width: int, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.shape = (height, width)
        self.position = torch.full((num_images,), -1, dtype=torch.long, device=self.device)
        self.masks = torch.zeros((0, height, width), dtype=torch.bool, device=self.device)
        self.relevant = torch.zeros((0, height, width), dtype=torch.bool, device=self.device)
        self.excluded = torch.zeros(num_images, dtype=torch.bool, device=self.device)
        self.version = 0  # changes whenever a mask does: what is derived from the masks is kept until then
        self._indices: tuple[int, torch.Tensor] | None = None  # (version, ``indices``)

    def __len__(self) -> int:
        return len(self.masks)

    @property
    def indices(self) -> torch.Tensor:
        """Dataset indices of the annotated images, in the order they were first annotated. Kept until
        the set changes: every training batch asks for them."""
        if self._indices is None or self._indices[0] != self.version:
            order = torch.nonzero(self.position >= 0).flatten()
            self._indices = self.version, order[self.position[order].argsort()]
        return self._indices[1]

    def add(self, index: int, mask: torch.Tensor, relevant: torch.Tensor | None = None) -> None:
        mask = mask.to(self.device, torch.bool)
        if not mask.any():
            return
        relevant = torch.zeros_like(mask) if relevant is None else relevant.to(self.device, torch.bool) & ~mask
        self.version += 1
        pos = int(self.position[index])
        if pos >= 0:
            self.masks[pos] |= mask
            self.relevant[pos] |= relevant
        else:
            self.position[index] = len(self.masks)
            self.masks = torch.cat([self.masks, mask[None]])
            self.relevant = torch.cat([self.relevant, relevant[None]])

    def add_all(self, masks: torch.Tensor) -> None:
        """Every image's mask at once (the "masks on all training images" upper bound of the
        benchmarks); images with an empty mask stay unannotated."""
        for index in torch.nonzero(masks.flatten(1).any(1)).flatten().tolist():
            self.add(index, masks[index])

    def apply(self, answers: list[protocol.QueryFeedback]) -> dict:
        """Add one mask file's answers; returns counts for the log (``masked``/``skipped``/``excluded``:
        answers to queries; ``proposed``/``rejected``: proposals accepted or rejected, of ``offered``)."""
        counts = {"masked": 0, "skipped": 0, "excluded": 0, "offered": 0, "proposed": 0, "rejected": 0}
        for a in answers:
            if a.source == protocol.SOURCE_PROPOSED:  # an answer to a proposal: accepted or rejected
                counts["offered"] += 1
                counts["proposed" if a.must_not_use() is not None else "rejected"] += 1
                continue
            if a.action == protocol.ACTION_WRONG_LABEL:
                self.excluded[a.index] = True
                counts["excluded"] += 1
            else:
                counts["masked" if a.must_not_use() is not None else "skipped"] += 1
        for index, marks in protocol.union_marks(answers).items():
            relevant = None if marks.relevant is None else torch.from_numpy(marks.relevant)
            self.add(index, torch.from_numpy(marks.must_not_use), relevant)
        return counts

    def lookup(self, idx: torch.Tensor, relevance: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """For a batch of dataset indices: which rows are annotated, and their masks (float): where
        the model must not look (1) or, with ``relevance``, relevance maps: 1 marked relevant, 0 must
        not matter (forbidden, or outside a drawn relevant region), −1 unmarked."""
        pos = self.position[idx]
        rows = torch.nonzero(pos >= 0).flatten()
        masks = self.masks[pos[rows]]
        if not relevance:
            return rows, masks.float()
        relevant = self.relevant[pos[rows]]
        return rows, torch.where(masks, 0.0, torch.where(relevant, 1.0, -1.0))

    def state_dict(self) -> dict:
        return {"position": self.position.cpu(), "masks": self.masks.cpu(), "relevant": self.relevant.cpu(),
                "excluded": self.excluded.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"].to(self.device)
        self.version += 1
        self.masks = state["masks"].to(self.device)
        self.relevant = state.get("relevant", torch.zeros_like(state["masks"])).to(self.device)  # older checkpoints
        self.excluded = state["excluded"].to(self.device)

"""A ``DetectionCheckpointer`` that refuses weights that do not fit the model.

detectron2 logs missing and unexpected keys and goes on, which leaves a half-initialised model
training or being evaluated; msadkit's rule is that loading is strict (``docs/architecture.md``).
"""

from __future__ import annotations

from typing import Any, Sequence

from detectron2.checkpoint import DetectionCheckpointer

from msadkit.errors import CheckpointError
from msadkit.utils.checkpoint import key_problems

__all__ = ["StrictDetectionCheckpointer"]


class StrictDetectionCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose loads fail on missing, unexpected or misshapen keys.

    Args:
        model, save_dir, **checkpointables: as for ``DetectionCheckpointer``.
        ignored_prefixes: checkpoint keys under these prefixes that the model may lack (for
            example ``distill_losses.`` adapters when evaluating a student); they are dropped.
    """

    def __init__(self, model: Any, save_dir: str = "", *, ignored_prefixes: Sequence[str] = (), **checkpointables: Any) -> None:
        super().__init__(model, save_dir, **checkpointables)
        self.ignored_prefixes = tuple(ignored_prefixes)

    def _load_model(self, checkpoint: dict[str, Any]) -> Any:
        state = checkpoint["model"]
        # As fvcore does: a checkpoint written from a DDP-wrapped model has every key under "module.".
        if state and all(key.startswith("module.") for key in state):
            state = {key[len("module."):]: value for key, value in state.items()}
        own = self.model.state_dict()
        state = {
            key: value for key, value in state.items() if key in own or not key.startswith(self.ignored_prefixes)
        }
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        mismatched = sorted(
            f"{key} (checkpoint {tuple(state[key].shape)}, model {tuple(own[key].shape)})"
            for key in set(own) & set(state)
            if tuple(getattr(state[key], "shape", ())) != tuple(own[key].shape)
        )
        problems = key_problems(missing, unexpected, mismatched)
        if problems:
            source = getattr(self, "_loading_path", None) or "the checkpoint"
            raise CheckpointError(f"{source} does not fit {type(self.model).__name__}: " + "; ".join(problems))
        checkpoint["model"] = state
        return super()._load_model(checkpoint)

    def load(self, path: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self._loading_path = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._loading_path = None

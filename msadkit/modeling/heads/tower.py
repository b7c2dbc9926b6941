"""Layers shared by the dense heads (FCOS, RetinaNet)."""

from __future__ import annotations

import math

from torch import Tensor, nn
from torch.nn import functional as F

from msadkit.modeling.norm import get_norm

__all__ = ["conv_tower", "init_dense_head", "tower_blocks", "run_tower", "TwoTowerHead"]


def conv_tower(channels: int, num_convs: int, norm: str, *, conv_bias: bool | None = None) -> nn.Sequential:
    """``num_convs`` x (3x3 conv, optional norm, ReLU), keeping ``channels``.

    Args:
        channels: input and output channels of every conv.
        num_convs: number of conv blocks.
        norm: norm layer name (``""`` for none).
        conv_bias: whether the convs have a bias; ``None`` gives them one only without a norm.
            The MSAD and FCOS code keep the bias before GroupNorm (``model.fcos.tower_conv_bias``).
    """
    if conv_bias is None:
        conv_bias = not norm
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        # Dropping the bias loses nothing only before a per-channel norm (BatchNorm), whose own
        # shift absorbs it. GroupNorm with several channels per group removes only the group mean,
        # so a per-channel bias still changes its output; the MSAD weights carry one.
        layers.append(nn.Conv2d(channels, channels, 3, padding=1, bias=conv_bias))
        if norm:
            layers.append(get_norm(norm, channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def init_dense_head(head: nn.Module, classifier: nn.Conv2d, prior_prob: float) -> None:
    """Normal(0, 0.01) conv weights, zero biases, and a classifier bias giving ``prior_prob``.

    The prior keeps the focal loss of the many background locations small at the start of
    training (RetinaNet's initialisation).
    """
    for module in head.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, std=0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    nn.init.constant_(classifier.bias, -math.log((1 - prior_prob) / prior_prob))


def tower_blocks(tower: nn.Sequential) -> list[list[nn.Module]]:
    """The ``(conv, norm?, ReLU)`` blocks of a :func:`conv_tower`, one list of layers per conv."""
    blocks: list[list[nn.Module]] = []
    for layer in tower:
        if isinstance(layer, nn.Conv2d):
            blocks.append([])
        blocks[-1].append(layer)
    return blocks


def run_tower(
    tower: nn.Sequential, x: Tensor, *, start: int = 0, stop: int | None = None, activate_last: bool = True
) -> Tensor:
    """Blocks ``start .. stop - 1`` of a :func:`conv_tower` on ``x`` (``(N, C, H, W)``, size kept).

    ``run_tower(tower, x)`` equals ``tower(x)``. With ``activate_last=False`` the output of the
    last block run is taken before its ReLU (after its norm layer), where CrossKD cuts a head.

    Raises:
        ValueError: unless ``0 <= start <= stop <= number of convs``.
    """
    blocks = tower_blocks(tower)
    stop = len(blocks) if stop is None else stop
    if not 0 <= start <= stop <= len(blocks):
        raise ValueError(f"run_tower: need 0 <= start <= stop <= {len(blocks)}, got start={start}, stop={stop}")
    for index in range(start, stop):
        layers = blocks[index]
        if index == stop - 1 and not activate_last:
            layers = layers[:-1]
        for layer in layers:
            x = layer(x)
    return x


class TwoTowerHead(nn.Module):
    """A dense head with a classification and a box :func:`conv_tower` that can be cut between convs.

    CrossKD runs one head's towers up to a conv and another head's from there:
    ``predict_from(tower_features(x, k), k)`` equals ``forward(x)`` for every ``k``. Subclasses say
    which modules their towers are (their attribute names are checkpoint keys) and implement
    :meth:`predict_from` with :meth:`finish_towers`.
    """

    def towers(self) -> tuple[nn.Sequential, nn.Sequential]:
        """The ``(classification, box)`` towers."""
        raise NotImplementedError

    @property
    def num_tower_convs(self) -> int:
        """Convs per tower."""
        return len(tower_blocks(self.towers()[0]))

    def tower_features(self, levels: list[Tensor], upto: int) -> list[tuple[Tensor, Tensor]]:
        """Per level ``(cls, box)`` tower features after ``upto`` convs, before the last one's ReLU.

        Args:
            levels: ``L`` maps ``(N, C, Hi, Wi)``.
            upto: convs run, ``0 .. num_tower_convs``; 0 gives the level itself to both towers.

        Returns:
            ``L`` pairs of ``(N, C, Hi, Wi)`` maps for :meth:`predict_from` with ``start=upto``.
        """
        cls_tower, box_tower = self.towers()
        return [
            (
                run_tower(cls_tower, x, stop=upto, activate_last=False),
                run_tower(box_tower, x, stop=upto, activate_last=False),
            )
            for x in levels
        ]

    def finish_towers(self, cls_feature: Tensor, box_feature: Tensor, start: int) -> tuple[Tensor, Tensor]:
        """Both towers from conv ``start`` on one level's ``(N, C, Hi, Wi)`` maps of :meth:`tower_features`
        (taken at ``upto=start``); for ``start > 0`` the pending ReLU runs first."""
        if start > 0:
            cls_feature, box_feature = F.relu(cls_feature), F.relu(box_feature)
        cls_tower, box_tower = self.towers()
        return run_tower(cls_tower, cls_feature, start=start), run_tower(box_tower, box_feature, start=start)

    def predict_from(self, features: list[tuple[Tensor, Tensor]], start: int) -> dict[str, list[Tensor]]:
        """Finish the towers from conv ``start`` (:meth:`finish_towers`) and predict.

        Args:
            features: per level ``(cls, box)`` maps ``(N, C, Hi, Wi)`` as :meth:`tower_features` returns them.
            start: the ``upto`` they were taken at.

        Returns:
            The outputs of ``forward``.
        """
        raise NotImplementedError

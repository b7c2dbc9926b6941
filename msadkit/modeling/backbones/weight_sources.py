"""Where ``model.backbone.weights`` points: a local file, or a torchvision weight enum by name.

``torchvision://ResNet50_Weights.IMAGENET1K_V1`` names a member of one of torchvision's ResNet
weight enums (``ResNet18_Weights`` .. ``ResNet152_Weights``, ``DEFAULT`` included). The file is
fetched into torch's hub cache (``$TORCH_HOME/hub/checkpoints``, as ``torch.hub`` and
torchvision's ``get_state_dict`` do) and checked against the checksum torchvision publishes: the
hexadecimal digits in the file name (``resnet50-0676ba61.pth``) are the leading digits of its
SHA-256. A file already in the cache is checked the same way and used without network, so a
machine offline takes a file copied there by hand. The local path then goes through the same strict
loader as any other file.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from urllib.parse import urlparse

from msadkit.errors import CheckpointError, ConfigError

__all__ = [
    "TORCHVISION_SCHEME",
    "is_torchvision_weights",
    "torchvision_weights_entry",
    "hub_cache_path",
    "file_sha256",
    "resolve_weights_file",
]

TORCHVISION_SCHEME = "torchvision://"
_ENUM_PATTERN = re.compile(r"^(ResNet(\d+)_Weights)\.(\w+)$")
# torchvision's file names end in -<first hex digits of the SHA-256>.pth (torch.hub.HASH_REGEX).
_HASH_PATTERN = re.compile(r"-([a-f0-9]+)\.")


def is_torchvision_weights(spec: object) -> bool:
    """Whether ``spec`` is a ``torchvision://`` weight name (not a file path)."""
    return isinstance(spec, str) and spec.startswith(TORCHVISION_SCHEME)


def torchvision_weights_entry(spec: str, *, argument: str = "model.backbone.weights"):
    """The torchvision ``WeightsEnum`` member a ``torchvision://Enum.MEMBER`` name stands for, and
    the ResNet depth it belongs to.

    Returns:
        ``(weights, depth)``, e.g. ``(ResNet50_Weights.IMAGENET1K_V1, 50)``.

    Raises:
        ConfigError: not a ResNet weight enum of torchvision, or no such member (the known ones
            are listed).
    """
    import torchvision.models

    name = spec[len(TORCHVISION_SCHEME):]
    match = _ENUM_PATTERN.match(name)
    enum = getattr(torchvision.models, match.group(1), None) if match else None
    if enum is None:
        known = sorted(n for n in dir(torchvision.models) if re.fullmatch(r"ResNet\d+_Weights", n))
        raise ConfigError(
            f"{argument}={spec}: expected torchvision://<Enum>.<MEMBER> with a torchvision ResNet weight enum "
            f"({', '.join(known)}), e.g. torchvision://ResNet50_Weights.IMAGENET1K_V1"
        )
    member = match.group(3)
    try:
        weights = enum[member]
    except KeyError:
        members = ", ".join([*enum.__members__])
        raise ConfigError(f"{argument}={spec}: {enum.__name__} has no member {member} (it has {members})") from None
    return weights, int(match.group(2))


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """The SHA-256 of a file, hexadecimal, read in chunks (checkpoints are about 100 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hub_cache_path(url: str) -> Path:
    """The file torch's hub cache keeps ``url`` in (``torch.hub.get_dir()/checkpoints/<file name>``)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def resolve_weights_file(
    spec: str | os.PathLike, *, depth: int | None = None, argument: str = "model.backbone.weights"
) -> str | os.PathLike:
    """The local file behind a ``model.backbone.weights`` value, fetched into the hub cache first
    when it names torchvision weights; a path is returned unchanged.

    Args:
        spec: a file path or ``torchvision://<Enum>.<MEMBER>``.
        depth: the ResNet depth of the model the weights are for; a torchvision enum of another
            depth is refused before anything is fetched.
        argument: the key that named ``spec``, for error messages.

    Raises:
        ConfigError: an unknown enum or member, or one for another depth.
        CheckpointError: the download failed (no network, for example) or the file does not match
            the published checksum; the message names the URL and the cache path to put the file at.
    """
    if not is_torchvision_weights(spec):
        return spec
    import torch.hub

    weights, weights_depth = torchvision_weights_entry(str(spec), argument=argument)
    if depth is not None and weights_depth != depth:
        raise ConfigError(
            f"{argument}={spec}: these are ResNet-{weights_depth} weights, the backbone is a ResNet-{depth}"
        )
    url = weights.url
    cached = hub_cache_path(url)
    match = _HASH_PATTERN.search(cached.name)
    hash_prefix = match.group(1) if match else None
    if cached.is_file():
        # Checked here too (torch.hub checks only what it downloads): the file may have been copied by hand.
        digest = file_sha256(cached)
        if hash_prefix and not digest.startswith(hash_prefix):
            raise CheckpointError(
                f"{argument}={spec}: {cached} does not match the published checksum (its SHA-256 is "
                f"{digest[:16]}..., expected {hash_prefix}...); delete it to download it again, or replace it "
                f"with the file from {url}"
            )
        return cached
    checksum = f" (its SHA-256 starts with {hash_prefix})" if hash_prefix else ""
    where = f"on a machine without network, download {url} and save it as {cached}{checksum}"
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        # Writes a temporary file and renames it only after the checksum matched.
        torch.hub.download_url_to_file(url, str(cached), hash_prefix, progress=True)
    except RuntimeError as exc:
        if "hash" in str(exc):
            raise CheckpointError(
                f"{argument}={spec}: the file from {url} fails its published checksum ({exc})"
            ) from None
        raise CheckpointError(f"{argument}={spec}: could not fetch the weights ({exc}); {where}") from None
    except OSError as exc:  # no network (URLError is an OSError), a proxy refusing, a read-only cache
        reason = getattr(exc, "reason", None) or exc
        raise CheckpointError(f"{argument}={spec}: could not fetch the weights ({reason}); {where}") from None
    return cached

"""``model.backbone.weights=torchvision://<Enum>.<MEMBER>``: the hub cache, the checksum, offline errors.

Nothing here touches the network: the download is replaced by a fake ``urlopen`` (so torch's own
download code and checksum check run on its bytes) or by one that fails as an offline machine does.
"""

import email.message
import hashlib
import io
import types
import urllib.error
import urllib.response

import pytest
import torch
import torch.hub
import torchvision

from msadkit.config import load_config
from msadkit.errors import CheckpointError, ConfigError
from msadkit.modeling.backbones import weight_sources
from msadkit.modeling.backbones.resnet import torchvision_resnet
from msadkit.modeling.backbones.weight_sources import hub_cache_path, resolve_weights_file, torchvision_weights_entry
from msadkit.modeling.registry import build_model

R50 = "torchvision://ResNet50_Weights.IMAGENET1K_V1"
R50_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """torch's hub cache in a temporary folder (``torch.hub.get_dir()`` reads ``_hub_dir`` first)."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    return tmp_path / "hub"


def _offline(monkeypatch):
    def refuse(request, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "urlopen", refuse)


def _serve(monkeypatch, data: bytes):
    """``urlopen`` answering every URL with ``data``."""

    def answer(request, *args, **kwargs):
        headers = email.message.Message()
        headers["Content-Length"] = str(len(data))
        return urllib.response.addinfourl(io.BytesIO(data), headers, request.full_url)

    monkeypatch.setattr(torch.hub, "urlopen", answer)


def _resnet50_state_file_bytes(seed=0) -> tuple[bytes, dict]:
    torch.manual_seed(seed)
    state = torchvision.models.resnet50(weights=None).state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue(), state


def test_enum_names_resolve_to_torchvision_weights():
    weights, depth = torchvision_weights_entry(R50)
    assert weights is torchvision.models.ResNet50_Weights.IMAGENET1K_V1 and depth == 50
    assert weights.url == R50_URL
    weights, depth = torchvision_weights_entry("torchvision://ResNet101_Weights.DEFAULT")
    assert weights is torchvision.models.ResNet101_Weights.IMAGENET1K_V2 and depth == 101
    assert resolve_weights_file("pretrained/R-50.pth") == "pretrained/R-50.pth"  # a path stays a path


@pytest.mark.parametrize(
    "spec, message",
    [
        ("torchvision://ResNet50_Weights.IMAGENET9K", "has no member IMAGENET9K (it has IMAGENET1K_V1, IMAGENET1K_V2"),
        ("torchvision://VGG16_Weights.IMAGENET1K_V1", "ResNet101_Weights, ResNet152_Weights, ResNet18_Weights"),
        ("torchvision://resnet50", "torchvision://<Enum>.<MEMBER>"),
    ],
)
def test_unknown_names_are_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        torchvision_weights_entry(spec)


def test_weights_of_another_depth_are_refused_before_any_download(hub_dir, monkeypatch):
    _offline(monkeypatch)
    with pytest.raises(ConfigError, match="ResNet-50 weights, the backbone is a ResNet-101"):
        torchvision_resnet(101, weights_path=R50)


def test_offline_error_names_the_url_and_the_cache_path(hub_dir, monkeypatch, capsys):
    _offline(monkeypatch)
    expected = hub_dir / "checkpoints" / "resnet50-0676ba61.pth"
    assert hub_cache_path(R50_URL) == expected
    config = load_config("retinanet_demo", ["model.backbone.name=resnet50", f"model.backbone.weights={R50}"])
    with pytest.raises(CheckpointError) as error:
        build_model(config)
    message = str(error.value)
    assert f"model.backbone.weights={R50}" in message and "name resolution" in message
    assert f"download {R50_URL} and save it as {expected}" in message and "starts with 0676ba61" in message
    assert not expected.exists() and list(expected.parent.iterdir()) == []  # nothing half-written


def _fake_entry(monkeypatch, data: bytes, *, matching: bool = True) -> str:
    """Point the enum at a torchvision-style URL whose file-name checksum does (or does not) match ``data``."""
    prefix = hashlib.sha256(data).hexdigest()[:8]
    if not matching:
        prefix = format((int(prefix, 16) + 1) % 16**8, "08x")
    entry = types.SimpleNamespace(url=f"https://download.pytorch.org/models/resnet50-{prefix}.pth")
    monkeypatch.setattr(weight_sources, "torchvision_weights_entry", lambda spec, argument: (entry, 50))
    return f"resnet50-{prefix}.pth"


def test_a_file_put_in_the_cache_is_loaded_strictly_without_network(hub_dir, monkeypatch):
    _offline(monkeypatch)
    data, state = _resnet50_state_file_bytes()
    cached = hub_dir / "checkpoints" / _fake_entry(monkeypatch, data)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(data)
    model = torchvision_resnet(50, weights_path=R50, norm="BN")
    assert torch.equal(model.state_dict()["layer3.2.conv2.weight"], state["layer3.2.conv2.weight"])
    assert torch.equal(model.state_dict()["bn1.running_var"], state["bn1.running_var"])

    # Strict: a cached file missing a tensor (and named for its own checksum) is an error naming
    # the tensor, not a partly random backbone.
    del state["layer4.0.downsample.1.weight"]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    cached = hub_dir / "checkpoints" / _fake_entry(monkeypatch, buffer.getvalue())
    cached.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="layer4.0.downsample.1.weight"):
        torchvision_resnet(50, weights_path=R50, norm="BN")


def test_a_cached_file_that_fails_the_checksum_is_refused(hub_dir, monkeypatch):
    _offline(monkeypatch)
    data, _ = _resnet50_state_file_bytes()
    cached = hub_dir / "checkpoints" / "resnet50-0676ba61.pth"  # the real name, other bytes
    cached.parent.mkdir(parents=True)
    cached.write_bytes(data)
    with pytest.raises(CheckpointError) as error:
        torchvision_resnet(50, weights_path=R50, norm="BN")
    message = str(error.value)
    assert f"{cached} does not match the published checksum" in message
    assert "expected 0676ba61..." in message and R50_URL in message
    assert cached.read_bytes() == data  # the user's file is left for them to inspect


def test_download_is_checked_against_the_published_checksum(hub_dir, monkeypatch):
    data, state = _resnet50_state_file_bytes(seed=3)
    _serve(monkeypatch, data)
    name = _fake_entry(monkeypatch, data)
    model = torchvision_resnet(50, weights_path=R50, norm="BN")
    assert (hub_dir / "checkpoints" / name).read_bytes() == data
    assert torch.equal(model.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])

    # The same bytes under a name whose checksum they do not match: refused, nothing cached.
    name = _fake_entry(monkeypatch, data, matching=False)
    with pytest.raises(CheckpointError, match="fails its published checksum"):
        torchvision_resnet(50, weights_path=R50, norm="BN")
    assert not (hub_dir / "checkpoints" / name).exists()
    assert sorted(p.name for p in (hub_dir / "checkpoints").iterdir()) == [_fake_entry(monkeypatch, data)]


def test_slimmable_backbone_refuses_torchvision_weights():
    config = load_config("fcos_demo", [f"model.backbone.weights={R50}"])
    with pytest.raises(ConfigError, match="multi-width s_resnet50_0.25_0.5_0.75_1.0.pt"):
        build_model(config)

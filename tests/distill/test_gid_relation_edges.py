"""Edges of the GID relation loss and the GID weights that the main tests do not reach."""

import pytest
import torch

from msadkit.distill.gid.losses import GIDWeights, gid_relation_loss


def test_a_single_instance_with_a_negative_image_index_is_refused():
    embeddings = torch.randn(1, 4)
    with pytest.raises(ValueError, match="image_index must be >= 0"):
        gid_relation_loss(embeddings, embeddings, torch.tensor([-1]))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32])
def test_any_integer_image_index_gives_the_int64_result(dtype):
    torch.manual_seed(7)
    student, teacher = torch.randn(6, 5), torch.randn(6, 3)
    image_index = torch.tensor([0, 0, 0, 1, 1, 1])
    expected = gid_relation_loss(student, teacher, image_index)
    assert expected.item() > 0.01
    assert gid_relation_loss(student, teacher, image_index.to(dtype)).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("name", ["feature", "relation", "response_cls", "response_reg"])
def test_a_zero_weight_switches_a_term_off_and_is_accepted(name):
    assert getattr(GIDWeights(**{name: 0.0}), name) == 0.0

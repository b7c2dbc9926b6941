"""What the four peer feature terms (fitnet, cwd, pkd, mgd) share: a student whose levels do not
cover the image as the teacher's do is refused when the term is built, and one training step on tiny
FCOS and RetinaNet students reaches the student and every module the term trains."""

from __future__ import annotations

import pytest

from msadkit.distill.registry import build_term
from msadkit.errors import ConfigError
from tests.distill.peer_terms_setup import has_gradient, tiny_fcos, train_once

# The modules each term trains besides the student: MGD's align convs map the widths, as the other
# terms' adapters do, and its generation blocks turn the masked map into the teacher's.
TRAINED_MODULES = {
    "fitnet": ("adapters",),
    "cwd": ("adapters",),
    "pkd": ("adapters",),
    "mgd": ("aligns", "generators"),
}


@pytest.mark.parametrize("kind", TRAINED_MODULES)
def test_a_student_on_the_half_size_copy_is_refused_naming_the_term(kind):
    # Same level names, but the student sees the 0.5x copy: every pair would differ in size.
    with pytest.raises(ConfigError, match=rf"type '{kind}': the student's levels .* do not have the same sizes"):
        build_term({"type": kind}, student=tiny_fcos(8, input_downsample=2), teacher=tiny_fcos(8))


@pytest.mark.parametrize("arch", ["fcos", "retinanet"])
@pytest.mark.parametrize("kind", TRAINED_MODULES)
def test_one_training_step_reaches_the_student_and_the_terms_modules(kind, arch):
    term, _ = train_once(arch, {"type": kind}, f"loss_{kind}")
    for name in TRAINED_MODULES[kind]:
        assert has_gradient(getattr(term, name)), name

"""A release goes through the same declared lookup as a train: the model's own writer, imported by
name; the generic writer only for a known model that declares none; an unknown name is one line."""

from __future__ import annotations

import pytest

from corefm.errors import ConfigError
from corefm.hub.release import write_generic, writer_for


@pytest.mark.parametrize("model, module", [("openelm", "projects.openelm.release"),
                                           ("clip", "projects.clip_pseudo.release"),
                                           ("sam_clip", "projects.sam_clip.release"),
                                           ("byteformer", "projects.byteformer.release")])
def test_each_project_writer_is_found_by_name(model, module):
    assert writer_for(model).__module__ == module


def test_generic_writer_only_for_a_known_model_without_one():
    assert writer_for("vit_classifier") is write_generic
    with pytest.raises(ConfigError, match=r"^release: unknown model 'openelmm' in the run's recipe \(known: .*openelm"):
        writer_for("openelmm")

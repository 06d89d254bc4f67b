"""The pipelines bench compares (:mod:`dfd.export.bench.pipelines`): what the reference pipeline cannot take."""

from __future__ import annotations

from dfd.export.bench.pipelines import reference_cannot_take


def test_the_reference_pipeline_sizes_it_cannot_take():
    sizes = {"global": 252, "face": 252, "fusion": 224}
    assert reference_cannot_take(252, 252, sizes) is None and reference_cannot_take(224, 224, {"fusion": 224}) is None
    assert "251x300 is smaller than the 252 crop" in reference_cannot_take(251, 300, sizes)
    assert "an image 224 high but 300 wide breaks" in reference_cannot_take(300, 224, {"fusion": 224})
    assert reference_cannot_take(300, 224, {"global": 224}) is None  # no fusion stream, no batch to break

"""Real tensor and pipeline parallelism on CPU (gloo): every layout gives the single-process losses.

Weights are initialized once at TP=1 x PP=1 and saved as a megatron-core dist checkpoint; each layout
loads (reshards) them and runs the same micro-batches through megatron-core's schedules, forward and
backward (1F1B, or interleaved 1F1B with virtual stages).
"""

import json

import numpy as np
import pytest

from megatron_soda.models.presets import get_preset
from megatron_soda.training.parallel import ParallelLayout
from tests.dist import launch

LAYOUTS = {  # name: (tp, pp, vp)
    "tp2": (2, 1, None),
    "pp2": (1, 2, None),
    "tp2-pp2": (2, 2, None),
    "pp4-interleaved": (1, 4, 2),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Losses at TP=1 x PP=1, and the checkpoint every layout loads."""
    root = tmp_path_factory.mktemp("parallel")
    for tied in (False, True):
        name = "tied" if tied else "untied"
        launch(
            "parallel_loss.py",
            1,
            "--layers",
            8,
            "--checkpoint",
            root / name,
            "--save",
            "--out",
            root / f"{name}.json",
            *(["--tied"] if tied else []),
        )
    return root


def run_layout(root, tp, pp, vp, tied=False, packed=False):
    name = "tied" if tied else "untied"
    out = root / f"{name}-{tp}-{pp}-{vp}{'-packed' if packed else ''}.json"
    args = ["--layers", 8, "--tp", tp, "--pp", pp, "--checkpoint", root / name, "--out", out]
    launch(
        "parallel_loss.py",
        tp * pp,
        *args,
        *(["--vp", vp] if vp else []),
        *(["--tied"] if tied else []),
        *(["--packed"] if packed else []),
    )
    return json.loads(out.read_text())


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.timeout(400)
def test_parallel_layout_gives_the_single_process_losses(reference, layout):
    losses, expected = run_layout(reference, *LAYOUTS[layout]), json.loads((reference / "untied.json").read_text())
    assert len(losses) == 4 and len(set(losses)) == 4  # four distinct micro-batches
    assert losses == pytest.approx(expected, abs=1e-5)
    # An untrained model's per-token loss is about ln(vocabulary), not a fraction of it.
    assert np.mean(losses) == pytest.approx(np.log(get_preset("tiny").vocab_size), rel=0.02)


def run_fresh(root, tp, pp, vp, tied):
    out = root / f"fresh-{'tied' if tied else 'untied'}-{tp}-{pp}-{vp}.json"
    args = ["--layers", 8, "--tp", tp, "--pp", pp, "--fresh", "--out", out, *(["--vp", vp] if vp else [])]
    launch("parallel_loss.py", tp * pp, *args, *(["--tied"] if tied else []))
    return json.loads(out.read_text())


@pytest.mark.timeout(600)
def test_a_fresh_model_is_the_same_at_every_layout(tmp_path):
    """Layers seeded by their global number (as training builds them): no shared checkpoint needed. Untied, so
    the output layer is drawn on the last stage too (a tied one is the embedding, synced by megatron-core)."""
    expected = run_fresh(tmp_path, 1, 1, None, False)
    assert np.mean(expected) == pytest.approx(np.log(get_preset("tiny").vocab_size), rel=0.02)
    for layout in [(2, 2, None), (1, 4, 2)]:
        assert run_fresh(tmp_path, *layout, False) == pytest.approx(expected, abs=1e-5), layout


@pytest.mark.timeout(400)
def test_tied_embeddings_across_pipeline_stages_give_the_single_process_losses(reference):
    losses, expected = run_layout(reference, 2, 2, None, tied=True), json.loads((reference / "tied.json").read_text())
    assert losses == pytest.approx(expected, abs=1e-5)


@pytest.mark.timeout(400)
def test_packed_rows_at_tp2_pp2_give_the_single_process_losses(reference):
    """Document-masked packed rows (thd format, cu_seqlens through every stage) under TP and PP."""
    expected = run_layout(reference, 1, 1, None, packed=True)
    losses = run_layout(reference, 2, 2, None, packed=True)
    dense = json.loads((reference / "untied.json").read_text())
    assert losses == pytest.approx(expected, abs=1e-5)
    assert not np.allclose(losses, dense, atol=1e-4)  # the document mask changed what was attended


@pytest.mark.parametrize(
    "layout, world, message",
    [
        (ParallelLayout(tensor=3), 6, "must divide the 4 attention heads"),
        (ParallelLayout(pipeline=3), 3, "do not split into 3 pipeline stages"),
        (ParallelLayout(pipeline=2, virtual_pipeline=4), 2, "x 4 virtual stages"),
        (ParallelLayout(tensor=2, pipeline=2), 6, "not divisible"),
    ],
)
def test_impossible_layouts_are_refused_naming_the_flag(layout, world, message):
    shape = get_preset("tiny")
    with pytest.raises(ValueError, match=message):
        layout.check(world, shape.num_layers, shape.num_attention_heads, shape.num_query_groups)

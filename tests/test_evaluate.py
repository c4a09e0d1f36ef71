"""Evaluation across model forms and layouts: the same scores from our checkpoint (at TP=1 or at a training
layout) and from its Hugging Face export; reports and their comparison."""

import numpy as np

from megatron_soda.data.formats import Kind
from megatron_soda.evaluation.scoring import HFScorer, likelihood_item, mean_log_probs
from tests.dist import launch
from tests.learned import TRANSCRIPT


def scoring_items(learned):
    layout, tokenizer, codes = learned["layout"], learned["tokenizer"], learned["codes"]
    rng = np.random.default_rng(0)
    noise = rng.integers(0, layout.codebook_size, codes.shape)
    return [
        likelihood_item(Kind.AUDIO, layout.codes_to_ids(codes), layout),
        likelihood_item(Kind.AUDIO, layout.codes_to_ids(noise), layout),
        likelihood_item(Kind.AUDIO, layout.codes_to_ids(codes), layout, codebooks=[0]),
        likelihood_item(Kind.TEXT, tokenizer.encode_text(TRANSCRIPT), layout),
        likelihood_item(Kind.TEXT, tokenizer.encode_text("the mat sat on the cat"), layout),
    ]


def test_scores_at_tp2_pp2_equal_the_exports_scores(learned, tmp_path):
    """TP x PP through megatron's forward-only schedule, the padded vocabulary rows masked: the scores
    transformers gives the export."""
    tp, pp, world = 2, 2, 4
    from megatron_soda.inference.hf_engine import load_hf_model

    items = scoring_items(learned)
    np.savez(
        tmp_path / "items.npz",
        **{f"ids_{i}": item.ids for i, item in enumerate(items)},
        **{f"targets_{i}": item.targets for i, item in enumerate(items)},
    )
    layout = learned["layout"]
    launch(
        "parallel_scoring_worker.py", world, "--load", learned["root"] / "ckpt", "--items", tmp_path / "items.npz",
        "--out", tmp_path / "scores.npy", "--tp", tp, "--pp", pp, "--vocab", layout.vocab_size, "--pad", layout.eos_id,
    )  # fmt: skip
    ours = np.load(tmp_path / "scores.npy")
    theirs = mean_log_probs(HFScorer(load_hf_model(learned["root"] / "hf")), items)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    assert ours[0] > ours[1] and ours[3] > ours[4]  # what it learned scores above what it did not


def test_scoring_batches_keep_to_the_token_budget_and_bound_their_padding():
    from megatron_soda.evaluation.scoring import batches_by_tokens

    lengths = [100, 5, 6, 5, 100, 90]
    assert batches_by_tokens(lengths, max_tokens=1000) == [[1, 3, 2], [5, 0, 4]]  # short ones never pad to 100
    assert batches_by_tokens(lengths, max_tokens=1000, max_padding=float("inf")) == [[1, 3, 2, 5, 0, 4]]
    assert batches_by_tokens(lengths, max_tokens=200) == [[1, 3, 2], [5, 0], [4]]  # 3 x 100 > 200

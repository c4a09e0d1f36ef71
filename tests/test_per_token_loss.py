"""The loss is the global batch's per-token mean, however the batch is split (megatron's per-token loss).

Each layout runs one fixed global batch with an uneven loss mask (half of one row's tokens masked)
through megatron-core's schedules, DDP and ``finalize_model_grads`` as the trainer sets them up
(tests/dist/per_token_worker.py). Every split (one micro-batch of four rows, four of one, two data-
parallel ranks, two pipeline stages, both) must give the gradient and the logged loss of the hand
reference: the whole batch in one forward, sum(ce + w * lse^2) over its loss tokens / their number,
in plain torch. The old rule (the mean of micro-batch means) gives another value for that batch, so
the comparison can tell the two apart. All-masked micro-batches (eval padding) count for nothing.
"""

import json

import pytest
import torch

from tests.dist import launch

RUNS = {  # name: (world size, pipeline stages, jobs)
    "single": (1, 1, "reference,train:1,train:4,train:4:empty,eval:1,eval:4:empty"),
    "dp2": (2, 1, "train:1,train:2:empty,eval:1:empty"),
    "pp2": (2, 2, "train:4,train:4:empty,eval:4:empty"),
    "pp2-dp2": (4, 2, "train:2,eval:1:empty"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("per_token")
    done = {}

    def get(name):
        if name not in done:
            world, pp, jobs = RUNS[name]
            launch("per_token_worker.py", world, "--pp", pp, "--jobs", jobs, "--out", root / name, timeout=300)
            done[name] = root / name
        return done[name]

    return get


def load(folder, job):
    folder = folder / job.replace(":", "-")
    metrics = json.loads((folder / "metrics.json").read_text())
    grads = {}
    for path in sorted(folder.glob("grads-pp*.pt")):
        grads.update(torch.load(path))
    return metrics, grads


@pytest.fixture(scope="module")
def reference(runs):
    metrics, grads = load(runs("single"), "reference")
    return metrics["combined"], grads


def check(result, reference):
    """The combined metrics and (for training) the finalized gradients equal the hand reference."""
    (expected, expected_grads), (metrics, grads) = reference, result
    combined = metrics["combined"]
    assert combined["lm loss"] == pytest.approx(expected["lm loss"], abs=1e-5)
    assert combined["z loss"] == pytest.approx(expected["z loss"], abs=1e-6)
    assert combined["audio tokens"] + combined["text tokens"] == expected["tokens"]
    assert all(torch.isfinite(torch.tensor(list(row.values()))).all() for row in metrics["micro_batches"])
    if grads:
        assert grads.keys() == expected_grads.keys()
        worst = max((grads[name] - expected_grads[name]).abs().max().item() for name in grads)
        assert worst < 1e-6, worst


@pytest.mark.timeout(300)
def test_the_reference_is_not_the_mean_of_micro_batch_means(reference):
    expected, grads = reference
    assert expected["tokens"] == 4 * 16 - 8
    # The uneven mask makes the old rule differ, far beyond the tolerances used below.
    assert abs(expected["mean of micro-batch means"] - (expected["lm loss"] + expected["z loss"])) > 1e-3
    assert expected["mean of means grad diff"] > 1e-4
    assert expected["z loss"] > 0.01 and max(g.abs().max().item() for g in grads.values()) > 0.01


@pytest.mark.timeout(300)
@pytest.mark.parametrize("job", ["train:1", "train:4"])
def test_one_micro_batch_of_four_and_four_of_one_give_the_per_token_reference(runs, reference, job):
    check(load(runs("single"), job), reference)


@pytest.mark.timeout(300)
def test_a_micro_batch_without_loss_tokens_changes_nothing_in_training(runs, reference):
    metrics, grads = load(runs("single"), "train:4:empty")
    assert metrics["micro_batches"][-1]["audio tokens"] + metrics["micro_batches"][-1]["text tokens"] == 0
    assert metrics["micro_batches"][-1]["lm loss"] == 0.0
    check((metrics, grads), reference)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("job", ["eval:1", "eval:4:empty"])
def test_forward_only_evaluation_gives_the_per_token_mean_padding_counting_for_nothing(runs, reference, job):
    check(load(runs("single"), job), reference)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("job", ["train:1", "train:2:empty", "eval:1:empty"])
def test_two_data_parallel_ranks_give_the_single_rank_loss_and_gradient(runs, reference, job):
    check(load(runs("dp2"), job), reference)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("job", ["train:4", "train:4:empty", "eval:4:empty"])
def test_two_pipeline_stages_give_the_single_stage_loss_and_gradient(runs, reference, job):
    """The token count exists on the last stage only: finalize_model_grads broadcasts it to the first."""
    check(load(runs("pp2"), job), reference)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("job", ["train:2", "eval:1:empty"])
def test_pipeline_and_data_parallel_together_give_the_reference(runs, reference, job):
    check(load(runs("pp2-dp2"), job), reference)


def test_forward_backward_refuses_a_config_without_per_token_loss(megatron_world):
    from megatron_soda.models.gpt import transformer_config
    from megatron_soda.models.presets import get_preset
    from megatron_soda.training import parallel
    from megatron_soda.training.step import forward_backward

    shape = get_preset("tiny", vocab_size=64)
    config = transformer_config(shape)
    assert config.calculate_per_token_loss
    config.calculate_per_token_loss = False
    (model,) = parallel.build_model_chunks(shape, config, attention_backend="sdpa")
    batch = {
        "tokens": torch.zeros(1, 8, dtype=torch.long),
        "labels": torch.zeros(1, 8, dtype=torch.long),
        "loss_mask": torch.ones(1, 8),
        "position_ids": torch.arange(8)[None],
    }
    with pytest.raises(ValueError, match="calculate_per_token_loss"):
        forward_backward([model], [batch], seq_length=8, micro_batch_size=1)

"""A model-only checkpoint (e.g. imported from Hugging Face) is what the first update starts from.

Mixed-precision optimizers keep fp32 main copies of the parameters, made when they are built; a load
that skips the optimizer must refresh them (``reload_model_params``), or the first step writes the
initial weights back. megatron's bf16 wrapper accepts CUDA tensors only, so on CPU the test runs the
fp32 wrapper and checks that the refresh is asked for exactly when the optimizer state is not loaded.
"""

import torch


def _model(shape, seed):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from megatron_soda.models.gpt import transformer_config
    from megatron_soda.training import parallel

    config = transformer_config(shape)
    torch.manual_seed(seed)
    chunks = parallel.build_model_chunks(shape, config, attention_backend="sdpa")
    return [DistributedDataParallel(config, DistributedDataParallelConfig(), chunk) for chunk in chunks]


def test_loading_without_optimizer_state_refreshes_the_optimizers_copies_of_the_weights(megatron_world, tmp_path):
    from megatron_soda.models.presets import get_preset
    from megatron_soda.training import checkpointing
    from megatron_soda.training.config import OptimizerConfig
    from megatron_soda.training.optimizer import build_megatron_optimizer
    from megatron_soda.training.schedules import apply_lr
    from megatron_soda.training.step import forward_backward

    shape = get_preset("tiny", num_layers=2)
    source = _model(shape, seed=1)
    checkpointing.save_checkpoint(tmp_path / "imported", 0, source, None, {}, 0, {"model": "tiny"}, model_only=True)
    loaded = {k: v.detach().clone() for k, v in source[0].module.state_dict().items() if torch.is_tensor(v)}

    model = _model(shape, seed=2)  # other initial weights
    optimizer = build_megatron_optimizer(model, OptimizerConfig(name="adamw", lr=1e-3, weight_decay=0.0))
    refreshed = []
    original = optimizer.reload_model_params
    optimizer.reload_model_params = lambda *args: (refreshed.append(True), original(*args))[1]
    checkpointing.load_checkpoint(tmp_path / "imported", model, optimizer)
    assert refreshed == [True]

    apply_lr(optimizer, 0.0)
    data = torch.randint(0, shape.vocab_size, (2, 17), generator=torch.Generator().manual_seed(0))
    batch = {
        "tokens": data[:, :-1],
        "labels": data[:, 1:],
        "loss_mask": torch.ones(2, 16),
        "position_ids": torch.arange(16).expand(2, -1),
    }
    forward_backward(model, [batch], seq_length=16, micro_batch_size=2)
    optimizer.step()  # lr 0: the weights stay the loaded ones
    after = model[0].module.state_dict()
    for key, value in loaded.items():
        assert torch.equal(after[key], value), key

    # A full checkpoint restores the optimizer's own copies instead.
    checkpointing.save_checkpoint(tmp_path / "run", 1, model, optimizer, {}, 2, {"model": "tiny"})
    refreshed.clear()
    checkpointing.load_checkpoint(tmp_path / "run", model, optimizer)
    assert refreshed == []

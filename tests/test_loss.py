"""Training loss (cross-entropy + z-loss, per-modality metrics) and gradient clipping on CPU.

TP=1 runs in this process (``lm_loss`` needs no process group at TP=1); TP=2 and the megatron
optimizer run in subprocess ranks (tests/dist/loss_worker.py).
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from megatron_soda.training.cpu_compat import clip_grad_by_total_norm_fp32_cpu
from megatron_soda.training.loss import LossSettings, combine_metrics, lm_loss
from tests.dist import launch
from tests.dist.loss_worker import PADDED, Z_WEIGHT, layout, sample_logits

LAYOUT = layout()  # audio ids 24..51, real vocabulary 52, padded to 64


def reference(logits, labels, mask, z_weight, masked_rows=False):
    """Plain torch: masked-mean cross-entropy + z_weight * masked-mean logsumexp^2 (and their masked sum),
    and per-modality CE."""
    if masked_rows:
        logits = logits[..., : LAYOUT.vocab_size]  # -inf padding rows == the unpadded softmax
    safe_labels = torch.where(mask > 0, labels, 0)  # the pad label (masked) is outside the unpadded range
    ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), safe_labels.reshape(-1), reduction="none")
    lse = torch.logsumexp(logits, dim=-1).reshape(-1)
    m = mask.reshape(-1)
    audio = ((labels >= LAYOUT.audio_offset) & (labels < LAYOUT.vocab_size)).reshape(-1).float() * m
    text = m - audio
    return {
        "loss sum": (ce * m).sum() + z_weight * (lse.square() * m).sum(),
        "loss": (ce * m).sum() / m.sum() + z_weight * (lse.square() * m).sum() / m.sum(),
        "lm loss": (ce * m).sum() / m.sum(),
        "z loss": z_weight * (lse.square() * m).sum() / m.sum(),
        "audio loss": (ce * audio).sum() / audio.sum(),
        "text loss": (ce * text).sum() / text.sum(),
        "audio tokens": audio.sum(),
        "text tokens": text.sum(),
    }


def tp1(masked_rows):
    """``lm_loss``'s per-token mean (its sum over its token count), metrics and the mean's logits gradient."""
    logits, labels, mask = sample_logits()
    x = logits.clone().requires_grad_()
    loss_sum, num_tokens, metrics = lm_loss(
        x.clone(), labels, mask, Z_WEIGHT, LAYOUT.audio_offset, LAYOUT.vocab_size, mask_padded_vocab=masked_rows
    )
    assert num_tokens.dtype == torch.int32 and num_tokens.item() == mask.sum().item()
    loss = loss_sum / num_tokens
    loss.backward()
    return loss, metrics, x.grad


@pytest.mark.parametrize("masked_rows", [False, True])
def test_tp1_loss_z_loss_and_gradient_match_plain_torch(masked_rows):
    logits, labels, mask = sample_logits()
    loss, metrics, grad = tp1(masked_rows)
    x = logits.clone().requires_grad_()
    expected = reference(x, labels, mask, Z_WEIGHT, masked_rows)
    expected["loss"].backward()
    assert loss.item() == pytest.approx(expected["loss"].item(), rel=1e-6)
    loss_sum, _, _ = lm_loss(
        logits.clone(), labels, mask, Z_WEIGHT, LAYOUT.audio_offset, LAYOUT.vocab_size, mask_padded_vocab=masked_rows
    )
    assert loss_sum.item() == pytest.approx(expected["loss sum"].item(), rel=1e-6)  # a sum: megatron divides
    for key, value in metrics.items():
        assert not value.requires_grad
        assert value.item() == pytest.approx(expected[key].item(), rel=1e-6), key
    assert metrics["z loss"].item() > 0.1  # the z-loss term is really there
    assert torch.allclose(grad, x.grad, rtol=0, atol=1e-7)
    padded_grad = grad[..., LAYOUT.vocab_size :]
    assert (padded_grad.abs().max() == 0) if masked_rows else (padded_grad.abs().max() > 0)


def test_per_modality_counts_and_losses_by_label():
    # labels: text, <|text_start|> .. <|audio_end|> (specials are text), first/last audio id, one id
    # past the real vocabulary (counted as text), a pad label (loss-masked), an audio id loss-masked.
    labels = torch.tensor([[5, 20, 21, 22, 23, 24, 51, 52, 60, 30]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1, 0, 0]], dtype=torch.float)
    logits = torch.randn(1, 10, PADDED, generator=torch.Generator().manual_seed(2))
    _, _, metrics = lm_loss(logits.clone(), labels, mask, 0.0, LAYOUT.audio_offset, LAYOUT.vocab_size)
    assert metrics["audio tokens"].item() == 2 and metrics["text tokens"].item() == 6
    ce = F.cross_entropy(logits[0], torch.where(mask[0] > 0, labels[0], 0), reduction="none")
    assert metrics["audio loss"].item() == pytest.approx(ce[5:7].mean().item(), rel=1e-6)
    assert metrics["text loss"].item() == pytest.approx(torch.cat([ce[:5], ce[7:8]]).mean().item(), rel=1e-6)
    assert metrics["lm loss"].item() == pytest.approx(ce[:8].mean().item(), rel=1e-6)
    assert metrics["z loss"].item() == 0.0

    _, _, no_layout = lm_loss(logits.clone(), labels, mask)  # without a layout every label is text
    assert no_layout["audio tokens"].item() == 0 and no_layout["text tokens"].item() == 8
    assert no_layout["audio loss"].item() == 0.0


def test_bf16_logits_are_left_alone_and_give_the_fp32_loss_of_their_values():
    logits, labels, mask = sample_logits()
    low = logits.bfloat16()
    before = low.clone()
    loss_sum, _, _ = lm_loss(low, labels, mask, Z_WEIGHT, LAYOUT.audio_offset, LAYOUT.vocab_size)
    assert torch.equal(low, before)
    assert loss_sum.item() == pytest.approx(reference(low.float(), labels, mask, Z_WEIGHT)["loss sum"].item(), rel=1e-6)


def test_settings_and_shapes_are_checked():
    with pytest.raises(ValueError, match="z-loss"):
        LossSettings(z_loss_weight=-1.0)
    with pytest.raises(ValueError, match="layout"):
        LossSettings(mask_padded_vocab=True)
    logits, labels, mask = sample_logits()
    with pytest.raises(ValueError, match="disagree"):
        lm_loss(logits.transpose(0, 1), labels, mask)  # [s, b, v] against [b, s] labels


def test_combine_metrics_gives_per_token_means_over_all_micro_batches():
    rows = [
        {"lm loss": 2.0, "z loss": 0.1, "audio loss": 3.0, "text loss": 1.0, "audio tokens": 1.0, "text tokens": 3.0},
        {"lm loss": 4.0, "z loss": 0.3, "audio loss": 5.0, "text loss": 0.0, "audio tokens": 3.0, "text tokens": 0.0},
    ]
    expected = {
        "lm loss": (2 * 4 + 4 * 3) / 7,
        "z loss": (0.1 * 4 + 0.3 * 3) / 7,
        "audio loss": (3 + 15) / 4,
        "text loss": 1.0,
        "audio tokens": 4.0,
        "text tokens": 3.0,
    }
    assert combine_metrics(rows) == pytest.approx(expected)
    # A micro-batch without loss tokens (eval padding) counts for nothing; none at all gives zeros, no NaN.
    empty = dict.fromkeys(("lm loss", "z loss", "audio loss", "text loss", "audio tokens", "text tokens"), 0.0)
    assert combine_metrics(rows + [empty]) == pytest.approx(expected)
    assert combine_metrics([empty]) == empty and combine_metrics([]) == empty


@pytest.mark.parametrize("masked_rows", [False, True])
def test_micro_batch_without_loss_tokens_gives_zero_sum_count_and_gradient(masked_rows):
    logits, labels, mask = sample_logits()
    x = logits.clone().requires_grad_()
    loss_sum, num_tokens, metrics = lm_loss(
        x.clone(),
        labels,
        torch.zeros_like(mask),
        Z_WEIGHT,
        LAYOUT.audio_offset,
        LAYOUT.vocab_size,
        mask_padded_vocab=masked_rows,
    )
    loss_sum.backward()
    assert loss_sum.item() == 0.0 and num_tokens.item() == 0
    assert all(value.item() == 0.0 for value in metrics.values()), metrics
    assert torch.equal(x.grad, torch.zeros_like(x.grad))


def test_loss_sums_add_up_over_any_split_of_the_rows():
    """The per-token mean of two halves (sums and counts added) is the whole batch's, uneven masks or not."""
    logits, labels, mask = sample_logits(batch=4, seed=3)
    mask[0, :4] = 0.0  # one row with half its tokens masked
    whole_sum, whole_count, _ = lm_loss(logits.clone(), labels, mask, Z_WEIGHT)
    parts = [lm_loss(logits[i : i + 1].clone(), labels[i : i + 1], mask[i : i + 1], Z_WEIGHT) for i in range(4)]
    assert sum(p[1].item() for p in parts) == whole_count.item() == mask.sum().item()
    assert sum(p[0].item() for p in parts) == pytest.approx(whole_sum.item(), rel=1e-6)
    combined = combine_metrics([{k: v.item() for k, v in p[2].items()} for p in parts])
    expected = reference(logits, labels, mask, Z_WEIGHT)
    assert combined["lm loss"] + combined["z loss"] == pytest.approx(expected["loss"].item(), rel=1e-6)
    assert combined["lm loss"] == pytest.approx(expected["lm loss"].item(), rel=1e-6)


def test_cpu_clip_scales_in_place_only_above_the_limit_like_megatron():
    params = [
        torch.nn.Parameter(torch.zeros(3)),
        torch.nn.Parameter(torch.zeros(2, 2)),
        torch.nn.Parameter(torch.zeros(1)),
    ]
    params[0].grad = torch.tensor([3.0, 0.0, 4.0])
    params[1].grad = torch.full((2, 2), 1.0)
    # params[2] has no gradient: skipped, as megatron skips it
    norm = math.sqrt(25 + 4)
    clip_grad_by_total_norm_fp32_cpu(params, 1.0, norm)
    coeff = 1.0 / (norm + 1e-6)
    assert torch.allclose(params[0].grad, torch.tensor([3.0, 0.0, 4.0]) * coeff)
    assert torch.allclose(params[1].grad, torch.full((2, 2), coeff))
    before = params[0].grad.clone()
    clip_grad_by_total_norm_fp32_cpu(params, 10.0, 1.0)  # below the limit: untouched
    assert torch.equal(params[0].grad, before)


# ---- across processes ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tp2(tmp_path_factory):
    out = tmp_path_factory.mktemp("loss") / "tp2.json"
    launch("loss_worker.py", 2, "--tp", 2, "--parts", "loss,model,clip", "--out", out, timeout=200)
    return json.loads(out.read_text())


@pytest.mark.timeout(240)
@pytest.mark.parametrize("masked_rows", [False, True])
def test_tp2_gives_the_tp1_losses_metrics_and_gradient(tp2, masked_rows):
    loss, metrics, grad = tp1(masked_rows)
    result = tp2["loss"]["masked" if masked_rows else "unmasked"]
    assert result["loss"] == pytest.approx(loss.item(), abs=1e-5)
    assert result["num_tokens"] == sample_logits()[2].sum().item()
    for key, value in metrics.items():
        assert result[key] == pytest.approx(value.item(), abs=1e-5), key
    assert torch.allclose(torch.tensor(result["grad"]), grad, rtol=0, atol=1e-6)


@pytest.mark.timeout(240)
def test_tp2_cross_entropy_is_megatrons_vocab_parallel_cross_entropy(tp2):
    assert tp2["loss"]["vs_megatron"] == {"ce": 0.0, "grad": 0.0}


@pytest.mark.timeout(240)
def test_tp2_gpt_logits_without_labels_give_megatrons_own_loss_through_forward_backward(tp2):
    model = tp2["model"]
    assert model["megatron_shape"] == [2, 16]
    assert model["logits_shape"] == [2, 16, 1024 // 2]  # [b, s, padded vocab / tp]
    assert model["lm_loss"] == pytest.approx(model["megatron_lm_loss"], abs=1e-6)
    (step,) = model["step"]
    assert step["lm loss"] == pytest.approx(model["megatron_lm_loss"], abs=1e-6)
    assert step["z loss"] > 0
    assert (step["audio tokens"], step["text tokens"]) == (
        model["expected_audio_tokens"],
        model["expected_text_tokens"],
    )


def check_clip(clip):
    norms, ref_norms = clip["norms"], clip["ref_norms"]
    assert norms == pytest.approx(ref_norms, rel=1e-6)
    assert norms[0] > 1.0 and norms[1] > 1.0 and norms[2] < 1.0  # clipped twice, then not
    assert max(clip["clipped_grad_diff"]) < 1e-6
    assert clip["param_diff"] < 1e-6 and clip["moved"] > 1e-2


@pytest.mark.timeout(240)
def test_megatron_optimizer_clips_on_cpu_at_tp2_like_the_hand_reference(tp2):
    check_clip(tp2["clip"])


@pytest.mark.timeout(240)
def test_megatron_optimizer_clips_on_cpu_at_tp1_like_the_hand_reference(tmp_path):
    out = tmp_path / "tp1.json"
    launch("loss_worker.py", 1, "--tp", 1, "--parts", "clip", "--out", out, timeout=200)
    check_clip(json.loads(out.read_text())["clip"])

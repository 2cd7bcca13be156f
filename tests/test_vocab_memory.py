"""Log-probs, entropy and the exact KL over a real-size vocabulary without an fp32 copy of the whole logits:
the chunked functions equal the textbook ``log_softmax`` formulas (values and gradients), in fp32 and bf16."""
import pytest
import torch

from rlhf_exp.core.kl import full_kl_from_logits
from rlhf_exp.core.losses import entropy_from_logits, logit_blocks, logprobs_from_logits


def _reference_logprobs(logits, labels):
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_rows", [None, 1, 3, 5, 64])
def test_selective_logprobs_equal_log_softmax_gather(dtype, chunk_rows):
    torch.manual_seed(0)
    logits = (torch.randn(3, 5, 97) * 4).to(dtype)
    labels = torch.randint(0, 97, (3, 5))
    got = logprobs_from_logits(logits, labels, chunk_rows=chunk_rows)
    assert got.dtype == torch.float32 and got.shape == (3, 5)
    torch.testing.assert_close(got, _reference_logprobs(logits, labels), rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_rows", [None, 2, 7])
def test_selective_logprobs_gradient_equals_autograd(dtype, chunk_rows):
    torch.manual_seed(1)
    base = (torch.randn(2, 6, 50) * 3).to(dtype)
    labels = torch.randint(0, 50, (2, 6))
    w = torch.randn(2, 6)
    a = base.clone().requires_grad_(True)
    (logprobs_from_logits(a, labels, chunk_rows=chunk_rows) * w).sum().backward()
    b = base.clone().requires_grad_(True)
    (_reference_logprobs(b, labels) * w).sum().backward()
    assert a.grad.dtype == dtype   # the gradient stays in the logits' dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(a.grad.float(), b.grad.float(), rtol=0, atol=tol)


def test_selective_logprobs_on_a_non_contiguous_slice():
    """The policy's logits are a slice ``[:, -(T+1):-1]`` of the model output: not contiguous."""
    torch.manual_seed(2)
    full = torch.randn(4, 9, 31)
    logits = full[:, 2:-1, :]
    labels = torch.randint(0, 31, (4, 6))
    torch.testing.assert_close(logprobs_from_logits(logits, labels, chunk_rows=4), _reference_logprobs(logits, labels))


@pytest.mark.parametrize("chunk_rows", [None, 1, 4])
def test_chunked_entropy_and_full_kl_equal_the_whole_tensor_formulas(chunk_rows):
    torch.manual_seed(3)
    logits, ref = torch.randn(3, 5, 40).requires_grad_(True), torch.randn(3, 5, 40)
    logp, logq = torch.log_softmax(logits, -1), torch.log_softmax(ref, -1)
    ent = entropy_from_logits(logits, chunk_rows=chunk_rows)
    torch.testing.assert_close(ent, -(logp.exp() * logp).sum(-1))
    torch.testing.assert_close(full_kl_from_logits(logits, ref, chunk_rows=chunk_rows),
                               (logp.exp() * (logp - logq)).sum(-1))
    # differentiable (the entropy bonus and kl.estimator=full in the loss)
    g_chunk, = torch.autograd.grad(ent.sum(), logits)
    g_ref, = torch.autograd.grad((-(logp.exp() * logp).sum(-1)).sum(), logits)
    torch.testing.assert_close(g_chunk, g_ref)


def test_blocks_tile_the_grid_once_within_the_budget():
    for B, T, V, rows in [(3, 5, 10, 4), (2, 7, 10, 20), (4, 3, 10, None), (1, 1, 151936, None)]:
        seen = torch.zeros(B, T, dtype=torch.long)
        for bs, ts in logit_blocks(B, T, V, rows):
            seen[bs, ts] += 1
            assert seen[bs, ts].numel() <= (rows or max(1, 2 ** 25 // V))
        assert (seen == 1).all()

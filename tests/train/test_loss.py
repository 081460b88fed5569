"""The chunked linear cross-entropy equals the plain `F.cross_entropy(hidden @ W.T, y)`: loss and both
gradients, over one chunk or many, with ignored targets, and with no gradient wanted (evaluation)."""

import pytest
import torch
import torch.nn.functional as F

from rafale.data import IGNORE_INDEX
from rafale.train import loss as L


def plain(hidden, weight, targets):
    logits = hidden.reshape(-1, hidden.shape[-1]) @ weight.t()
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits, targets.reshape(-1), ignore_index=IGNORE_INDEX)


def both(hidden, weight, targets, fn):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    out = fn(h, w, targets)
    (out * 3.0).backward()  # a non-unit incoming gradient
    return out.detach(), h.grad, w.grad


@pytest.mark.parametrize("chunk_elements", [1 << 23, 97 * 64, 64])  # one chunk; several; one row each
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_matches_plain_cross_entropy(monkeypatch, chunk_elements, dtype, tol):
    monkeypatch.setattr(L, "CHUNK_ELEMENTS", chunk_elements)
    monkeypatch.setattr(L, "MIN_ROWS", 1)
    g = torch.Generator().manual_seed(0)
    B, T, C, V = 3, 37, 16, 97
    hidden = torch.randn(B, T, C, generator=g, dtype=dtype) * 2
    weight = torch.randn(V, C, generator=g, dtype=dtype)
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[0, :5] = IGNORE_INDEX  # prompt-masked positions
    targets[:, -1] = IGNORE_INDEX
    got, ref = both(hidden, weight, targets, L.chunked_cross_entropy), both(hidden, weight, targets, plain)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.to(b.dtype), b, rtol=tol, atol=tol)


def test_all_targets_ignored_gives_zero_loss_and_gradients():
    hidden, weight = torch.randn(2, 5, 8), torch.randn(11, 8)
    targets = torch.full((2, 5), IGNORE_INDEX)
    loss, gh, gw = both(hidden, weight, targets, L.chunked_cross_entropy)
    assert loss.item() == 0.0 and not gh.any() and not gw.any()


def test_no_grad_gives_the_same_loss():
    hidden, weight = torch.randn(2, 9, 8), torch.randn(50, 8)
    targets = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        got = L.chunked_cross_entropy(hidden, weight, targets)
    torch.testing.assert_close(got, plain(hidden, weight, targets))


def test_large_logits_stay_finite():
    hidden, weight = torch.randn(4, 8) * 1e3, torch.randn(20, 8)
    targets = torch.randint(0, 20, (4,))
    loss, gh, gw = both(hidden, weight, targets, L.chunked_cross_entropy)
    ref = both(hidden, weight, targets, plain)
    assert torch.isfinite(loss) and torch.isfinite(gh).all() and torch.isfinite(gw).all()
    torch.testing.assert_close(loss, ref[0], rtol=1e-5, atol=1e-3)

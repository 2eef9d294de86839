"""MiniCLIP's training terms, checked on hand-made tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hirm.world.clip import token_identity_loss

EOS = 9


def test_token_identity_counts_only_the_prompt_tokens() -> None:
    """Start token, end token and padding are left out; the loss is the mean cross-entropy of the rest."""
    ids = torch.tensor([[8, 3, 4, EOS, EOS, EOS], [8, 5, EOS, EOS, EOS, EOS]])
    hidden = torch.randn(2, 6, 5)
    head = torch.nn.Linear(5, 10)
    expected = F.cross_entropy(
        head(torch.stack([hidden[0, 1], hidden[0, 2], hidden[1, 1]])), torch.tensor([3, 4, 5])
    )
    torch.testing.assert_close(token_identity_loss(head, hidden, ids, EOS), expected)


def test_token_identity_is_small_when_rows_name_their_tokens_and_large_when_mixed() -> None:
    ids = torch.tensor([[8, 3, 4, 5, EOS, EOS]])
    head = torch.nn.Linear(10, 10, bias=False)
    with torch.no_grad():
        head.weight.copy_(20 * torch.eye(10))
    own = F.one_hot(ids, 10).float()  # each row is its own token
    mixed = own.mean(dim=1, keepdim=True).expand_as(own)  # each row is the average of the prompt
    assert token_identity_loss(head, own, ids, EOS) < 0.01
    assert token_identity_loss(head, mixed, ids, EOS) > 1.0

"""Linear-chain CRF layer (Lafferty et al. 2001) for padded, batch-first torch tensors.

One module in the spirit of pytorch-crf, with what structure-level KD (Wang et al. 2020) needs
on the student side: log-partition, gold path score and NLL, differentiable posterior
marginals from a forward-backward (not autograd of autograd), the expected score under a
teacher's unary/edge marginals, and batched Viterbi decoding.

Convention (the project's): ``score(y) = start[y_1] + sum_t emissions[t, y_t] +
sum_{t>=2} transitions[y_{t-1}, y_t] + end[y_n]``; ``transitions[i, j]`` scores tag i -> tag j.
Batches are ``emissions (batch, seq_len, n_tags)`` with a bool ``mask (batch, seq_len)`` that is
left-aligned (each row is True then False) and has ``mask[:, 0]`` all True.

Constraints (``allowed``, ``start_allowed``, ``end_allowed``, bool buffers) give forbidden
transitions the score ``NEG = -1e30`` rather than ``-inf``: ``exp(NEG - x)`` is exactly 0 for any
realistic x, so forbidden paths get exactly zero probability in the partition function, the
marginals and decoding, while every intermediate stays finite: ``logsumexp`` over all-forbidden
entries (unreachable states, 1-token sentences) has finite gradients instead of NaN, and
``0 * NEG = 0`` where ``0 * -inf`` would be NaN. Computation runs in the promoted dtype of the
emissions and parameters, at least float32 (``NEG`` is finite there, not in float16). The
numpy kernels (``crf_kernels``) use true ``-inf``; ``numpy_params`` converts. A sentence with no
allowed path at all (impossible with BIOES constraints, where O is always allowed) has no
meaningful value here (log Z near a multiple of ``NEG``); the kernels report it as ``-inf``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

NEG = -1e30


class CRF(nn.Module):
    """Linear-chain CRF with learned transition, start and end scores and optional constraints.

    Args:
        n_tags: number of tags, >= 1.
        allowed: optional ``(n_tags, n_tags)`` bool; ``allowed[i, j]`` False forbids i -> j.
        start_allowed: optional ``(n_tags,)`` bool; False forbids a sentence starting with the tag.
        end_allowed: optional ``(n_tags,)`` bool; False forbids a sentence ending with the tag.

    Attributes:
        transitions: ``(n_tags, n_tags)`` parameter, ``[i, j]`` = score of tag i followed by j.
        start: ``(n_tags,)`` parameter, score of the first tag.
        end: ``(n_tags,)`` parameter, score of the last tag.
    """

    # buffers (register_buffer), declared so type checkers know they are tensors
    allowed: Tensor
    start_allowed: Tensor
    end_allowed: Tensor

    def __init__(
        self,
        n_tags: int,
        allowed: Tensor | None = None,
        start_allowed: Tensor | None = None,
        end_allowed: Tensor | None = None,
    ) -> None:
        super().__init__()
        if n_tags < 1:
            raise ValueError(f"n_tags must be >= 1, got {n_tags}")
        self.n_tags = n_tags
        self.transitions = nn.Parameter(torch.empty(n_tags, n_tags).uniform_(-0.1, 0.1))
        self.start = nn.Parameter(torch.empty(n_tags).uniform_(-0.1, 0.1))
        self.end = nn.Parameter(torch.empty(n_tags).uniform_(-0.1, 0.1))
        self.register_buffer("allowed", _mask_or_ones("allowed", allowed, (n_tags, n_tags)))
        self.register_buffer(
            "start_allowed", _mask_or_ones("start_allowed", start_allowed, (n_tags,))
        )
        self.register_buffer("end_allowed", _mask_or_ones("end_allowed", end_allowed, (n_tags,)))

    def extra_repr(self) -> str:
        return f"n_tags={self.n_tags}, constrained={not bool(self.allowed.all())}"

    def effective_params(self, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(transitions, start, end)``, forbidden entries set to ``NEG``, cast to ``dtype``."""
        dtype = dtype or self.transitions.dtype
        return (
            self.transitions.to(dtype).masked_fill(~self.allowed, NEG),
            self.start.to(dtype).masked_fill(~self.start_allowed, NEG),
            self.end.to(dtype).masked_fill(~self.end_allowed, NEG),
        )

    def numpy_params(self) -> dict[str, np.ndarray]:
        """Parameters for ``crf_kernels`` (teacher export): float64, forbidden entries ``-inf``.

        Returns:
            ``{"transitions": (n_tags, n_tags), "start": (n_tags,), "end": (n_tags,)}``.
        """
        with torch.no_grad():
            return {
                "transitions": _neg_inf(self.transitions, self.allowed),
                "start": _neg_inf(self.start, self.start_allowed),
                "end": _neg_inf(self.end, self.end_allowed),
            }

    def log_partition(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """log Z(x) of every sentence (forward algorithm).

        Args:
            emissions: ``(batch, seq_len, n_tags)``.
            mask: ``(batch, seq_len)`` bool, left-aligned, ``mask[:, 0]`` all True.

        Returns:
            ``(batch,)``.
        """
        dtype = self._check(emissions, mask)
        _, log_z = self._forward(
            emissions.to(dtype), mask, *self.effective_params(dtype), keep=False
        )
        return log_z

    def score(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """Score of the given tag sequences; padded entries of ``tags`` are ignored.

        Args:
            emissions: ``(batch, seq_len, n_tags)``.
            tags: ``(batch, seq_len)`` long, in ``[0, n_tags)`` where ``mask`` is True.
            mask: ``(batch, seq_len)`` bool.

        Returns:
            ``(batch,)``.
        """
        dtype = self._check(emissions, mask)
        if tags.shape != mask.shape or tags.dtype != torch.long:
            raise ValueError(
                f"tags must be a long tensor (batch, seq_len)={tuple(mask.shape)}, "
                f"got {tags.dtype} {tuple(tags.shape)}"
            )
        real = tags[mask]
        if real.numel() and (int(real.min()) < 0 or int(real.max()) >= self.n_tags):
            raise ValueError(f"tags must be in [0, {self.n_tags}) where mask is True")
        trans, start, end = self.effective_params(dtype)
        em = emissions.to(dtype)
        tags = tags.masked_fill(~mask, 0)
        unary = em.gather(2, tags.unsqueeze(2)).squeeze(2)
        total = torch.where(mask, unary, 0.0).sum(1) + start[tags[:, 0]]
        if tags.shape[1] > 1:
            pair = trans[tags[:, :-1], tags[:, 1:]]
            total = total + torch.where(mask[:, 1:], pair, 0.0).sum(1)
        last = tags.gather(1, (mask.sum(1, keepdim=True) - 1)).squeeze(1)
        return total + end[last]

    def nll(
        self,
        emissions: Tensor,
        tags: Tensor,
        mask: Tensor,
        reduction: Literal["none", "sum", "mean"] = "mean",
    ) -> Tensor:
        """Negative log-likelihood ``log Z - score(tags)`` (log Z computed once per sentence).

        Args:
            emissions: ``(batch, seq_len, n_tags)``.
            tags: ``(batch, seq_len)`` long gold tags.
            mask: ``(batch, seq_len)`` bool.
            reduction: ``"none"`` -> ``(batch,)``; ``"sum"``; ``"mean"`` over sentences (the
                paper's ``1/B`` normalisation, not per token).

        Returns:
            ``(batch,)`` or a scalar.
        """
        if reduction not in ("none", "sum", "mean"):
            raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")
        losses = self.log_partition(emissions, mask) - self.score(emissions, tags, mask)
        if reduction == "none":
            return losses
        return losses.sum() if reduction == "sum" else losses.mean()

    def log_marginals(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """Posterior log marginals log q(y_t = j | x) by forward-backward; differentiable.

        Args:
            emissions: ``(batch, seq_len, n_tags)``.
            mask: ``(batch, seq_len)`` bool.

        Returns:
            ``(batch, seq_len, n_tags)``; 0 at padded positions; about ``NEG`` (probability
            exactly 0 after ``exp``) for forbidden or unreachable tags.
        """
        dtype = self._check(emissions, mask)
        em = emissions.to(dtype)
        trans, start, end = self.effective_params(dtype)
        log_alpha, log_z = self._forward(em, mask, trans, start, end, keep=True)
        assert log_alpha is not None  # keep=True
        log_beta = self._backward(em, mask, trans, end)
        out = log_alpha + log_beta - log_z[:, None, None]
        return out.masked_fill(~mask.unsqueeze(2), 0.0)

    def expected_score(
        self, emissions: Tensor, unary: Tensor, edge_sums: Tensor, mask: Tensor
    ) -> Tensor:
        """Expected path score ``E_q[score(y)]`` under a teacher distribution q.

        With the student's log Z, ``log_partition - expected_score`` is the exact sequence-level
        cross-entropy ``-sum_y q(y) log p(y | x)`` of structural KD (arXiv 2010.05010): the score
        is linear in the tag indicators and the transition counts, so q enters only through the
        node marginals and the edge marginals summed over positions (the start and end terms
        are the node marginals of the first and last tokens). Forbidden entries contribute 0
        (the teacher shares the constraints and gives them no mass).

        Args:
            emissions: ``(batch, seq_len, n_tags)``.
            unary: ``(batch, seq_len, n_tags)`` probabilities q(y_t = j).
            edge_sums: ``(batch, n_tags, n_tags)``,
                ``edge_sums[b, i, j] = sum_t q(y_t = i, y_{t+1} = j)`` over sentence b's edges.
            mask: ``(batch, seq_len)`` bool; padded entries of unary are ignored.

        Returns:
            ``(batch,)``.
        """
        dtype = self._check(emissions, mask)
        batch, _, n_tags = emissions.shape
        if unary.shape != emissions.shape:
            raise ValueError(
                f"unary must have shape {tuple(emissions.shape)}, got {tuple(unary.shape)}"
            )
        want = (batch, n_tags, n_tags)
        if tuple(edge_sums.shape) != want:
            raise ValueError(
                f"edge_sums must have shape (batch, n_tags, n_tags)={want}, "
                f"got {tuple(edge_sums.shape)}"
            )
        trans = self.transitions.to(dtype).masked_fill(~self.allowed, 0.0)
        start = self.start.to(dtype).masked_fill(~self.start_allowed, 0.0)
        end = self.end.to(dtype).masked_fill(~self.end_allowed, 0.0)
        unary = unary.to(dtype)
        m3 = mask.unsqueeze(2)
        total = torch.where(m3, unary * emissions.to(dtype), 0.0).sum((1, 2))
        total = total + (unary[:, 0] * start).sum(1)
        lens = mask.sum(1)
        last = unary.gather(1, (lens - 1).view(-1, 1, 1).expand(-1, 1, n_tags)).squeeze(1)
        total = total + (last * end).sum(1)
        return total + (edge_sums.to(dtype) * trans).sum((1, 2))

    @torch.no_grad()
    def decode(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """Viterbi decoding, batched (one loop over positions, none over sentences).

        Ties: among best-scoring paths, the one whose reversed tag sequence is smallest (the
        same rule as ``crf_kernels.viterbi``).

        Args:
            emissions: ``(batch, seq_len, n_tags)``.
            mask: ``(batch, seq_len)`` bool.

        Returns:
            ``(batch, seq_len)`` long tags, -1 at padded positions.
        """
        dtype = self._check(emissions, mask)
        trans, start, end = self.effective_params(dtype)
        em = emissions.to(dtype)
        batch, seq_len, _ = em.shape
        score = start + em[:, 0]
        pointers = []
        for t in range(1, seq_len):
            # shape: (batch, prev, next); max over prev keeps the first (smallest) index on ties
            best, arg = (score.unsqueeze(2) + trans).max(1)
            pointers.append(arg)
            score = torch.where(mask[:, t, None], best + em[:, t], score)
        cur = (score + end).argmax(1)
        tags = torch.full((batch, seq_len), -1, dtype=torch.long, device=em.device)
        tags[:, seq_len - 1] = torch.where(mask[:, seq_len - 1], cur, -1)
        for t in range(seq_len - 2, -1, -1):
            prev = pointers[t].gather(1, cur.unsqueeze(1)).squeeze(1)
            cur = torch.where(mask[:, t + 1], prev, cur)
            tags[:, t] = torch.where(mask[:, t], cur, -1)
        return tags

    @staticmethod
    def _forward(
        em: Tensor, mask: Tensor, trans: Tensor, start: Tensor, end: Tensor, keep: bool
    ) -> tuple[Tensor | None, Tensor]:
        """Forward algorithm: ``(log_alpha (batch, seq_len, n_tags) if keep, log_z (batch,))``.

        ``log_alpha[:, t]`` includes the emission at t and is frozen after each sentence's end.
        """
        alpha = start + em[:, 0]
        alphas = [alpha]
        for t in range(1, em.shape[1]):
            # shape: (batch, prev, next) -> (batch, next)
            nxt = torch.logsumexp(alpha.unsqueeze(2) + trans, dim=1) + em[:, t]
            alpha = torch.where(mask[:, t, None], nxt, alpha)
            if keep:
                alphas.append(alpha)
        log_z = torch.logsumexp(alpha + end, dim=1)
        return (torch.stack(alphas, 1) if keep else None), log_z

    @staticmethod
    def _backward(em: Tensor, mask: Tensor, trans: Tensor, end: Tensor) -> Tensor:
        """Backward algorithm: ``log_beta (batch, seq_len, n_tags)``, excluding the emission at t.

        ``log_beta[:, len-1] = end``; positions after the end hold ``end`` too (masked later).
        """
        batch, seq_len, n_tags = em.shape
        last = end.expand(batch, n_tags)
        betas = [last]
        beta = last
        for t in range(seq_len - 2, -1, -1):
            # shape: (batch, 1, next) + (prev, next) -> logsumexp over next -> (batch, prev)
            nxt = torch.logsumexp(trans + (em[:, t + 1] + beta).unsqueeze(1), dim=2)
            beta = torch.where(mask[:, t + 1, None], nxt, last)
            betas.append(beta)
        return torch.stack(betas[::-1], 1)

    def _check(self, emissions: Tensor, mask: Tensor) -> torch.dtype:
        """Validate shapes and mask; return the computation dtype."""
        if emissions.dim() != 3 or emissions.shape[2] != self.n_tags or emissions.shape[1] < 1:
            raise ValueError(
                f"emissions must have shape (batch, seq_len, n_tags={self.n_tags}), "
                f"got {tuple(emissions.shape)}"
            )
        if mask.dtype != torch.bool or mask.shape != emissions.shape[:2]:
            raise ValueError(
                f"mask must be a bool tensor (batch, seq_len)={tuple(emissions.shape[:2])}, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        if not bool(mask[:, 0].all()):
            raise ValueError("mask[:, 0] must be all True (every sentence has >= 1 token)")
        if mask.shape[1] > 1 and bool((mask[:, 1:] & ~mask[:, :-1]).any()):
            raise ValueError("mask must be left-aligned (True then False in every row)")
        if not emissions.is_floating_point():
            raise ValueError(f"emissions must be a float tensor, got {emissions.dtype}")
        return torch.promote_types(
            torch.promote_types(emissions.dtype, self.transitions.dtype), torch.float32
        )


def _mask_or_ones(name: str, value: Tensor | None, shape: tuple[int, ...]) -> Tensor:
    if value is None:
        return torch.ones(shape, dtype=torch.bool)
    value = torch.as_tensor(value)
    if value.dtype != torch.bool or tuple(value.shape) != shape:
        raise ValueError(
            f"{name} must be a bool tensor of shape {shape}, got {value.dtype} {tuple(value.shape)}"
        )
    return value.clone()


def _neg_inf(param: Tensor, allowed: Tensor) -> np.ndarray:
    arr = param.detach().to("cpu", torch.float64).numpy().copy()
    arr[~allowed.cpu().numpy()] = -np.inf
    return arr

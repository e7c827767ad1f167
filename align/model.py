"""The aligner: two independent MLPs (code side, audio side) trained with InfoNCE.

Each MLP is ``(layers - 1) x [Linear -> BatchNorm1d -> GELU]`` then a final ``Linear``
(the study's layout; defaults hidden 256, out 128, 5 layers). Outputs are L2-normalised
so the InfoNCE logits are cosine similarities divided by the temperature tau.

Two implementations of the same network live here:
- ``Aligner``: plain ``nn.Sequential`` modules, what a checkpoint holds and what
  ``align rank`` and ``align report`` run.
- ``StackedMLP``: S independent copies evaluated with batched matmuls, used by the
  trainer to train several seeds at once (a 2-core CPU spends most of a small MLP's
  step in per-op overhead; stacking shares it). Member s exports to the plain layout
  with ``member_state_dict``; a test checks both give the same outputs.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from align.config import LOSS_DIRECTIONS, MIN_TAU, check_architecture

BN_EPS = 1e-5  # torch.nn.BatchNorm1d defaults
BN_MOMENTUM = 0.1


def mlp_dims(in_dim: int, hidden: int, out: int, layers: int) -> list[int]:
    """Feature sizes through the MLP: [in, hidden, ..., hidden, out] (layers + 1 entries)."""
    check_architecture(hidden, out, layers)
    return [in_dim] + [hidden] * (layers - 1) + [out]


def build_mlp(in_dim: int, hidden: int = 256, out: int = 128, layers: int = 5) -> nn.Sequential:
    """``(layers - 1) x [Linear, BatchNorm1d, GELU]`` then ``Linear``; layers >= 1."""
    dims = mlp_dims(in_dim, hidden, out, layers)
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        mods.append(nn.Linear(a, b))
        if i < layers - 1:
            mods += [nn.BatchNorm1d(b, eps=BN_EPS, momentum=BN_MOMENTUM), nn.GELU()]
    return nn.Sequential(*mods)


def info_nce(
    z_code: torch.Tensor, z_audio: torch.Tensor, tau: torch.Tensor | float, direction: str
) -> torch.Tensor:
    """InfoNCE on cosine similarity; pairs are the rows with equal index.

    Args:
        z_code, z_audio: L2-normalised embeddings, shape (..., B, D); leading dims are
            independent problems (stacked models).
        tau: temperature, a float or a tensor broadcastable to (..., 1, 1).
        direction: "symmetric" (mean of both directions, the CLIP form), "code_to_audio"
            (each code row picks its audio among the batch; the one-direction loss of the
            authors' code) or "audio_to_code".
    Returns:
        Loss per leading index, shape (...) (a scalar for 2-D inputs).
    """
    if direction not in LOSS_DIRECTIONS:
        raise ValueError(f"loss direction must be one of {LOSS_DIRECTIONS}, got {direction!r}")
    logits = z_code @ z_audio.transpose(-1, -2) / tau
    losses = []
    if direction in ("symmetric", "code_to_audio"):
        losses.append(-torch.diagonal(F.log_softmax(logits, dim=-1), dim1=-2, dim2=-1))
    if direction in ("symmetric", "audio_to_code"):
        losses.append(-torch.diagonal(F.log_softmax(logits, dim=-2), dim1=-2, dim2=-1))
    return torch.stack(losses).mean(dim=0).mean(dim=-1)


class Aligner(nn.Module):
    """Code MLP and audio MLP into one shared, L2-normalised space, plus the temperature."""

    def __init__(
        self,
        code_dim: int,
        audio_dim: int,
        hidden: int = 256,
        out: int = 128,
        layers: int = 5,
        tau: float = 0.1,
        learn_tau: bool = False,
    ) -> None:
        super().__init__()
        self.code_mlp = build_mlp(code_dim, hidden, out, layers)
        self.audio_mlp = build_mlp(audio_dim, hidden, out, layers)
        log_tau = torch.tensor(math.log(tau), dtype=torch.float32)
        if learn_tau:
            self.log_tau = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_tau", log_tau)

    @property
    def tau(self) -> torch.Tensor:
        return self.log_tau.exp().clamp(min=MIN_TAU)

    def embed_code(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.code_mlp(x), dim=-1)

    def embed_audio(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.audio_mlp(x), dim=-1)

    def forward(
        self, code: torch.Tensor, audio: torch.Tensor, direction: str = "symmetric"
    ) -> torch.Tensor:
        return info_nce(self.embed_code(code), self.embed_audio(audio), self.tau, direction)


class StackedMLP(nn.Module):
    """S independent MLPs of the ``build_mlp`` layout, run on inputs of shape (S, B, in).

    Inside, activations are feature-major, (S, features, B): a layer is one ``baddbmm``
    with weights stored as nn.Linear stores them, (S, out, in), and BatchNorm over the
    batch for every (member, feature) is one native ``F.batch_norm`` call on a (1, S *
    features, B) view, with no copies. Initialisation follows nn.Linear (uniform
    +-1/sqrt(in) for weight and bias) and nn.BatchNorm1d (gamma 1, beta 0), drawn member
    by member from each member's own generator, so a member does not depend on which
    other members share the stack.
    """

    def __init__(self, n_members: int, in_dim: int, hidden: int, out: int, layers: int) -> None:
        super().__init__()
        self.dims = mlp_dims(in_dim, hidden, out, layers)
        self.n_layers = layers
        S = n_members
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.gammas = nn.ParameterList()
        self.betas = nn.ParameterList()
        for i, (a, b) in enumerate(zip(self.dims[:-1], self.dims[1:])):
            self.weights.append(nn.Parameter(torch.empty(S, b, a)))
            self.biases.append(nn.Parameter(torch.empty(S, b, 1)))
            if i < layers - 1:
                self.gammas.append(nn.Parameter(torch.ones(S, b)))
                self.betas.append(nn.Parameter(torch.zeros(S, b)))
                self.register_buffer(f"running_mean_{i}", torch.zeros(S, b))
                self.register_buffer(f"running_var_{i}", torch.ones(S, b))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    @property
    def n_members(self) -> int:
        return self.weights[0].shape[0]

    @torch.no_grad()
    def init_member(self, s: int, generator: torch.Generator) -> None:
        """Draw member s's weights the way nn.Linear does, from ``generator``."""
        for w, b in zip(self.weights, self.biases):
            bound = 1.0 / math.sqrt(w.shape[2])
            w[s].uniform_(-bound, bound, generator=generator)
            b[s].uniform_(-bound, bound, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(S, B, in) -> (S, B, out)."""
        if self.training and self.n_layers > 1:
            self.num_batches_tracked += 1
        S, B = x.shape[0], x.shape[1]
        h = x.transpose(1, 2)  # (S, in, B), a view; bmm reads it as transposed
        for i in range(self.n_layers):
            h = torch.baddbmm(self.biases[i], self.weights[i], h)
            if i < self.n_layers - 1:
                F_ = h.shape[1]
                h = F.batch_norm(
                    h.view(1, S * F_, B),
                    getattr(self, f"running_mean_{i}").view(-1),
                    getattr(self, f"running_var_{i}").view(-1),
                    self.gammas[i].view(-1),
                    self.betas[i].view(-1),
                    self.training,
                    BN_MOMENTUM,
                    BN_EPS,
                ).view(S, F_, B)
                h = F.gelu(h)
        return h.transpose(1, 2)

    @torch.no_grad()
    def keep_members(self, keep: torch.Tensor) -> None:
        """Drop all members not in ``keep`` (a LongTensor of member indices), in place."""
        for plist in (self.weights, self.biases, self.gammas, self.betas):
            for j, p in enumerate(plist):
                plist[j] = nn.Parameter(p.detach()[keep].clone())
        for name, buf in list(self.named_buffers()):
            if name.startswith("running_"):
                setattr(self, name, buf[keep].clone())

    @torch.no_grad()
    def member_state_dict(self, s: int) -> dict[str, torch.Tensor]:
        """State dict of member s in the ``build_mlp`` (nn.Sequential) layout."""
        state: dict[str, torch.Tensor] = {}
        idx = 0
        for i in range(self.n_layers):
            state[f"{idx}.weight"] = self.weights[i][s].clone()
            state[f"{idx}.bias"] = self.biases[i][s, :, 0].clone()
            if i < self.n_layers - 1:
                bn = idx + 1
                state[f"{bn}.weight"] = self.gammas[i][s].clone()
                state[f"{bn}.bias"] = self.betas[i][s].clone()
                state[f"{bn}.running_mean"] = getattr(self, f"running_mean_{i}")[s].clone()
                state[f"{bn}.running_var"] = getattr(self, f"running_var_{i}")[s].clone()
                state[f"{bn}.num_batches_tracked"] = self.num_batches_tracked.clone()
                idx += 3
            else:
                idx += 1
        return state

"""Training the aligner: InfoNCE, AdamW, cosine schedule with warm-up, early stopping.

``fit_seeds`` trains one configuration for several seeds at once (a ``StackedMLP`` per
side). Each seed has its own generator for initialisation and shuffling, its own
BatchNorm statistics, loss and AdamW state (AdamW is element-wise), so a seed's result
does not depend on which seeds share the stack. A seed whose validation loss has not
improved for ``patience`` epochs is stopped and dropped from the stack; its best-epoch
weights are kept. ``train_aligner`` is the one-seed case that writes a run folder.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from align import __version__
from align.config import DEFAULT_DEVICE, TrainConfig
from align.data import PairedSplits, read_embeddings, select_splits
from align.model import MIN_TAU, Aligner, StackedMLP, info_nce
from sonicpi_gen.folders import replace_dir

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


@dataclass
class SeedResult:
    """The outcome of one seed: best weights, when, and the per-epoch history."""

    seed: int
    state_dict: dict  # Aligner state dict at the best validation epoch
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def lr_at(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Learning rate at optimiser step ``step`` (0-based): linear warm-up, then cosine."""
    warm = int(round(cfg.warmup * total_steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - warm) / max(1, total_steps - warm)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def resolve_device(device: str | None) -> torch.device:
    """"auto" (or None) -> cuda when available, else cpu; otherwise as given."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but CUDA is not available; use --device cpu")
    return dev


class _Stack:
    """Both sides' StackedMLPs, the temperature and an AdamW over them."""

    def __init__(self, cfg: TrainConfig, seeds: list[int], code_dim: int, audio_dim: int, device) -> None:
        S = len(seeds)
        self.code = StackedMLP(S, code_dim, cfg.hidden, cfg.out, cfg.layers).to(device)
        self.audio = StackedMLP(S, audio_dim, cfg.hidden, cfg.out, cfg.layers).to(device)
        self.log_tau = torch.full((S, 1, 1), math.log(cfg.tau), device=device)
        self.gens = []
        for s, seed in enumerate(seeds):
            g = torch.Generator().manual_seed(int(seed))
            # init on CPU from the seed's generator, so CPU and GPU runs start equal
            cpu_code = StackedMLP(1, code_dim, cfg.hidden, cfg.out, cfg.layers)
            cpu_audio = StackedMLP(1, audio_dim, cfg.hidden, cfg.out, cfg.layers)
            cpu_code.init_member(0, g)
            cpu_audio.init_member(0, g)
            with torch.no_grad():
                for dst, src in ((self.code, cpu_code), (self.audio, cpu_audio)):
                    for pd_, ps in zip(dst.parameters(), src.parameters()):
                        pd_[s].copy_(ps[0])
            self.gens.append(g)
        self.log_tau.requires_grad_(cfg.learn_tau)
        self.cfg = cfg
        self.opt = self._make_optimizer(device)

    def _params(self) -> list[torch.Tensor]:
        ps = list(self.code.parameters()) + list(self.audio.parameters())
        return ps + ([self.log_tau] if self.cfg.learn_tau else [])

    def _make_optimizer(self, device) -> torch.optim.Optimizer:
        # fused: one pass over each tensor per step; on a CPU the foreach form spent
        # ~7x longer and, at batch 64, more time than the forward and backward passes
        kwargs = dict(lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        try:
            return torch.optim.AdamW(self._params(), fused=True, **kwargs)
        except (RuntimeError, ValueError):  # builds or devices without the fused kernel
            return torch.optim.AdamW(self._params(), foreach=True, **kwargs)

    def tau(self) -> torch.Tensor:
        return self.log_tau.exp().clamp(min=MIN_TAU)

    def loss(self, xc: torch.Tensor, xa: torch.Tensor) -> torch.Tensor:
        zc = torch.nn.functional.normalize(self.code(xc), dim=-1)
        za = torch.nn.functional.normalize(self.audio(xa), dim=-1)
        return info_nce(zc, za, self.tau(), self.cfg.loss)  # (S,)

    def train(self, mode: bool) -> None:
        self.code.train(mode)
        self.audio.train(mode)

    def keep(self, keep: list[int]) -> None:
        """Drop stopped members; carry the optimiser state of the others over."""
        old_params = self._params()
        old_state = [self.opt.state.get(p, {}) for p in old_params]
        idx = torch.tensor(keep, device=self.log_tau.device)
        self.code.keep_members(idx)
        self.audio.keep_members(idx)
        self.log_tau = self.log_tau.detach()[idx].clone().requires_grad_(self.cfg.learn_tau)
        self.gens = [self.gens[k] for k in keep]
        lr = self.opt.param_groups[0]["lr"]
        self.opt = self._make_optimizer(self.log_tau.device)
        self.opt.param_groups[0]["lr"] = lr
        for p, st in zip(self._params(), old_state):
            if st:
                self.opt.state[p] = {
                    k: (v[idx].clone() if torch.is_tensor(v) and v.dim() > 0 else v.clone() if torch.is_tensor(v) else v)
                    for k, v in st.items()
                }

    def member_state(self, s: int) -> dict:
        state = {f"code_mlp.{k}": v.cpu() for k, v in self.code.member_state_dict(s).items()}
        state.update({f"audio_mlp.{k}": v.cpu() for k, v in self.audio.member_state_dict(s).items()})
        state["log_tau"] = self.log_tau.detach()[s, 0, 0].cpu().clone()
        return state


@torch.no_grad()
def _validation_loss(stack: _Stack, xc: torch.Tensor, xa: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Mean InfoNCE over the validation set in fixed chunks of batch_size, per member."""
    stack.train(False)
    S = stack.code.n_members
    total = torch.zeros(S, device=xc.device)
    count = 0
    n = xc.shape[0]
    for start in range(0, n, batch_size):
        end = min(n, start + batch_size)
        if end - start < 2:
            break
        bc = xc[start:end].unsqueeze(0).expand(S, -1, -1)
        ba = xa[start:end].unsqueeze(0).expand(S, -1, -1)
        total += stack.loss(bc, ba) * (end - start)
        count += end - start
    stack.train(True)
    return total / max(count, 1)


def fit_seeds(
    cfg: TrainConfig,
    data: PairedSplits,
    seeds: list[int],
    device: str | None = "cpu",
    on_epoch=None,
) -> list[SeedResult]:
    """Train ``cfg`` once per seed (all seeds stacked) and return each seed's best weights.

    Args:
        cfg: settings (cfg.seed is ignored; ``seeds`` decides).
        data: train/validation arrays; test is not touched here.
        seeds: one run per seed.
        device: "cpu", "cuda", "cuda:1" or "auto".
        on_epoch: optional callback(seed, record) after each epoch of each live seed.
    Returns:
        SeedResult per seed, in the order of ``seeds``.
    """
    cfg.validate()
    dev = resolve_device(device)
    xc_tr = torch.as_tensor(data.train[0], dtype=torch.float32, device=dev)
    xa_tr = torch.as_tensor(data.train[1], dtype=torch.float32, device=dev)
    xc_va = torch.as_tensor(data.validation[0], dtype=torch.float32, device=dev)
    xa_va = torch.as_tensor(data.validation[1], dtype=torch.float32, device=dev)
    n = xc_tr.shape[0]
    B = cfg.batch_size
    if n < B:
        raise ValueError(f"batch_size {B} is larger than the training split ({n} pairs); lower --batch-size")
    steps_per_epoch = n // B  # drop the last partial batch: BatchNorm wants full batches
    total_steps = steps_per_epoch * cfg.max_epochs

    stack = _Stack(cfg, list(seeds), xc_tr.shape[1], xa_tr.shape[1], dev)
    live = list(range(len(seeds)))  # positions in `seeds` of the members still training
    best = {s: (math.inf, 0, None) for s in live}
    waited = {s: 0 for s in live}
    history: dict[int, list[dict]] = {s: [] for s in live}
    epochs_run = {s: 0 for s in live}
    started = time.perf_counter()
    step = 0
    for epoch in range(1, cfg.max_epochs + 1):
        t0 = time.perf_counter()
        S = len(live)
        perms = torch.stack([torch.randperm(n, generator=g) for g in stack.gens]).to(dev)
        run_loss = torch.zeros(S, device=dev)
        stack.train(True)
        for k in range(steps_per_epoch):
            lr = lr_at(step, total_steps, cfg)
            for group in stack.opt.param_groups:
                group["lr"] = lr
            idx = perms[:, k * B : (k + 1) * B].reshape(-1)
            # index_select on a flat index: several times faster than X[idx] with a 2-D index
            xc = xc_tr.index_select(0, idx).view(S, B, -1)
            xa = xa_tr.index_select(0, idx).view(S, B, -1)
            losses = stack.loss(xc, xa)
            stack.opt.zero_grad(set_to_none=True)
            losses.sum().backward()  # members are independent: the sum's gradient is each one's own
            stack.opt.step()
            run_loss += losses.detach()
            step += 1
        val = _validation_loss(stack, xc_va, xa_va, B).cpu()
        train_loss = (run_loss / steps_per_epoch).cpu()
        tau = stack.tau().detach().flatten().cpu()
        seconds = time.perf_counter() - t0
        keep = []
        for pos, s in enumerate(live):
            record = {
                "epoch": epoch,
                "train_loss": float(train_loss[pos]),
                "val_loss": float(val[pos]),
                "lr": lr,
                "tau": float(tau[pos]),
                "seconds": round(seconds, 4),
                "pairs_per_s": round(n * S / seconds, 1),
            }
            history[s].append(record)
            epochs_run[s] = epoch
            if on_epoch is not None:
                on_epoch(seeds[s], record)
            if record["val_loss"] < best[s][0]:
                best[s] = (record["val_loss"], epoch, stack.member_state(pos))
                waited[s] = 0
            else:
                waited[s] += 1
            if waited[s] < cfg.patience:
                keep.append(pos)
        logger.info(
            "epoch %d: %d seed(s), train %.4f val %.4f lr %.2e, %.1f s, %.0f pairs/s",
            epoch, S, float(train_loss.mean()), float(val.mean()), lr, seconds, n * S / seconds,
        )
        if len(keep) < S:
            live = [live[pos] for pos in keep]
            if not live:
                break
            stack.keep(keep)
    elapsed = time.perf_counter() - started
    return [
        SeedResult(
            seed=int(seeds[s]),
            state_dict=best[s][2],
            best_epoch=best[s][1],
            best_val_loss=best[s][0],
            epochs_run=epochs_run[s],
            history=history[s],
            seconds=elapsed,
        )
        for s in range(len(seeds))
    ]


def build_aligner(cfg: TrainConfig, code_dim: int, audio_dim: int, state_dict: dict | None = None) -> Aligner:
    """An ``Aligner`` of ``cfg``'s shape, loaded with ``state_dict`` when given (eval mode)."""
    model = Aligner(code_dim, audio_dim, cfg.hidden, cfg.out, cfg.layers, cfg.tau, cfg.learn_tau)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model.eval()


@torch.no_grad()
def _map_rows(fn, x: np.ndarray, out_dim: int, batch: int) -> np.ndarray:
    parts = [fn(torch.as_tensor(x[i : i + batch], dtype=torch.float32)) for i in range(0, len(x), batch)]
    return torch.cat(parts).numpy() if parts else np.zeros((0, out_dim), np.float32)


def embed_code(model: Aligner, code: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Raw code embeddings -> aligned space (eval mode, L2-normalised), numpy float32."""
    model.eval()
    return _map_rows(model.embed_code, code, model.code_mlp[-1].out_features, batch)


def embed_audio(model: Aligner, audio: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Raw audio embeddings -> aligned space (eval mode, L2-normalised), numpy float32."""
    model.eval()
    return _map_rows(model.embed_audio, audio, model.audio_mlp[-1].out_features, batch)


def embed_pairs(model: Aligner, code: np.ndarray, audio: np.ndarray, batch: int = 4096):
    """Both sides into the aligned space: (code (n, out), audio (n, out))."""
    return embed_code(model, code, batch), embed_audio(model, audio, batch)


def save_checkpoint(path: Path, cfg: TrainConfig, result: SeedResult, code_dim: int, audio_dim: int, source: dict) -> None:
    """Write a checkpoint readable with ``torch.load(weights_only=True)``."""
    torch.save(
        {
            "format": "sonicpi-gen-aligner/1",
            "version": __version__,
            "config": cfg.to_dict(),
            "code_dim": code_dim,
            "audio_dim": audio_dim,
            "state_dict": result.state_dict,
            "best_epoch": result.best_epoch,
            "best_val_loss": result.best_val_loss,
            "embeddings": _jsonable(source),
        },
        path,
    )


def load_checkpoint(path: str | Path) -> tuple[Aligner, dict]:
    """Load ``checkpoint.pt`` (or a run folder holding one); returns (model, checkpoint dict)."""
    path = Path(path)
    file = path / CHECKPOINT_FILE if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"no checkpoint at {file}; pass a run folder written by `align train` or its checkpoint.pt")
    ckpt = torch.load(file, map_location="cpu", weights_only=True)
    if ckpt.get("format", "").split("/")[0] != "sonicpi-gen-aligner":
        raise ValueError(f"{file} is not an aligner checkpoint (format {ckpt.get('format')!r})")
    cfg = TrainConfig(**ckpt["config"])
    return build_aligner(cfg, ckpt["code_dim"], ckpt["audio_dim"], ckpt["state_dict"]), ckpt


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def _aligned_chance(zc: np.ndarray, za: np.ndarray) -> dict:
    """Shuffled-pairs null of every aligned test metric (align.chance; the report adds
    intervals and the template null)."""
    from align.chance import PairScorer, permutation_null
    from align.evaluate import CCA_PCA_DIMS, DEFAULT_K

    res = permutation_null(PairScorer(zc, za, DEFAULT_K, CCA_PCA_DIMS))
    return {k: {kk: v[kk] for kk in ("null_mean", "null_p95", "p_value")} for k, v in res.items()}


def _run_warnings(result: SeedResult, data: PairedSplits, cfg: TrainConfig, zc: np.ndarray, za: np.ndarray) -> list[str]:
    """align.checks' warnings for one finished run."""
    from align import checks

    from align.evaluate import CCA_PCA_DIMS, DEFAULT_K

    out = [checks.check_learned(result.best_val_loss, data.sizes()["validation"], cfg.batch_size)]
    out += checks.check_rows(len(zc), min(CCA_PCA_DIMS, zc.shape[1], len(zc) - 1), DEFAULT_K)
    out += [checks.check_collapse(X, name) for name, X in (("aligned code", zc), ("aligned audio", za))]
    return [w for w in out if w]


def train_aligner(
    embeddings: str | Path,
    out: str | Path,
    cfg: TrainConfig | None = None,
    device: str | None = DEFAULT_DEVICE,
    threads: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Train one aligner on an embeddings folder and write a run folder.

    Args:
        embeddings: ``embeddings/<code>__<audio>/`` (or its parquet file).
        out: run folder to create (``runs/<name>``): config.json (settings, data source,
            split sizes, tool version), checkpoint.pt (best-validation weights),
            metrics.jsonl (one line per epoch), summary.json (best epoch, test metrics
            raw vs aligned). Written under a temporary name, renamed when complete.
        cfg: settings (TrainConfig defaults when None).
        device: "cpu" (default), "cuda" or "auto".
        threads: torch CPU threads (torch's default when None).
        overwrite: replace an existing run folder with different settings.
    Returns:
        The summary dict (also in summary.json). A finished run with the same settings is
        not redone: its summary is returned.
    """
    from align.evaluate import evaluate_pairs  # local: keeps metrics import light

    cfg = (cfg or TrainConfig()).validate()
    out = Path(out)
    if threads:
        torch.set_num_threads(threads)
    table = read_embeddings(embeddings)
    config_doc = {
        "settings": cfg.to_dict(),
        "embeddings": table.source["path"],
        "code_model": table.code_model,
        "audio_model": table.audio_model,
        "embeddings_provenance": table.source.get("provenance") or {},
        "device": str(resolve_device(device)),
        "tool": "align",
        "version": __version__,
        "torch_version": torch.__version__,
    }
    if (out / CHECKPOINT_FILE).exists() and (out / SUMMARY_FILE).exists():
        old = json.loads((out / CONFIG_FILE).read_text())
        if old.get("settings") == cfg.to_dict() and old.get("embeddings") == config_doc["embeddings"]:
            logger.info("%s already holds this run; not redone", out)
            return json.loads((out / SUMMARY_FILE).read_text())
        if not overwrite:
            raise ValueError(f"{out} holds a run with other settings; choose another --out or pass --overwrite")
    data = select_splits(table, cfg.config)
    config_doc["split_sizes"] = data.sizes()
    logger.info("training on %s pairs (%s)", data.sizes(), cfg.to_dict())

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        with open(tmp / METRICS_FILE, "w") as log:
            def on_epoch(seed, record):
                log.write(json.dumps(record) + "\n")
                log.flush()

            (result,) = fit_seeds(cfg, data, [cfg.seed], device=device, on_epoch=on_epoch)
        save_checkpoint(tmp / CHECKPOINT_FILE, cfg, result, data.code_dim, data.audio_dim, table.source)
        model = build_aligner(cfg, data.code_dim, data.audio_dim, result.state_dict)
        zc, za = embed_pairs(model, *data.test)
        summary = {
            "best_epoch": result.best_epoch,
            "best_val_loss": result.best_val_loss,
            "epochs_run": result.epochs_run,
            "seconds": round(result.seconds, 2),
            "test_raw": evaluate_pairs(*data.test),
            "test_aligned": evaluate_pairs(zc, za),
            "test_aligned_chance": _aligned_chance(zc, za),
            "warnings": _run_warnings(result, data, cfg, zc, za),
        }
        for warning in summary["warnings"]:  # info: the command prints them once
            logger.info("warning: %s", warning)
        _write_json(tmp / CONFIG_FILE, config_doc)
        _write_json(tmp / SUMMARY_FILE, summary)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("saved %s (best epoch %d, val %.4f)", out, result.best_epoch, result.best_val_loss)
    return summary

"""params.yaml ``runtime``: the device (auto, validated in one line), the torch threads every
torch stage sets, the passive OpenMP wait policy of the CLI, and CPU results unchanged."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from import_closure import stage_code_deps

from structkd.errors import ConfigError
from structkd.pipeline.data import Split
from structkd.pipeline.labels import LabelSet
from structkd.pipeline.models import Tagger, TaggerConfig
from structkd.pipeline.params import (
    EmbedParams,
    ExportParams,
    RuntimeParams,
    StudentParams,
    TeacherParams,
    parse_params,
)
from structkd.pipeline.runtime import checked, resolve_device, setup
from structkd.pipeline.teacher import TeacherObjective
from structkd.pipeline.training import fit

TORCH_STAGES = ("embed", "train-teacher", "export-teachers", "train-student", "evaluate")


@pytest.fixture
def restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _with_runtime(**runtime: object) -> dict:
    spec = {"format": "conllu", "scheme": "none", "train": "a", "dev": "b", "test": "c"}
    return {"data": {"task": "upos", "languages": {"en": spec}}, "runtime": runtime}


def test_auto_is_cuda_when_available_else_cpu() -> None:
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == torch.device(want)
    assert parse_params(_with_runtime()).runtime == RuntimeParams(device="auto", threads=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_unavailable_device_is_one_line() -> None:
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError) as caught:
            parse_params(_with_runtime(device=name))
        assert str(caught.value) == (
            f"params.yaml: runtime.device: {name!r} is not available on this machine"
        )


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "", "cpu cuda"])
def test_invalid_device_string_is_one_line(name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_params(_with_runtime(device=name))
    assert str(caught.value) == (
        f"params.yaml: runtime.device: {name!r} is not a torch device "
        "(use auto, cpu, cuda, cuda:N, mps, ...)"
    )
    with pytest.raises(ConfigError, match=r"^--device: "):
        checked(name, 1)


def test_cpu_devices_load_without_question() -> None:
    for name in ("auto", "cpu", "cpu:0"):
        assert parse_params(_with_runtime(device=name)).runtime.device == name
    with pytest.raises(ConfigError, match=r"^--threads: 0 is not in \[1, inf\)$"):
        checked("cpu", 0)


@pytest.mark.parametrize("stage", TORCH_STAGES)
def test_every_torch_stage_runs_the_runtime_settings(stage: str) -> None:
    assert "pipeline/runtime.py" in stage_code_deps(stage)


def test_stage_sets_the_configured_threads(
    tiny_encoder_dir: Path, tmp_path: Path, restore_threads: None
) -> None:
    """``embed`` builds its encoder on the runtime device with the runtime threads."""
    from structkd.pipeline.embed import build_encoder
    from structkd.pipeline.layout import Layout

    raw = _with_runtime(device="cpu", threads=3)
    raw["embed"] = {"encoder": str(tiny_encoder_dir), "layer": -1, "dtype": "float32"}
    torch.set_num_threads(1)
    encoder = build_encoder(parse_params(raw), Layout(tmp_path))
    assert torch.get_num_threads() == 3
    assert encoder.config.device == "cpu"
    assert setup(RuntimeParams(threads=2)) == resolve_device("auto")
    assert torch.get_num_threads() == 2


def _wait_policy(env: dict[str, str]) -> str:
    code = (
        "import os, sys, structkd.cli; "
        "assert 'torch' not in sys.modules, 'torch loaded before the wait policy was set'; "
        "print(os.environ.get('OMP_WAIT_POLICY'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_cli_sets_a_passive_wait_policy_unless_the_user_did() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _wait_policy(env) == "PASSIVE"
    assert _wait_policy({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"


def _train(tmp_path: Path, device: str | None) -> dict[str, torch.Tensor]:
    """Two epochs of the training loop on a tiny teacher; ``device`` None leaves the default."""
    torch.set_num_threads(1)  # as setup() does: the thread count may change the last bits
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 9, size=24)
    split = Split(
        lang="xx",
        name="train",
        scheme="none",
        sent_ids=np.arange(len(lengths)),
        tokens=[[f"w{rng.integers(5)}" for _ in range(n)] for n in lengths],
        tags=[rng.integers(0, 3, size=n).astype(np.int64) for n in lengths],
        features=[rng.standard_normal((n, 6)).astype(np.float32) for n in lengths],
    )
    labels = LabelSet(("A", "B", "C"))
    cfg = TeacherParams(hidden=4, max_tokens=40, max_epochs=2, seed=5)
    torch.manual_seed(cfg.seed)
    model = Tagger(
        TaggerConfig(
            feature_dim=6, n_tags=3, hidden=4, words=("<pad>", "<unk>", "w0", "w1"),
            chars=("<pad>", "<unk>", "w", "0", "1"), word_dim=3, char_dim=2, char_hidden=2,
        ),
        labels,
    )  # fmt: skip
    if device is not None:
        model = model.to(setup(RuntimeParams(device=device)))
    objective = TeacherObjective(model, split, cfg, "xx")
    fit(
        model,
        params=cfg,
        batches=objective.batches,
        loss_fn=objective.loss,
        dev_score=lambda: 0.0,
        save_best=lambda: None,
        out_dir=tmp_path / (device or "default"),
    )
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_training_on_cpu_explicitly_is_the_default_exactly(
    tmp_path: Path, restore_threads: None
) -> None:
    default, cpu = _train(tmp_path, None), _train(tmp_path, "cpu")
    assert default.keys() == cpu.keys()
    for name in default:
        assert torch.equal(default[name], cpu[name]), name


def test_runtime_is_in_no_other_section() -> None:
    """Device and threads live only in ``runtime``, which no cache key or run fingerprint reads
    (features and knowledge made on one device are reused on another)."""
    for section in (EmbedParams, TeacherParams, ExportParams, StudentParams):
        assert not {"device", "threads"} & {f.name for f in dataclasses.fields(section)}

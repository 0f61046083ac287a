"""tools/train.py end to end on CPU: distributed equivalence, exact resume after SIGKILL/SIGTERM, checkpoint safety,
clear errors on bad input, and the embedded digits job. Training runs in subprocesses with one thread each
(OMP_NUM_THREADS=1), so that CPU results are bitwise reproducible; error cases run in-process."""
from __future__ import annotations

import csv
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import vision2d  # noqa: F401  (registers the models with timm)
from vision2d.checkpoint import CheckpointError, atomic_write
from vision2d.train.checkpointing import EMA_FILE, MODEL_FILE, verify_manifest
from vision2d.train.config import parse_args
from vision2d.train.data import build_digits_image_folder
from vision2d.train.distributed import DistributedContext, seed_everything
from vision2d.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "tools" / "train.py"
TIMEOUT_S = 600

# Small, fast runs on a digits subset: 80 training images (10 steps of 8), 31 validation images (odd on purpose,
# so that two processes need a padded share), 32x32 input.
SMALL_RUN = ["--img-size", "32", "--crop-pct", "1.0", "--batch-size", "8", "--warmup-epochs", "1",
             "--lr-base", "2e-3", "--lr-base-size", "8"]
# The paper's augmentation stays on (RandAugment, mixup/cutmix, random erasing, label smoothing) plus drop-path and
# a data loader worker, so that resuming must restore every random stream.
RESUME_RUN = SMALL_RUN + ["--epochs", "3", "--workers", "1", "--drop-path", "0.1"]


def run_env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def train_command(*args: str) -> list[str]:
    return [sys.executable, str(TRAIN), *args]


def run_train(*args: str, expect_rc: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run(train_command(*args), env=run_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == expect_rc, f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-4000:]}"
    return result


def run_and_signal(command: list[str], pattern: str, signum: int) -> tuple[int, str]:
    """Run ``command``, send ``signum`` as soon as its stderr matches ``pattern``; (exit status, stdout+stderr)."""
    process = subprocess.Popen(command, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stderr = bytearray()

    def watch_stderr():
        sent = False
        while chunk := process.stderr.read1(4096):
            stderr.extend(chunk)
            if not sent and re.search(pattern, stderr.decode(errors="replace")):
                process.send_signal(signum)
                sent = True

    watcher = threading.Thread(target=watch_stderr)
    watcher.start()
    stdout = process.stdout.read().decode()
    process.wait(timeout=TIMEOUT_S)
    watcher.join()
    return process.returncode, stdout + stderr.decode(errors="replace")


def load_tool(name: str):
    """Import tools/<name>.py as a module, to call its entry point in-process."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as file:
        return list(csv.DictReader(file))


def assert_same_weights(run_a: Path, run_b: Path) -> None:
    for name in (MODEL_FILE, EMA_FILE):
        weights_a, weights_b = load_file(run_a / "last" / name), load_file(run_b / "last" / name)
        assert weights_a.keys() == weights_b.keys()
        differing = [key for key in weights_a if not torch.equal(weights_a[key], weights_b[key])]
        assert not differing, f"{name}: {len(differing)} tensors differ, e.g. {differing[:3]}"


def assert_same_metrics(run_a: Path, run_b: Path) -> None:
    rows_a, rows_b = read_metrics(run_a), read_metrics(run_b)
    timing = {"epoch_seconds", "train_images_per_s"}
    assert [{k: v for k, v in row.items() if k not in timing} for row in rows_a] == \
           [{k: v for k, v in row.items() if k not in timing} for row in rows_b]


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory) -> Path:
    return build_digits_image_folder(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def small_data(digits_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small")
    for split, per_class in (("train", 8), ("val", 3)):
        for class_dir in sorted((digits_dir / split).iterdir()):
            extra = 1 if split == "val" and class_dir.name == "0" else 0
            (root / split / class_dir.name).mkdir(parents=True)
            for image in sorted(class_dir.iterdir())[:per_class + extra]:
                shutil.copy(image, root / split / class_dir.name / image.name)
    return root


@pytest.fixture(scope="module")
def reference_run(small_data, tmp_path_factory) -> Path:
    """An uninterrupted 3-epoch run that interrupted-and-resumed runs must reproduce bitwise."""
    output = tmp_path_factory.mktemp("reference")
    run_train("--data-dir", str(small_data), "--output", str(output), "--experiment", "run", *RESUME_RUN)
    return output / "run"


def test_two_processes_match_one_with_the_same_global_batch(small_data, tmp_path):
    # SGD, not AdamW: AdamW divides each gradient element by its own magnitude, so elements whose true gradient is
    # zero (the qk-norm bias: softmax is shift-invariant) move by +-lr in a direction set by rounding noise. With SGD
    # every difference stays at rounding level. A large lr makes the weights move far from their shared init.
    # --lr-base-size 16 gives lr 0.1 only if the global batch counts both processes.
    common = ["--data-dir", str(small_data), "--output", str(tmp_path), "--img-size", "32", "--crop-pct", "1.0",
              "--epochs", "1", "--warmup-epochs", "0.2", "--workers", "0", "--no-aug", "--mixup", "0",
              "--cutmix", "0", "--drop-path", "0", "--drop-rate", "0", "--opt", "sgd", "--lr-base", "0.1",
              "--lr-base-size", "16", "--weight-decay", "0.05"]
    run_train(*common, "--batch-size", "16", "--experiment", "one")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    str(TRAIN), *common, "--batch-size", "8", "--experiment", "two"],
                   env=run_env(), check=True, capture_output=True, timeout=TIMEOUT_S)
    seed_everything(0)  # as tools/train.py does before creating the model: the shared initial weights
    initial = timm.create_model("test_mamba2d", num_classes=10).state_dict()
    one, two = (load_file(tmp_path / run / "last" / MODEL_FILE) for run in ("one", "two"))
    assert max((one[key] - initial[key]).abs().max().item() for key in one) > 0.1, "training barely moved"
    for name in (MODEL_FILE, EMA_FILE):
        one, two = (load_file(tmp_path / run / "last" / name) for run in ("one", "two"))
        for key in one:
            torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6, msg=lambda m: f"{name} {key}: {m}")
    rows_one, rows_two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    for key in ("train_loss", "val_loss", "val_top1", "val_top5", "ema_val_loss", "ema_val_top1"):
        assert float(rows_two[0][key]) == pytest.approx(float(rows_one[0][key]), rel=1e-5), key
    assert rows_one[0]["updates"] == rows_two[0]["updates"] == "5"


def test_sigterm_checkpoints_mid_epoch_and_resume_continues_exactly(small_data, reference_run, tmp_path):
    command = train_command("--data-dir", str(small_data), "--output", str(tmp_path), "--experiment", "run",
                            *RESUME_RUN)
    status, output = run_and_signal(command, r"epoch 2/3:\s+\d+%\|[^|]*\|\s*[2-8]/10", signal.SIGTERM)
    assert status == 128 + signal.SIGTERM, output
    assert "stopped by SIGTERM" in output
    run_dir = tmp_path / "run"
    assert re.fullmatch(r"epoch-0001-step-0000\d\d", os.readlink(run_dir / "last")), os.readlink(run_dir / "last")
    verify_manifest(run_dir / "last")
    run_train("--resume", str(run_dir))
    assert_same_weights(run_dir, reference_run)
    assert_same_metrics(run_dir, reference_run)


def test_a_kill_in_the_first_epoch_resumes_from_a_mid_epoch_checkpoint_exactly(small_data, reference_run, tmp_path):
    """--checkpoint-steps 4: a SIGKILL in the first epoch loses at most 4 steps, and the run resumed inside the epoch
    (same samples in the same order, same random augmentation) ends bitwise equal to an uninterrupted one. (Resuming
    from an epoch's end is covered by test_resuming_an_earlier_checkpoint_replaces_its_successors.)"""
    command = train_command("--data-dir", str(small_data), "--output", str(tmp_path), "--experiment", "run",
                            *RESUME_RUN, "--checkpoint-steps", "4")
    status, output = run_and_signal(command, r"epoch 1/3:\s+\d+%\|[^|]*\|\s*[6-7]/10", signal.SIGKILL)
    assert status == -signal.SIGKILL, output
    run_dir = tmp_path / "run"
    last = os.readlink(run_dir / "last")
    assert last in ("epoch-0000-step-000004", "epoch-0000-step-000008"), output  # 8 if the kill came late
    verify_manifest(run_dir / "last")
    result = run_train("--resume", str(run_dir))
    assert f"at epoch 1, step {int(last[-6:])}" in result.stdout
    assert_same_weights(run_dir, reference_run)
    assert_same_metrics(run_dir, reference_run)


def test_torchrun_killed_mid_epoch_resumes_exactly(small_data, tmp_path):
    """Two gloo processes: SIGKILL to torchrun and both workers as soon as the first checkpoint (every 3 steps)
    exists, --resume, and the weights equal those of an uninterrupted two-process run bitwise."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(TRAIN)]
    common = ["--data-dir", str(small_data), "--output", str(tmp_path), *RESUME_RUN, "--epochs", "1",
              "--warmup-epochs", "0.5", "--batch-size", "4", "--lr-base-size", "8"]
    subprocess.run([*torchrun, *common, "--experiment", "reference"], env=run_env(), check=True, capture_output=True,
                   timeout=TIMEOUT_S)
    run_dir = tmp_path / "run"
    process = subprocess.Popen([*torchrun, *common, "--experiment", "run", "--checkpoint-steps", "3"], env=run_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while not (run_dir / "last").is_symlink() and process.poll() is None:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait(timeout=TIMEOUT_S) == -signal.SIGKILL
    assert re.fullmatch(r"epoch-0000-step-00000[369]", os.readlink(run_dir / "last")), os.readlink(run_dir / "last")
    result = subprocess.run([*torchrun, "--resume", str(run_dir)], env=run_env(), capture_output=True, text=True,
                            timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_weights(run_dir, tmp_path / "reference")
    assert_same_metrics(run_dir, tmp_path / "reference")


def test_mid_epoch_schedule_counts_steps_and_minutes(monkeypatch):
    from vision2d.train import checkpointing
    now = [1000.0]
    monkeypatch.setattr(checkpointing.time, "monotonic", lambda: now[0])
    by_steps, by_time, off = (checkpointing.MidEpochSchedule(*settings) for settings in ((3, 0), (0, 2.0), (0, 0)))
    assert [by_steps.due(update) for update in range(1, 7)] == [False, False, True, False, False, True]
    now[0] += 119
    assert not by_time.due(1)
    now[0] += 1
    assert by_time.due(2) and not off.due(3)
    by_time.saved()
    assert not by_time.due(3)


def test_sigterm_to_torchrun_checkpoints_both_processes_mid_epoch(small_data, tmp_path):
    """torchrun forwards SIGTERM to each process group, data loader workers included: they must outlive the
    checkpoint that both training processes agree to write after the same step."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(TRAIN),
               "--data-dir", str(small_data), "--output", str(tmp_path), "--experiment", "run", *RESUME_RUN,
               "--batch-size", "4", "--lr-base-size", "8"]
    status, output = run_and_signal(command, r"epoch 2/3:\s+\d+%\|[^|]*\|\s*[2-8]/10", signal.SIGTERM)
    assert status != 0 and "stopped by SIGTERM" in output, output[-3000:]
    run_dir = tmp_path / "run"
    assert re.fullmatch(r"epoch-0001-step-0000\d\d", os.readlink(run_dir / "last")), output[-3000:]
    verify_manifest(run_dir / "last")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             str(TRAIN), "--resume", str(run_dir)], env=run_env(), capture_output=True, text=True,
                            timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [row["epoch"] for row in read_metrics(run_dir)] == ["1", "2", "3"]

def test_truncated_checkpoint_fails_clearly_and_other_checkpoints_survive(small_data, reference_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run, run_dir, symlinks=True)
    shutil.copytree(run_dir / "last", run_dir / "epoch-0002")  # an older checkpoint of the same run
    weights = run_dir / "last" / MODEL_FILE
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    train = load_tool("train")
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(weights.resolve()))} is truncated.*epoch-0002"):
        train.main(["--data-dir", str(small_data), "--output", str(tmp_path), "--resume", str(run_dir), *RESUME_RUN])
    verify_manifest(run_dir / "epoch-0002")
    validate = load_tool("validate")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        validate.validate(["--checkpoint", str(weights), "--data-dir", str(small_data)])


def test_atomic_write_keeps_the_previous_file_when_writing_fails(tmp_path):
    target = tmp_path / "weights.bin"
    target.write_bytes(b"previous")

    def write_half_then_fail(temp_path: Path) -> None:
        temp_path.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, write_half_then_fail)
    assert target.read_bytes() == b"previous"
    assert [path.name for path in tmp_path.iterdir()] == ["weights.bin"]


@pytest.mark.parametrize("layout, message", [
    ("missing", "does not exist"),
    ("empty", "has no 'train' folder"),
    ("no_class_folders", "has no class folders"),
    ("loose_images", "images outside class folders"),
    ("no_images", "Found 0 images"),
])
def test_bad_data_dir_fails_clearly(small_data, tmp_path, layout, message):
    data_dir = tmp_path / "data"
    if layout == "loose_images":
        shutil.copytree(small_data, data_dir)
        shutil.copy(next((small_data / "train" / "0").iterdir()), data_dir / "train" / "image.png")
    elif layout != "missing":
        data_dir.mkdir()
    if layout in ("no_class_folders", "no_images"):
        for split in ("train", "val"):
            (data_dir / split).mkdir()
    if layout == "no_images":
        for split in ("train", "val"):
            (data_dir / split / "cat").mkdir()
    with pytest.raises(ValueError, match=message):
        load_tool("train").main(["--data-dir", str(data_dir), "--output", str(tmp_path), *SMALL_RUN])


def test_train_and_val_with_different_classes_fail_clearly(small_data, tmp_path):
    data_dir = tmp_path / "data"
    shutil.copytree(small_data, data_dir)
    shutil.rmtree(data_dir / "val" / "7")
    with pytest.raises(ValueError, match=r"classes of 'val' differ from those of 'train'.*'7'"):
        load_tool("train").main(["--data-dir", str(data_dir), "--output", str(tmp_path), *SMALL_RUN])


def test_cli_reports_errors_without_a_traceback(tmp_path):
    result = run_train("--data-dir", str(tmp_path / "nowhere"), expect_rc=2)
    assert result.stderr.startswith("error: data dir") and "Traceback" not in result.stderr


def test_unknown_model_fails_clearly(small_data, tmp_path):
    with pytest.raises(ValueError, match="unknown model 'mamba2d_tinyy'.*close matches: mamba2d_tiny"):
        load_tool("train").main(["--data-dir", str(small_data), "--output", str(tmp_path), "--model",
                                 "mamba2d_tinyy", *SMALL_RUN])


def test_checkpoint_of_another_model_fails_clearly(small_data, reference_run, tmp_path):
    with pytest.raises(CheckpointError, match="weights of model 'test_mamba2d', not of 'test_convnext'"):
        load_tool("train").main(["--data-dir", str(small_data), "--output", str(tmp_path), "--resume",
                                 str(reference_run), "--model", "test_convnext", *RESUME_RUN])
    with pytest.raises(CheckpointError, match="weights of model 'test_mamba2d', not of 'test_convnext'"):
        load_tool("validate").validate(["--checkpoint", str(reference_run / "best" / MODEL_FILE), "--model",
                                        "test_convnext", "--data-dir", str(small_data)])


def test_a_run_folder_with_checkpoints_is_not_overwritten(small_data, reference_run):
    with pytest.raises(CheckpointError, match="already holds checkpoints: pass --resume"):
        load_tool("train").main(["--data-dir", str(small_data), "--output", str(reference_run.parent),
                                 "--experiment", reference_run.name, *RESUME_RUN])


def test_embedded_default_job_shortened_to_one_epoch_beats_chance(tmp_path):
    result = run_train("--epochs", "1", "--output", str(tmp_path))
    paths = dict(re.findall(r"^\s+(checkpoint|metrics|plot):\s+(\S+)", result.stdout, flags=re.MULTILINE))
    assert set(paths) == {"checkpoint", "metrics", "plot"}, result.stdout
    assert all(Path(path).is_file() for path in paths.values())
    row = read_metrics(Path(paths["metrics"]).parent)[0]
    assert float(row["ema_val_top1"]) > 50 and float(row["val_top1"]) > 50, row  # chance: 10%
    metrics = load_tool("validate").validate(["--checkpoint", paths["checkpoint"], "--data-dir",
                                              str(tmp_path / "digits-32px"), "--batch-size", "32", "--workers", "0"])
    assert metrics["top1"] == pytest.approx(float(row["ema_val_top1"]))


def test_tensorboard_logs_each_epoch_or_names_the_missing_package(small_data, tmp_path):
    argv = ["--data-dir", str(small_data), "--output", str(tmp_path), "--experiment", "run", "--tensorboard",
            "--img-size", "32", "--crop-pct", "1.0", "--batch-size", "8", "--epochs", "1", "--warmup-epochs", "0.5",
            "--workers", "0"]
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(ImportError, match="pip install tensorboard"):
            load_tool("train").main(argv)
    else:
        assert load_tool("train").main(argv) == 0
        assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("batch_size, accum_steps, expected_lr", [(64, 64, 4e-3), (32, 2, 4e-3 * 64 / 4096)])
def test_optimizer_follows_the_recipe(small_data, batch_size, accum_steps, expected_lr):
    """Linear lr scaling from 4e-3 at global batch 4096; AdamW weight decay on weights only: none on norms, biases
    and model.no_weight_decay() (the 2-D A_log tensors among them)."""
    args = parse_args(["--data-dir", str(small_data), "--config", str(REPO / "configs/train/mamba2d_tiny.yaml"),
                       "--model", "test_mamba2d", "--batch-size", str(batch_size),
                       "--grad-accum-steps", str(accum_steps)])
    model = timm.create_model("test_mamba2d", num_classes=10)
    trainer = Trainer(model, args, num_classes=10, steps_per_epoch=10,
                      context=DistributedContext(rank=0, world_size=1, device=torch.device("cpu")))
    assert trainer.lr == pytest.approx(expected_lr)
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    decay_of = {id(param): group["weight_decay"] for group in trainer.optimizer.param_groups
                for param in group["params"]}
    no_decay = model.no_weight_decay()
    assert any(model.get_parameter(name).ndim == 2 for name in no_decay)
    for name, param in model.named_parameters():
        expected = 0.0 if param.ndim <= 1 or name in no_decay else 0.05
        assert decay_of[id(param)] == expected, name


@pytest.mark.parametrize("variant, drop_path, head_dropout, weight_decay", [
    ("nano", 0.0, 0.0, 0.025), ("tiny", 0.175, 0.15, 0.05), ("small", 0.4, 0.4, 0.05)])
def test_variant_configs_hold_the_papers_recipe(small_data, variant, drop_path, head_dropout, weight_decay):
    args = parse_args(["--config", str(REPO / f"configs/train/mamba2d_{variant}.yaml"), "--data-dir", str(small_data)])
    assert args.model == f"mamba2d_{variant}"
    assert (args.drop_path, args.drop_rate, args.weight_decay) == (drop_path, head_dropout, weight_decay)
    assert (args.opt, args.lr_base, args.lr_base_size, args.batch_size * args.grad_accum_steps) == \
           ("adamw", 4e-3, 4096, 4096)
    assert (args.epochs, args.warmup_epochs, args.sched, args.min_lr) == (300, 15, "cosine", 1e-6)
    assert (args.aa, args.mixup, args.cutmix, args.smoothing, args.reprob) == \
           ("rand-m9-mstd0.5-inc1", 0.8, 1.0, 0.1, 0.25)
    assert (args.model_ema, args.model_ema_decay, args.amp, args.amp_dtype) == (True, 0.999, True, "bfloat16")
    assert (args.img_size, args.crop_pct) == (None, None)  # from the model's pretrained cfg


def test_randaugment_posterize_to_zero_bits_gives_a_black_image():
    """'rand-m9-mstd0.5-inc1' draws magnitude 10 (0 bits kept) in about 2% of its posterize ops; Pillow 13 alone
    raises on 0 bits, vision2d.train.data restores the black image of older Pillow."""
    from PIL import Image
    from timm.data.auto_augment import AugmentOp

    image = Image.new("RGB", (8, 8), (200, 100, 50))
    for name in ("PosterizeIncreasing", "Posterize"):
        magnitude = 10 if name == "PosterizeIncreasing" else 0
        posterized = AugmentOp(name, prob=1.0, magnitude=magnitude)(image)
        assert posterized.size == image.size and posterized.getextrema() == ((0, 0),) * 3



def test_resuming_an_earlier_checkpoint_replaces_its_successors(reference_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run, run_dir, symlinks=True)
    epoch_3 = tmp_path / "epoch-0003"
    shutil.copytree(run_dir / "last", epoch_3)
    run_train("--resume", str(run_dir), "--epochs", "4")
    first_epoch_4 = load_file(run_dir / "last" / MODEL_FILE)
    shutil.copytree(epoch_3, run_dir / "epoch-0003", dirs_exist_ok=True)
    run_train("--resume", str(run_dir / "epoch-0003"), "--epochs", "4")  # saves epoch-0004 again: the name is taken
    assert os.readlink(run_dir / "last") == "epoch-0004.2"
    verify_manifest(run_dir / "last")
    linked = {os.readlink(run_dir / link) for link in ("last", "best")}
    kept = {entry.name for entry in run_dir.iterdir() if entry.name.startswith("epoch-")}
    assert kept == linked  # the first epoch-0004 is deleted once no link names it
    assert not [entry.name for entry in run_dir.iterdir() if entry.name.startswith(".") and entry.name != ".lock"]
    again = load_file(run_dir / "last" / MODEL_FILE)
    assert all(torch.equal(again[key], first_epoch_4[key]) for key in first_epoch_4)


# --- checkpoint saving: every kill point, full disk, broken links, one writer per run folder --------------------

# The os calls through which a save changes the file system (shutil.rmtree and pathlib go through them too).
FILE_SYSTEM_CHANGES = ("mkdir", "rename", "replace", "symlink", "unlink", "rmdir", "fsync")


def save_marked_checkpoint(run_dir: Path, name: str, marker: str, is_best: bool) -> Path:
    from vision2d.train.checkpointing import save_training_checkpoint
    state = {"weight": torch.full((4, 3), float(len(marker)))}
    return save_training_checkpoint(run_dir, name, "test_mamba2d", 10, {"input_size": [3, 32, 32]}, state, state,
                                     dict(marker=marker), dict(model="test_mamba2d"), is_best)


def save_in_child(run_dir: Path, name: str, kill_before: int | None) -> int:
    """Save checkpoint ``name`` (marker 'new') in a forked process that dies (os._exit, no clean-up) right before
    its ``kill_before``-th file-system change; returns how many changes the save made when it was not killed."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: count (and maybe die at) every change, then report the count
        status = 0
        try:
            calls = [0]
            for function_name in FILE_SYSTEM_CHANGES:
                def counted(*args, _original=getattr(os, function_name), **kwargs):
                    if calls[0] == kill_before:
                        os._exit(137)
                    calls[0] += 1
                    return _original(*args, **kwargs)
                setattr(os, function_name, counted)
            save_marked_checkpoint(run_dir, name, "new", is_best=True)
            os.write(write_end, str(calls[0]).encode())
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        reported = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == (0 if kill_before is None else 137)
    return int(reported) if kill_before is None else -1


def make_run(run_dir: Path, timeline: str) -> None:
    """'fresh': last and best name epoch-0001. 'resumed': epoch-0001, and epoch-0002 of a later timeline named by
    last and best, as after resuming epoch-0001: saving epoch-0002 again finds the name taken."""
    run_dir.mkdir()
    save_marked_checkpoint(run_dir, "epoch-0001", "old", is_best=True)
    if timeline == "resumed":
        os.rename(run_dir / "epoch-0001", run_dir / "kept")  # out of reach of the clean-up of the next save
        save_marked_checkpoint(run_dir, "epoch-0002", "abandoned", is_best=True)
        os.rename(run_dir / "kept", run_dir / "epoch-0001")


@pytest.mark.parametrize("timeline", ["fresh", "resumed"])
def test_a_kill_at_every_step_of_a_save_leaves_last_complete_and_resumable(tmp_path, monkeypatch, timeline):
    from vision2d.train.checkpointing import list_checkpoints, load_training_checkpoint
    # fsync guards against power loss, not against a process kill: still a kill point, but a no-op for speed
    monkeypatch.setattr(os, "fsync", lambda descriptor: None)
    template = tmp_path / "template"
    make_run(template, timeline)
    before = load_training_checkpoint(template, "test_mamba2d").trainer_state["marker"]
    count_dir = tmp_path / "count"
    shutil.copytree(template, count_dir, symlinks=True)
    changes = save_in_child(count_dir, "epoch-0002", kill_before=None)
    assert changes > 20, changes  # mkdir, file writes, renames, links, deletions: the interception works
    for kill_before in range(changes + 1):
        run_dir = tmp_path / f"killed-{kill_before}"
        shutil.copytree(template, run_dir, symlinks=True)
        if kill_before < changes:
            save_in_child(run_dir, "epoch-0002", kill_before)
        else:
            save_in_child(run_dir, "epoch-0002", kill_before=None)
        for link in ("last", "best"):
            verify_manifest((run_dir / link).resolve())
        marker = load_training_checkpoint(run_dir, "test_mamba2d").trainer_state["marker"]
        assert marker in (before, "new"), (kill_before, marker)
        if kill_before == changes:
            assert marker == "new"
        # what --resume then does: save the next checkpoint; leftovers of the killed save are cleaned up
        save_marked_checkpoint(run_dir, "epoch-0003", "next", is_best=True)
        assert sorted(entry.name for entry in run_dir.iterdir()) == ["best", "epoch-0003", "last"], kill_before
        assert list_checkpoints(run_dir) == ["epoch-0003"]
        shutil.rmtree(run_dir)


def test_a_save_over_a_taken_name_keeps_both_until_the_links_move(tmp_path):
    run_dir = tmp_path / "run"
    make_run(run_dir, "resumed")
    saved = save_marked_checkpoint(run_dir, "epoch-0002", "new", is_best=False)
    assert saved.name == "epoch-0002.2" and os.readlink(run_dir / "last") == "epoch-0002.2"
    assert os.readlink(run_dir / "best") == "epoch-0002"  # the abandoned timeline's best stays until a new best


def test_a_full_disk_during_a_save_removes_the_partial_checkpoint_and_keeps_last(tmp_path, monkeypatch):
    import errno

    from vision2d.train import checkpointing
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_marked_checkpoint(run_dir, "epoch-0001", "old", is_best=True)
    writes = []

    def fill_the_disk_on_the_second_file(state, path, *args, **kwargs):
        writes.append(path)
        if len(writes) == 2:
            Path(path).write_bytes(b"half a file")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return original(state, path, *args, **kwargs)

    original = checkpointing.save_safetensors_weights
    monkeypatch.setattr(checkpointing, "save_safetensors_weights", fill_the_disk_on_the_second_file)
    with pytest.raises(CheckpointError, match=r"could not save checkpoint .*epoch-0002 \(.*No space left on device.*"
                                              r"partial copy was removed and 'last' names epoch-0001"):
        save_marked_checkpoint(run_dir, "epoch-0002", "new", is_best=True)
    assert sorted(entry.name for entry in run_dir.iterdir()) == ["best", "epoch-0001", "last"]
    verify_manifest(run_dir / "last")


def test_last_naming_a_deleted_checkpoint_lists_the_ones_that_remain(small_data, reference_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run, run_dir, symlinks=True)
    shutil.copytree(run_dir / "last", run_dir / "epoch-0002")
    shutil.rmtree(run_dir / os.readlink(run_dir / "last"))
    message = r"last names epoch-0003, which does not exist; checkpoints that remain in .*run: .*epoch-0002 \(resume"
    with pytest.raises(CheckpointError, match=message):
        load_tool("train").main(["--resume", str(run_dir)])
    result = run_train("--resume", str(run_dir / "epoch-0002"), "--epochs", "2")  # resuming one by path works
    assert "resuming" in result.stdout
    with pytest.raises(CheckpointError, match="checkpoint .*model.safetensors is a file; expected a checkpoint folder"):
        load_tool("train").main(["--resume", str(run_dir / "epoch-0002" / MODEL_FILE)])


@pytest.mark.parametrize("manifest, message", [
    ("[]", "expected a mapping of file names"),
    ('{"model.safetensors": 5}', "expected a mapping of file names"),
    ('{"../../etc/passwd": {"size": 1, "sha256": "00"}}', "is missing"),
    ("\xff\xfe", "is corrupt"),
])
def test_a_manifest_of_the_wrong_shape_is_a_clear_error(tmp_path, manifest, message):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    checkpoint = save_marked_checkpoint(run_dir, "epoch-0001", "old", is_best=True)
    (checkpoint / "manifest.json").write_bytes(manifest.encode("latin-1"))
    with pytest.raises(CheckpointError, match=message):
        verify_manifest(checkpoint)


def test_one_writer_per_run_folder_and_the_lock_of_a_killed_run_is_free(small_data, tmp_path):
    from vision2d.train.checkpointing import lock_run_folder
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    read_end, write_end = os.pipe()
    holder = os.fork()
    if holder == 0:  # another training process holding the run folder
        lock = lock_run_folder(run_dir)  # noqa: F841
        os.write(write_end, b"locked")
        time.sleep(600)
        os._exit(0)
    try:
        assert os.read(read_end, 6) == b"locked"
        with pytest.raises(CheckpointError, match=rf"run folder .*run is in use by another training process "
                                                  rf"\(pid {holder}\)"):
            load_tool("train").main(["--data-dir", str(small_data), "--output", str(tmp_path), "--experiment", "run",
                                     *SMALL_RUN, "--workers", "0"])
    finally:
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)
    lock_run_folder(run_dir).close()  # the kernel released the lock of the killed process


def test_default_run_names_are_unique(small_data, tmp_path, monkeypatch):
    train = load_tool("train")
    monkeypatch.setattr(train.time, "strftime", lambda _: "20260101-000000")  # two runs started in the same second
    args = parse_args(["--data-dir", str(small_data), "--output", str(tmp_path)])
    first, second = train.create_run_dir(args, small_data), train.create_run_dir(args, small_data)
    assert (first.name, second.name) == ("20260101-000000-test_mamba2d-small0", "20260101-000000-test_mamba2d-small0-2")


@pytest.mark.parametrize("experiment", ["../elsewhere", "/tmp/absolute", "a/../../b", ""])
def test_experiment_must_stay_inside_the_output_folder(small_data, tmp_path, experiment):
    with pytest.raises(ValueError, match="--experiment must be a folder name inside --output"):
        parse_args(["--data-dir", str(small_data), "--output", str(tmp_path), "--experiment", experiment])


def test_an_output_that_is_a_file_is_a_clear_error(small_data, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"--output .*file is a file; expected a folder"):
        parse_args(["--data-dir", str(small_data), "--output", str(tmp_path / "file")])

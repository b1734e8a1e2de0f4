"""`bench sweep`: grids expand to one `bench fit` per point, run several at once on a node or as SLURM arrays
(submitit), skip points already recorded, and their records make the trade-off plot."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import registry
from bench.cli import main
from bench.errors import BenchError
from bench.records import load_records
from bench.sweeps import assign, expand_sweep, launch, next_start, node_capacity
from bench.sweeps.grid import Point
from bench.sweeps.node import point_environment, run_on_node
from bench.sweeps.slots import release, take

ATTACKS = json.dumps([{"class_path": "FeatureInversion", "init_args": {"epochs": 1, "progress": False}}])
#: a training of two batches, one cheap attack, records and leaderboard in the working folder
TINY = [
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "2",
    "--trainer.limit_val_batches",
    "1",
    "--data.pool_limit",
    "64",
    "--trainer.logger",
    "false",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--evaluation.attacks",
    ATTACKS,
    "--evaluation.records_dir",
    "records",
    "--evaluation.leaderboard_dir",
    "board",
]
TWO_POINTS = "runs:\n  - config: dnn/tiny\n    grid:\n      model.lr: [0.003, 0.01]\n"


# ---------------------------------------------------------------------- the sweep file
def test_every_shipped_sweep_expands_to_shipped_configs():
    for name, path in registry.sweeps().items():
        commands = expand_sweep(str(path))
        assert commands, name
        for command in commands:
            assert command[:2] == ["fit", "--config"] and os.path.exists(command[2])


def test_grid_points_become_command_line_overrides():
    commands = expand_sweep(str(registry.sweeps()["ran_mnist_shared"]))
    lams = [command[command.index("--model.lam") + 1] for command in commands if "--model.lam" in command]
    assert lams == ["0.01", "0.1", "0.3", "0.5", "0.9"]
    assert len(commands) == 1 + 5 + 5 + 5


@pytest.mark.parametrize(
    "content, message",
    [
        ("runs: []", "non-empty list"),
        ("runs:\n  - grid: {model.lam: [0.1]}", "needs a `config`"),
        ("runs:\n  - config: ran/tiny\n    grid: {model.lam: []}", "non-empty list of values"),
        ("runs:\n  - config: no/such/config", "no config file"),
        ("runs: [", "cannot read sweep"),
    ],
)
def test_bad_sweeps_are_explained(content, message, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(content)
    with pytest.raises(BenchError, match=message):
        expand_sweep(str(sweep))


def test_bad_point_arguments_fail_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("sweep.yaml").write_text(TWO_POINTS)
    with pytest.raises(
        BenchError,
        match=r"sweep point 1 \(--config dnn/tiny --model.lr 0.003 --model.no_such_option 1\): "
        r"invalid arguments: --model.no_such_option: SplitNetwork has no argument 'no_such_option'",
    ):
        launch("sweep.yaml", extra_args=["--model.no_such_option", "1"], report=lambda line: None)
    assert not Path("runs").exists()


def test_dry_run_prints_every_command(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["sweep", "ran_tiny", "--dry_run", "--trainer.max_epochs", "1"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("bench sweep [")]
    assert len(lines) == 5
    for line in lines:
        # the point's own arguments, then the sweep's plumbing: its key, its own folder, no leaderboard per point
        assert "--trainer.max_epochs 1 --sweep_point " in line and "--evaluation.leaderboard_dir null" in line
    keys = {line.split("--sweep_point ")[1].split()[0] for line in lines}
    assert len(keys) == 5 and all(len(key) == 64 for key in keys)
    # one cache folder for every point (shadow pools and decoders, each under its full key), in the sweep's folder
    caches = {line.split("--sweep_cache ")[1].split()[0] for line in lines}
    assert len(caches) == 1 and Path(caches.pop()).parts[-3:] == ("sweeps", "ran_tiny", "shadow_cache")
    assert not Path("runs").exists()


def test_point_key_is_the_resolved_settings(tmp_path, monkeypatch):
    """Same settings, same key, whichever way they are written; any change of setting, a new key."""
    from bench.sweeps.grid import point_key, resolve_config

    monkeypatch.chdir(tmp_path)
    base = point_key(resolve_config(["fit", "--config", "dnn/tiny"]))
    assert (
        point_key(resolve_config(["fit", "--config", "dnn/tiny", "--model.lr", "0.003"])) == base
    )  # the config's value
    assert point_key(resolve_config(["fit", "--config", "dnn/tiny", "--model.lr", "0.004"])) != base
    edited = tmp_path / "tiny.yaml"
    edited.write_text(registry.configs()["dnn/tiny"].read_text().replace("max_epochs: 5", "max_epochs: 6"))
    assert point_key(resolve_config(["fit", "--config", str(edited)])) != base


# ---------------------------------------------------------------------- slots (pure)
def test_slots_on_a_cpu_machine_count_devices():
    capacity = node_capacity(jobs=3, gpus=[])
    assert capacity.free == {None: 3} and capacity.budget == 3
    assert assign(2, capacity) == [None, None]
    take([None, None], capacity)
    assert assign(2, capacity) is None and assign(1, capacity) == [None]
    assert node_capacity(jobs=None, gpus=[]).budget == 1  # default: one at a time, as before


def test_multi_device_points_take_distinct_gpus_and_spread():
    capacity = node_capacity(jobs=None, gpus=["0", "1", "2", "3"], per_gpu=2)
    assert capacity.budget == 8
    two = assign(2, capacity)
    assert two == ["0", "1"]
    take(two, capacity)
    assert assign(1, capacity) == ["2"]  # the emptiest GPU first
    assert assign(4, capacity) == ["2", "3", "0", "1"]  # four different GPUs, even with a second slot each
    assert assign(5, capacity) is None  # DDP wants one process per GPU: never two ranks on one
    take(["2", "3", "0", "1"], capacity)
    assert capacity.free == {"0": 0, "1": 0, "2": 1, "3": 1} and assign(2, capacity) == ["2", "3"]
    release(two, capacity)
    assert capacity.free == {"0": 1, "1": 1, "2": 1, "3": 1} and capacity.budget == 4


def test_jobs_cap_the_gpus_and_first_fit_lets_small_points_pass_a_big_one():
    capacity = node_capacity(jobs=2, gpus=["0", "1", "2", "3"])
    assert capacity.budget == 2 and assign(3, capacity) is None
    take(["0"], capacity)
    # waiting: a 2-device point (does not fit: one slot left), then a 1-device point (fits)
    assert next_start([2, 1], capacity) == (1, ["1"])
    take(["1"], capacity)
    assert next_start([2], capacity) is None


@pytest.mark.parametrize(
    "jobs, gpus, per_gpu, message",
    [
        (0, [], 1, "at least 1"),
        (5, ["0", "1"], 2, "more than 2 GPU"),
        (None, ["0", "0"], 1, "twice"),
        (None, ["0"], 0, "per_gpu"),
    ],
)
def test_bad_node_options_are_explained(jobs, gpus, per_gpu, message):
    with pytest.raises(BenchError, match=message):
        node_capacity(jobs, gpus, per_gpu)


def test_each_point_gets_its_gpus_and_a_share_of_the_cores():
    env = point_environment(["2", "3"], threads=4, base={"PATH": "/bin", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "7"})
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["OMP_NUM_THREADS"] == "4"
    assert "SLURM_NTASKS" not in env and env["SLURM_JOB_ID"] == "7"  # a sweep inside an allocation: no SLURM DDP layout
    assert "CUDA_VISIBLE_DEVICES" not in point_environment([None], threads=1, base={})  # CPU machine: untouched


@pytest.mark.parametrize("devices, slots", [("auto", 1), (-1, 1), (1, 1), (4, 4), ("2", 2)])
def test_a_point_takes_as_many_slots_as_it_has_devices(devices, slots, tmp_path):
    assert Point(1, ["fit"], {"trainer": {"devices": devices}}, "k" * 64, tmp_path).devices == slots


def test_devices_by_id_are_refused(tmp_path):
    with pytest.raises(BenchError, match="by id"):
        Point(1, ["fit"], {"trainer": {"devices": [2, 3]}}, "k" * 64, tmp_path).devices


# ---------------------------------------------------------------------- the node launcher, on a fake command
class _FakePoint(Point):
    """A point whose process is a short Python snippet instead of `bench fit`."""

    code = ""

    def command(self, resume, regenerate_leaderboard=False):
        return [sys.executable, "-c", self.code]


def _fake(number, code, tmp_path, devices=1):
    point = _FakePoint(
        number, ["fit", f"point{number}"], {"trainer": {"devices": devices}}, f"{number:064d}", tmp_path / f"p{number}"
    )
    point.code = code
    return point


def test_points_run_at_once_and_a_failure_stops_nothing(tmp_path):
    sleep = "import os, time; time.sleep(0.5); print('threads', os.environ['OMP_NUM_THREADS'])"
    points = [
        _fake(1, sleep, tmp_path),
        _fake(2, "raise SystemExit(3)", tmp_path),
        _fake(3, sleep, tmp_path),
        _fake(4, sleep, tmp_path, devices=2),
    ]
    lines = []
    outcomes = run_on_node(points, node_capacity(jobs=2, gpus=[]), threads=1, resume=True, report=lines.append)
    assert [o.status for o in outcomes] == ["done", "failed", "done", "done"]
    assert outcomes[1].returncode == 3 and any("FAILED (exit 3)" in line for line in lines)
    first, _, third, both = outcomes
    assert first.started < outcomes[1].ended and outcomes[1].started < first.ended  # 1 and 2 overlapped
    assert both.started >= max(first.ended, third.ended)  # it takes both slots: it waits until it is alone
    assert "threads 1" in points[0].log.read_text()
    status = json.loads((points[1].run_dir / "point.json").read_text())
    assert status["status"] == "failed" and status["returncode"] == 3


def test_a_point_too_big_for_the_node_is_refused_before_it_starts(tmp_path):
    with pytest.raises(BenchError, match="needs 3 devices"):
        run_on_node([_fake(1, "", tmp_path, devices=3)], node_capacity(jobs=2, gpus=[]), 1, True, lambda line: None)


def test_an_interrupted_point_resumes_from_its_last_checkpoint(tmp_path):
    point = Point(1, ["fit", "--config", "x.yaml"], {"trainer": {}}, "a" * 64, tmp_path / "point")
    assert "--ckpt_path" not in point.command(resume=True)
    point.last_checkpoint.parent.mkdir(parents=True)
    point.last_checkpoint.write_bytes(b"")
    command = point.command(resume=True)
    assert command[command.index("--ckpt_path") + 1] == str(point.last_checkpoint)
    assert "--ckpt_path" not in point.command(resume=False)  # --rerun starts over


# ---------------------------------------------------------------------- end to end, a tiny sweep
def _metrics(records_dir: Path) -> dict[str, tuple]:
    loaded = load_records([records_dir])
    assert not loaded.problems
    return {
        record["config"]["sweep_point"]: (record["utility"], [(e["attack"], e["metrics"]) for e in record["privacy"]])
        for record in loaded.records
    }


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory):
    """The same two-point sweep with --jobs 2 and with --jobs 1, each in its own folder."""
    results = {}
    for jobs in (2, 1):
        folder = tmp_path_factory.mktemp(f"jobs{jobs}")
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(folder)
            Path("sweep.yaml").write_text(TWO_POINTS)
            lines = []
            # one thread each in both: a different thread count changes float reductions in the last digits
            results[jobs] = (
                folder,
                launch("sweep.yaml", jobs=jobs, threads=1, extra_args=TINY, report=lines.append),
                lines,
            )
    return results


@pytest.mark.slow
def test_two_jobs_overlap_and_record_what_one_job_records(two_sweeps):
    (folder2, parallel, _), (folder1, serial, _) = two_sweeps[2], two_sweeps[1]
    assert [o.status for o in parallel.outcomes] == ["done", "done"] == [o.status for o in serial.outcomes]
    a, b = parallel.outcomes
    assert a.started < b.ended and b.started < a.ended  # both ran at once
    c, d = serial.outcomes
    assert c.ended <= d.started or d.ended <= c.started  # one after the other
    # same points (same keys), same numbers: the records do not depend on how many ran at once
    assert _metrics(folder2 / "records") == _metrics(folder1 / "records") and len(_metrics(folder2 / "records")) == 2
    assert {o.record.parent for o in parallel.outcomes} == {Path("records")}
    # the leaderboard was written once, at the end (the points ran with leaderboard_dir null)
    assert parallel.leaderboards == [Path("board/README.md")] and (folder2 / "board" / "leaderboard.csv").is_file()
    assert "2 done, 0 failed, 0 skipped" in parallel.summary()


@pytest.mark.slow
def test_rerunning_skips_recorded_points_and_a_failed_point_stops_nothing(two_sweeps, monkeypatch, capsys):
    folder, first, _ = two_sweeps[2]
    monkeypatch.chdir(folder)
    before = sorted(p.name for p in Path("records").glob("*.json"))
    again = launch("sweep.yaml", jobs=2, threads=1, extra_args=TINY, report=lambda line: None)
    assert [o.status for o in again.outcomes] == ["skipped", "skipped"]
    assert [o.record for o in again.outcomes] == [o.record for o in first.outcomes]
    assert sorted(p.name for p in Path("records").glob("*.json")) == before
    # a new grid value is a new point: only it runs; it fails (Adam refuses lr < 0), is reported, and the command fails
    Path("sweep.yaml").write_text(TWO_POINTS.replace("[0.003, 0.01]", "[0.003, 0.01, -1.0]"))
    with pytest.raises(SystemExit):
        main(["sweep", "sweep.yaml", "--jobs", "2", "--threads", "1", *TINY])
    out, err = capsys.readouterr()
    assert "0 done, 1 failed, 2 skipped" in out and "failed: point 3 (--config dnn/tiny --model.lr -1.0)" in out
    assert "1 of 3 sweep points failed" in err and "lr must be positive" in out  # the log's tail is shown
    assert sorted(p.name for p in Path("records").glob("*.json")) == before


# ---------------------------------------------------------------------- SLURM through submitit
def test_slurm_dry_run_shows_the_arrays(tmp_path, monkeypatch, capsys):
    pytest.importorskip("submitit")
    monkeypatch.chdir(tmp_path)
    Path("sweep.yaml").write_text(
        "runs:\n  - config: dnn/tiny\n    grid: {model.lr: [0.003, 0.01]}\n"
        "  - config: ran/tiny\n    grid: {trainer.devices: [2], trainer.strategy: [ddp]}\n"
    )
    main(
        [
            "sweep",
            "sweep.yaml",
            "--launcher",
            "slurm",
            "--dry_run",
            "--partition",
            "gpu",
            "--time_min",
            "90",
            "--mem_gb",
            "32",
            "--cpus_per_task",
            "8",
            "--slurm_parameters",
            '{"account": "proj"}',
        ]
    )
    out = capsys.readouterr().out
    arrays = out.split("bench sweep: would submit an array of ")[1:]
    assert [array.split(" task")[0] for array in arrays] == ["2", "1"]
    single, ddp = arrays
    for flag in (
        "--partition=gpu",
        "--time=90",
        "--mem=32GB",
        "--cpus-per-task=8",
        "--account=proj",
        "--signal=USR2@120",
    ):
        assert f"#SBATCH {flag}" in single and f"#SBATCH {flag}" in ddp
    assert (
        "#SBATCH --array=0-1%2" in single and "#SBATCH --ntasks-per-node=1" in single and "--gpus-per-node=1" in single
    )
    # a 2-GPU point: one task per GPU, Lightning's SLURMEnvironment makes them one DDP group
    assert (
        "#SBATCH --ntasks-per-node=2" in ddp and "#SBATCH --gpus-per-node=2" in ddp and "#SBATCH --array=0-0%1" in ddp
    )
    assert "task 0: point 3: " in ddp and "--trainer.devices 2" in ddp and "--sweep_point" in ddp
    assert not Path("runs/sweeps/sweep/submitit").exists()


def test_slurm_without_srun_says_what_to_do(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, no sbatch
    Path("sweep.yaml").write_text(TWO_POINTS)
    with pytest.raises(BenchError, match="cannot submit to SLURM here.*--dry_run"):
        launch("sweep.yaml", launcher="slurm", report=lambda line: None)


def test_a_preempted_task_requeues_from_its_last_checkpoint(tmp_path):
    submitit = pytest.importorskip("submitit")
    from bench.sweeps.slurm import PointTask

    task = PointTask(
        ["python", "-m", "bench.cli", "fit"], str(tmp_path / "last.ckpt"), str(tmp_path / "fit.log"), str(tmp_path)
    )
    assert isinstance(task, submitit.helpers.Checkpointable)
    assert task.checkpoint().function.command == task.command  # nothing saved yet: start over
    (tmp_path / "last.ckpt").write_bytes(b"")
    requeued = task.checkpoint()
    assert isinstance(requeued, submitit.helpers.DelayedSubmission)
    assert requeued.function.command == [*task.command, "--ckpt_path", str(tmp_path / "last.ckpt")]
    assert requeued.function.checkpoint().function.command == requeued.function.command  # not added twice


@pytest.mark.slow
def test_slurm_path_through_submitits_debug_executor(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.chdir(tmp_path)
    Path("sweep.yaml").write_text("runs:\n  - config: dnn/tiny\n")
    lines = []
    result = launch("sweep.yaml", launcher="slurm", cluster="debug", extra_args=TINY, report=lines.append)
    [outcome] = result.outcomes
    assert outcome.status == "done" and outcome.record is not None and outcome.job_id
    assert json.loads(outcome.record.read_text())["config"]["sweep_point"] == outcome.point.key
    assert outcome.point.last_checkpoint.exists()  # what a requeued task would resume from
    assert result.leaderboards == [Path("board/README.md")]
    assert (
        launch("sweep.yaml", launcher="slurm", cluster="debug", extra_args=TINY, report=lines.append).outcomes[0].status
        == "skipped"
    )


# ---------------------------------------------------------------------- the shipped tiny sweep
@pytest.mark.slow
def test_tiny_sweep_fills_the_leaderboard_with_the_trade_off(tmp_path):
    attacks = (
        '[{"class_path": "FeatureInversion", "init_args": {"epochs": 2, "progress": false}}, '
        '{"class_path": "OwnDecoder"}]'
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.cli",
            "sweep",
            "ran_tiny",
            "--jobs",
            "2",
            "--trainer.max_epochs",
            "6",
            "--data.pool_limit",
            "300",
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--evaluation.attacks",
            attacks,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "5 done, 0 failed, 0 skipped" in run.stdout
    rows = list(csv.DictReader((tmp_path / "runs" / "leaderboard" / "leaderboard.csv").open()))
    methods = {row["method"] for row in rows}
    assert methods == {
        "DNN",
        "RAN (lam=0.1)",
        "RAN (lam=0.9)",
        "Noisy (noise_factor=0.5)",
        "DNN(resized) (noise_factor=0.5)",
    }
    # RAN's own decoder is reported beside the separately trained one
    ran = next(row for row in rows if row["method"] == "RAN (lam=0.1)")
    assert ran["own_decoder.mse_mean"] and ran["feature_inversion.mse_mean"]
    # the attacks given on the command line replace every point's own: one experiment, one plot of its five methods
    experiments = {row["experiment"] for row in rows}
    assert experiments == {"digits, 6 epochs, batch 64"}
    (plot,) = (tmp_path / "runs" / "leaderboard" / "plots").glob("feature_release__digits_*.png")
    markdown = (tmp_path / "runs" / "leaderboard" / "README.md").read_text()
    assert markdown.count(f"](plots/{plot.name})") == 1


# ---------------------------------------------------------------------- W&B: a sweep's points, one group
def test_points_are_grouped_by_sweep_and_named_by_their_settings_in_wandb(tmp_path, monkeypatch):
    from bench.sweeps.grid import load_points, resolve_config

    monkeypatch.chdir(tmp_path)
    Path("lr_sweep.yaml").write_text(TWO_POINTS)
    points = load_points("lr_sweep.yaml", ["--trainer.max_epochs", "1"], tmp_path / "runs")
    assert [point.wandb_name for point in points] == ["dnn/tiny model.lr=0.003", "dnn/tiny model.lr=0.01"]
    for point in points:
        command = point.command(resume=True)
        assert command[command.index("--trainer.logger.init_args.group") + 1] == "lr_sweep"
        # what the point's `bench fit` will run with: the command line parses into the logger's group and name
        logger = resolve_config(command[3:])["trainer"]["logger"]["init_args"]
        assert (logger["group"], logger["name"]) == ("lr_sweep", point.wandb_name)


@pytest.mark.parametrize(
    "logger, expected",
    [
        (False, []),
        ({"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "x"}}, []),
        (
            [{"class_path": "bench.loggers.BenchWandbLogger"}],
            [],
        ),  # several loggers: the command line cannot address one
        (
            {"class_path": "bench.loggers.BenchWandbLogger", "init_args": {"group": "mine", "name": None}},
            ["--trainer.logger.init_args.name", "ran/tiny model.lam=0.1"],
        ),
        (
            {"class_path": "bench.loggers.BenchWandbLogger", "init_args": {"group": None, "name": None}},
            ["--trainer.logger.init_args.group", "s", "--trainer.logger.init_args.name", "ran/tiny model.lam=0.1"],
        ),
    ],
)
def test_wandb_arguments_leave_other_loggers_and_a_users_choices_alone(logger, expected, tmp_path):
    from bench.registry import CONFIG_DIR

    args = ["fit", "--config", str(CONFIG_DIR / "ran" / "tiny.yaml"), "--model.lam", "0.1", "--seed_everything", "1"]
    point = Point(1, args, {"trainer": {"logger": logger}}, "a" * 64, tmp_path, shared=2, sweep="s")
    assert point.wandb_arguments() == expected


def test_a_settings_name_never_reads_as_anything_but_text():
    import yaml

    from bench.sweeps.grid import settings_name

    assert (
        settings_name(["fit", "--config", "x.yaml", "--trainer.logger", "false", "--flag", "--k=v"])
        == "x.yaml trainer.logger=false flag k=v"
    )
    tricky = settings_name(["fit", "--config", "x.yaml", "--evaluation.attacks", '[{"class_path": "X"}]'])
    assert yaml.safe_load(tricky) == tricky and tricky.startswith("x.yaml evaluation.attacks=")


def test_the_slurm_install_hints_name_this_checkout_not_pypi(monkeypatch, capsys):
    """`bench` on PyPI is another project: every hint installs the checkout's own extra."""
    from bench.sweeps import slurm

    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    assert 'pip install -e ".[slurm]"' in capsys.readouterr().out
    monkeypatch.setitem(sys.modules, "submitit", None)  # not installed: its import fails
    with pytest.raises(BenchError, match=r'needs submitit: pip install -e "\.\[slurm\]"'):
        slurm._submitit()

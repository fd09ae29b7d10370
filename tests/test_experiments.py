"""`kadyn-exp`: argument validation, a smoke run of every study, caching and resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from kadyn.experiments import cli, rules, runner
from kadyn.experiments.runner import RESULT, Context
from kadyn.experiments.scales import SMOKE

STUDIES = ("plateau", "alpha", "warmup", "hallucination", "finetune", "patching", "analyses")


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse errors
        code = int(e.code or 0)
    return code, capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Argument validation: non-zero exit, one line naming the option and the allowed range


@pytest.mark.parametrize(
    "argv, names",
    [
        (["plateau", "--individuals", "0,500"], ["--individuals", "[8, 10000000]"]),
        (["plateau", "--individuals", "250,,500"], ["--individuals"]),
        (["plateau", "--individuals", "250,250"], ["--individuals", "repeat"]),
        (["plateau", "--seeds", "-1"], ["--seeds", "[0, "]),
        (["plateau", "--max-steps", "0"], ["--max-steps", "[1, "]),
        (["alpha", "--alphas", "0,-0.2"], ["--alphas", "[0, 5]"]),
        (["alpha", "--alphas", "0,nan"], ["--alphas", "[0, 5]"]),
        (["alpha", "--steps", "abc"], ["--steps", "[1, "]),
        (["warmup", "--epochs-warmup", "0"], ["--epochs-warmup", "[1, 10000]"]),
        (["warmup", "--indiv-warmup", "4"], ["--indiv-warmup", "[8, "]),
        (["hallucination", "--heldout", "3"], ["--heldout", "[8, "]),
        (["finetune", "--replay", "0,-1"], ["--replay", "[0, 64]"]),
        (["finetune", "--lr", "0"], ["--lr", "(0, 1]"]),
        (["patching", "--steps", "-5"], ["--steps", "[1, "]),
        (["all", "--jobs", "0"], ["--jobs", "[1, 256]"]),
        (["all", "--scale", "huge"], ["--scale", "smoke", "cpu", "gpu"]),
        (["bogus"], ["invalid choice"]),
    ],
)
def test_bad_arguments_exit_with_one_line(argv, names, capsys, tmp_path: Path) -> None:
    code, err = run_cli(argv + ["--out", str(tmp_path)] if argv[0] != "bogus" else argv, capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    for name in names:
        assert name in err, err
    assert not (tmp_path / "report.md").exists()


def test_warmup_subset_must_be_smaller_than_n(capsys, tmp_path: Path) -> None:
    argv = ["warmup", "--scale", "smoke", "--individuals", "16", "--indiv-warmup", "16"]
    code, err = run_cli(argv + ["--out", str(tmp_path)], capsys)
    assert code == 2
    assert "--indiv-warmup" in err and "< the smallest N (16)" in err
    assert len(err.strip().splitlines()) == 1


def test_report_without_studies_fails(capsys, tmp_path: Path) -> None:
    code, err = run_cli(["report", "--out", str(tmp_path)], capsys)
    assert code == 2 and "holds no study" in err


# ----------------------------------------------------------------------------------------------
# Smoke run of the whole suite, then caching


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exp")
    # --jobs 1: in-process runs (a spawned worker imports torch again; the pool has its own test)
    argv = ["all", "--scale", "smoke", "--out", str(out), "--no-progress", "--jobs", "1"]
    assert cli.main(argv) == 0
    return out


@pytest.mark.parametrize("study", STUDIES)
def test_smoke_study_writes_section_and_figure(suite: Path, study: str) -> None:
    title = cli.STUDIES[study].title
    assert (suite / study / f"{study}.png").stat().st_size > 1000
    info = json.loads((suite / study / "study.json").read_text())
    assert info["scale"] == "smoke" and info["wall_s"] is not None
    text = (suite / "report.md").read_text()
    assert f"## {title}" in text
    assert f"![{study}]({study}/{study}.png)" in text
    section = text.split(f"## {title}")[1].split("\n## ")[0]
    verdict = section.split("**Verdict:**")[1].splitlines()[0]
    allowed = ("analysis",) if study == "analyses" else rules.OUTCOMES
    assert any(v in verdict for v in allowed)
    data = json.loads((suite / "report.json").read_text())
    assert data["rules_hash"] == rules.rules_hash()
    assert data["studies"][study]["verdict"] in allowed + ("analysis",)
    assert "*Rule:*" in section
    runs = [d for d in (suite / study).iterdir() if d.is_dir()]
    assert runs and all((d / RESULT).exists() for d in runs)


def test_second_invocation_does_not_retrain(suite: Path, monkeypatch, capsys) -> None:
    calls = []
    import kadyn.train

    def no_training(*args, **kwargs):
        calls.append(args)
        raise AssertionError("a cached run was retrained")

    monkeypatch.setattr(kadyn.train, "train", no_training)
    results = sorted(suite.glob(f"*/*/{RESULT}"))
    before = {p: p.stat().st_mtime_ns for p in results}
    for study in STUDIES:
        code, err = run_cli(
            [study, "--scale", "smoke", "--out", str(suite), "--no-progress"], capsys
        )
        assert code == 0, err
    assert calls == []
    assert {p: p.stat().st_mtime_ns for p in results} == before


def test_report_rebuilds_from_cached_runs(suite: Path, capsys) -> None:
    report = suite / "report.md"
    report.unlink()
    code, _ = run_cli(["report", "--out", str(suite)], capsys)
    assert code == 0
    text = report.read_text()
    assert text.count("**Verdict:**") == len(STUDIES)
    assert "| study | verdict |" in text
    assert f"hash `{rules.rules_hash()}`" in text


def test_warmup_shares_the_alpha_runs(suite: Path) -> None:
    warm = json.loads((suite / "warmup" / "study.json").read_text())["plan"]
    assert warm["steps"] == max(SMOKE.alpha.budgets)
    warmup_dirs = {d.name for d in (suite / "warmup").iterdir() if d.is_dir()}
    uniform = [d.name for d in (suite / "alpha").iterdir() if "-a0-" in d.name]
    assert uniform and not any("-a0-" in d for d in warmup_dirs)  # trained once, under alpha


# ----------------------------------------------------------------------------------------------
# Runner: resume and parallel runs


def tiny_context(out: Path, jobs: int = 1) -> Context:
    return Context(
        out=out, preset="tiny", base=dict(SMOKE.base), jobs=jobs, threads=1, progress=False
    )


def test_killed_run_resumes_from_its_checkpoint(tmp_path: Path, monkeypatch) -> None:
    ctx = tiny_context(tmp_path)
    spec = ctx.spec("t", "resume", n=16, seed=0, steps=6, eval_every=2, checkpoint_every=2)
    first = ctx.run([spec], "t")[0]
    assert not first.cached and [r["step"] for r in first.records] == [0, 2, 4, 6]
    # A kill after the last checkpoint but before result.json: the next call resumes.
    (spec.run_dir(tmp_path) / RESULT).unlink()
    import kadyn.train

    seen = []
    real_train = kadyn.train.train

    def spy(config, **kwargs):
        seen.append(config.resume)
        return real_train(config, **kwargs)

    monkeypatch.setattr(kadyn.train, "train", spy)
    again = ctx.run([spec], "t")[0]
    assert seen == [True]
    assert [r["step"] for r in again.records] == [0, 2, 4, 6]  # nothing duplicated
    assert ctx.run([spec], "t")[0].cached


def test_run_killed_before_its_first_checkpoint_restarts(tmp_path: Path) -> None:
    ctx = tiny_context(tmp_path)
    spec = ctx.spec("t", "fresh", n=16, seed=0, steps=2, eval_every=2)
    run_dir = spec.run_dir(tmp_path)
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"step": 0, "trunc')
    result = ctx.run([spec], "t")[0]
    assert [r["step"] for r in result.records] == [0, 2]


def test_key_covers_settings_not_labels(tmp_path: Path) -> None:
    ctx = tiny_context(tmp_path)
    a = ctx.spec("t", "x", n=16, seed=0, eval_every=2, steps=2)
    b = ctx.spec("t", "x", n=16, seed=0, eval_every=2, steps=3)
    assert a.key() != b.key() and a.key().startswith("x-")
    labelled = ctx.spec("t", "x", n=16, seed=0, eval_every=2, steps=2, meta={"label": 1})
    assert a.key() == labelled.key()
    with pytest.raises(ValueError, match="share a key"):
        runner.run_all([a, a], tmp_path)


def test_parallel_runs_in_spawned_processes(tmp_path: Path) -> None:
    ctx = tiny_context(tmp_path, jobs=2)
    specs = [ctx.spec("p", f"r{i}", n=16, seed=i, steps=2, eval_every=2) for i in (0, 1)]
    results = ctx.run(specs, "p")
    assert [len(r.records) for r in results] == [2, 2]
    assert all(not r.cached for r in results)
    failing = ctx.spec("p", "bad", n=16, seed=0, eval_every=2, steps=2, seq_len=8)
    with pytest.raises(runner.RunFailed, match="seq-len"):
        runner.run_all([failing] + specs, tmp_path, jobs=2, threads=1, progress=False)


def test_a_run_held_by_another_process_is_refused(tmp_path: Path) -> None:
    import fcntl

    ctx = tiny_context(tmp_path)
    spec = ctx.spec("t", "locked", n=16, seed=0, eval_every=2, steps=2)
    run_dir = spec.run_dir(tmp_path)
    run_dir.parent.mkdir(parents=True)
    with open(run_dir.parent / f".{run_dir.name}{runner.LOCK}", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(runner.RunFailed, match="another process"):
            ctx.run([spec], "t")
    assert not (run_dir / RESULT).exists()


# ids: a bare "gpu" id would be taken for the `gpu` marker by conftest and skipped without CUDA.
@pytest.mark.parametrize("scale", ["smoke", "cpu", "gpu"], ids=lambda s: f"{s}-scale")
def test_every_scale_resolves_and_plans_its_runs(scale: str, tmp_path: Path) -> None:
    from kadyn.config import make_config
    from kadyn.experiments.scales import get_scale
    from kadyn.experiments.study import resolve

    _, parsers = cli.build_parser()
    scale_plans = get_scale(scale)
    ctx = Context(out=tmp_path, preset=scale_plans.preset, base=dict(scale_plans.base))
    for name, study in cli.STUDIES.items():
        plan = resolve(study, parsers[name].parse_args(["--scale", scale]), scale_plans.plan(name))
        json.dumps(dataclasses.asdict(plan))  # kept in study.json
        specs = study.specs(plan, ctx)
        assert specs, name
        for spec in specs:  # every run is a valid trainer config
            overrides = {k: v for k, v in spec.overrides.items() if k != "init_checkpoint"}
            make_config(spec.preset, **overrides).validate()


@pytest.mark.parametrize("name", [s for s in STUDIES if s != "analyses"])
def test_a_plan_without_seeds_is_refused_naming_the_option(name: str) -> None:
    """A plan built in code can hold an empty list (the command line refuses one)."""
    from kadyn.experiments.scales import SMOKE

    empty = dataclasses.replace(SMOKE.plan(name), seeds=())
    with pytest.raises(ValueError, match="--seeds needs at least one value"):
        cli.STUDIES[name].check(empty)

"""``gradverify campaign``: cases on Dask, streamed results, resume, shrinking, report, real scheduler.

The fast tests run the campaign on an in-process Dask cluster (one worker
thread) with the reference engine against finite differences; the planted
disagreement is a backend whose VJP is 0.1% off, registered in this process.
The real-components test starts ``dask scheduler`` and two ``dask worker``
processes on 127.0.0.1, kills one worker mid-campaign, then kills the
campaign itself and resumes it; every subprocess is killed in a ``finally``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import gradverify.backends as B
from gradverify.backends import ReferenceBackend
from gradverify.campaign.cases import case_seed, draw_spec, make_task
from gradverify.campaign.render import load, summarize, write_reports
from gradverify.campaign.shrink import shrink, size
from gradverify.spec import Activation, Dense, LayerNorm, MSELoss, Network

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_DASK = __import__("importlib.util").util.find_spec("distributed") is not None
needs_dask = pytest.mark.skipif(not HAVE_DASK, reason='dask[distributed] is not installed (pip install ".[campaign]")')


@pytest.fixture(scope="module")
def client():
    """One in-process Dask cluster (a worker thread) for the fast tests."""
    if not HAVE_DASK:
        pytest.skip('dask[distributed] is not installed (pip install ".[campaign]")')
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0")
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


def _cfg(out, **kw):
    from gradverify.campaign.run import CampaignConfig

    base = dict(cases=6, seed=3, backends=("reference",), out=str(out))
    base.update(kw)
    return CampaignConfig(**base)


def _cases(out) -> list[dict]:
    return load(os.path.join(str(out), "results.jsonl"))[1]


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="2")
    return env


# -- cases are fixed by (seed, index) -------------------------------------------------------

def test_cases_are_deterministic_and_differ_per_index():
    assert case_seed(0, 5) == case_seed(0, 5) != case_seed(0, 6) != case_seed(1, 6)
    assert repr(draw_spec("networks", 12345)) == repr(draw_spec("networks", 12345))
    specs = {repr(draw_spec("expressions", case_seed(0, i))) for i in range(6)}
    assert len(specs) >= 5
    cfg = {"seed": 0, "backends": ["reference"], "kinds": ("networks", "expressions")}
    assert [make_task(cfg, i)["kind"] for i in range(4)] == ["networks", "expressions"] * 2


def test_the_command_without_dask_names_the_extra(monkeypatch, capsys, tmp_path):
    import importlib.util

    from gradverify.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "distributed" else real(name, *a))
    assert main(["campaign", "--cases", "2", "--out", str(tmp_path / "o")]) == 2
    assert '.[campaign]' in capsys.readouterr().err


def test_help_and_import_do_not_import_dask_or_frameworks():
    code = ("import sys, gradverify, gradverify.pytest_plugin, gradverify.cli as c, gradverify.campaign\n"
            "c.build_parser().format_help()\n"
            "print(sorted(m for m in ('dask', 'distributed', 'torch', 'jax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=_env(),
                         timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_bad_usage_exits_2(tmp_path, capsys):
    from gradverify.cli import main

    assert main(["campaign", "--kinds", "trees", "--out", str(tmp_path)]) == 2
    assert main(["campaign", "--backends", "nope", "--out", str(tmp_path)]) == 2
    assert main(["campaign", "--target", "no_such_file.py:X", "--input-shape", "2", "--out", str(tmp_path)]) == 2


# -- in-process cluster ---------------------------------------------------------------------

@needs_dask
def test_small_campaign_streams_records_and_renders(client, tmp_path):
    from gradverify.campaign.run import run_campaign

    s = run_campaign(_cfg(tmp_path), client=client, show_progress=False)
    cases = _cases(tmp_path)
    assert [c["index"] for c in cases] == list(range(6))
    assert s["cases"] == 6 and s["disagreements"] == 0 and s["errors"] == 0
    for c in cases:
        assert c["status"] == "pass" and c["pairs"]["fd~reference"]["status"] == "pass"
        assert set(c) >= {"seed", "repr", "spec", "pairs", "worst_ratio", "seconds"}
        assert c["repr"] == repr(draw_spec(c["kind"], c["seed"]))
    for ext in ("json", "md", "html"):
        assert os.path.getsize(tmp_path / f"campaign.{ext}") > 200
    assert "fd~reference" in (tmp_path / "campaign.md").read_text()
    # Re-rendered from the JSON lines alone, the report is the same.
    before = json.loads((tmp_path / "campaign.json").read_text())
    for ext in ("json", "md", "html"):
        os.remove(tmp_path / f"campaign.{ext}")
    assert write_reports(str(tmp_path)) == json.loads(json.dumps(before))
    assert (tmp_path / "campaign.html").read_text().startswith("<!DOCTYPE html>")


@needs_dask
def test_resume_after_an_interrupted_run_gives_the_same_cases(client, tmp_path):
    from gradverify.campaign.run import CampaignError, run_campaign

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run_campaign(_cfg(whole), client=client, show_progress=False)
    run_campaign(_cfg(cut), client=client, show_progress=False)
    # The state a kill leaves: a few cases recorded, the last line torn mid-write.
    lines = (cut / "results.jsonl").read_text().splitlines(keepends=True)
    (cut / "results.jsonl").write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    assert len(_cases(cut)) == 2
    with pytest.raises(CampaignError, match="--resume"):
        run_campaign(_cfg(cut), client=client, show_progress=False)
    with pytest.raises(CampaignError, match="seed"):
        run_campaign(_cfg(cut, seed=4, resume=True), client=client, show_progress=False)
    s = run_campaign(_cfg(cut, resume=True), client=client, show_progress=False)
    got, want = _cases(cut), _cases(whole)
    assert s["runs"] == 2 and s["cases"] == 6
    raw = [json.loads(x) for x in (cut / "results.jsonl").read_text().splitlines() if '"case"' in x[:20]]
    assert sorted(r["index"] for r in raw) == list(range(6))          # each case exactly once
    assert [(c["index"], c["seed"], c["repr"]) for c in got] == [(c["index"], c["seed"], c["repr"]) for c in want]


class _ScaledVJP(ReferenceBackend):
    """A deliberately wrong VJP: every gradient 0.1% too large."""

    name = "buggy_scaled_vjp"

    def _vjp(self, f, primals):
        out, pullback = super()._vjp(f, primals)
        return out, lambda ct: [np.asarray(g) * 1.001 for g in pullback(ct)]


@pytest.fixture
def planted(monkeypatch):
    monkeypatch.setattr(B, "_INSTANCES", {})
    monkeypatch.setitem(B.BACKENDS, _ScaledVJP.name, _ScaledVJP)


def test_the_minimiser_finds_a_small_network():
    net = Network((Dense(4), Activation("tanh"), LayerNorm(), Dense(3)), input_shape=(3, 5), loss=MSELoss())
    # "fails" while the network keeps a Dense layer: the smallest is one Dense(1) on a (1, 1) input.
    small, tries = shrink(net, lambda n: any(isinstance(la, Dense) for la in n.layers))
    assert small == Network((Dense(1, bias=False),), input_shape=(1, 1)), small
    assert size(small) < size(net) and tries < 100


@needs_dask
def test_a_planted_disagreement_is_shrunk_to_a_small_snippet(client, planted, tmp_path, capsys):
    from gradverify.campaign.run import run_campaign

    cfg = _cfg(tmp_path, cases=2, kinds=("networks",), backends=("reference", _ScaledVJP.name))
    s = run_campaign(cfg, client=client, show_progress=False)
    assert s["disagreements"] == 2, s
    for c in _cases(tmp_path):
        sh = c["shrunk"]
        assert sh["pair"] == f"reference~{_ScaledVJP.name}" and sh["quantity"] == "vjp"
        assert sh["size_after"] <= sh["size_before"] and sh["size_after"][0] <= 2, sh
        a, b = float(sh["value_a"]), float(sh["value_b"])
        assert sh["element"] and 1e-4 < abs(b - a) / abs(a) < 1e-2, sh          # the planted 0.1% shows
        assert "spec = Network((" in sh["snippet"]
        capsys.readouterr()
        exec(compile(sh["snippet"], "<snippet>", "exec"), {})        # runnable: it shows the failure again
        assert "agreement FAIL" in capsys.readouterr().out
    md = (tmp_path / "campaign.md").read_text()
    assert "shrunk in" in md and "```python" in md


_LAYERS = '''
import numpy as np

class Scale:
    def __init__(self, bug=0.0):
        self.params = {"w": np.array([1.5, -0.5, 2.0])}
        self.bug = bug

    def forward(self, x):
        self.x = x
        return x * self.params["w"]

    def backward(self, dy):
        self.grads = {"w": (dy * self.x).sum(axis=0) * (1 + self.bug)}
        return dy * self.params["w"]

def good():
    return Scale()

def bad():
    return Scale(bug=1e-2)
'''


@needs_dask
def test_a_target_campaign_checks_the_users_layer(client, tmp_path, monkeypatch):
    from gradverify.campaign.run import run_campaign

    (tmp_path / "mylayers.py").write_text(_LAYERS)
    monkeypatch.chdir(tmp_path)
    target = str(tmp_path / "mylayers.py") + ":good"
    s = run_campaign(_cfg(tmp_path / "good", cases=4, target=target, input_shape=(2, 3)), client=client,
                     show_progress=False)
    cases = _cases(tmp_path / "good")
    assert s["passed"] == 4 and len({c["seed"] for c in cases}) == 4
    s = run_campaign(_cfg(tmp_path / "bad", cases=3, target=target[:-4] + "bad", input_shape=(2, 3)),
                     client=client, show_progress=False)
    bad = _cases(tmp_path / "bad")
    assert s["disagreements"] == 3 and all(c["pairs"]["fd~target"]["status"] == "fail" for c in bad)
    assert bad[0]["snippet"].startswith("gradverify check ") and "--seed" in bad[0]["snippet"]


# -- real scheduler and workers --------------------------------------------------------------

def _wait(pred, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _lines(path) -> int:
    try:
        with open(path) as fh:
            return sum(1 for line in fh if '"type": "case"' in line)
    except FileNotFoundError:
        return 0


@needs_dask
def test_real_scheduler_worker_killed_mid_run_and_campaign_killed_then_resumed(tmp_path):
    sched_file = tmp_path / "scheduler.json"
    procs: list[subprocess.Popen] = []
    env = _env()
    logs = open(tmp_path / "dask.log", "w")
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1",
                                       "--port", "0", "--no-dashboard", "--scheduler-file", str(sched_file)],
                                      cwd=ROOT, env=env, stdout=logs, stderr=subprocess.STDOUT))
        _wait(lambda: sched_file.exists() and sched_file.stat().st_size > 0, 60, "the scheduler")
        address = json.loads(sched_file.read_text())["address"]
        workers = [subprocess.Popen([sys.executable, "-m", "dask", "worker", address, "--nthreads", "1",
                                     "--no-nanny", "--no-dashboard", "--host", "127.0.0.1", "--name", f"w{i}"],
                                    cwd=ROOT, env=env, stdout=logs, stderr=subprocess.STDOUT) for i in range(2)]
        procs += workers
        from distributed import Client

        with Client(address, timeout="30s") as c:
            c.wait_for_workers(2, timeout=60)

        def campaign(out, *extra):
            return subprocess.Popen([sys.executable, "-m", "gradverify.cli", "campaign", "--scheduler", address,
                                     "--cases", "16", "--seed", "7", "--backends", "reference", "--out", str(out),
                                     "--quiet", *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)

        # 1. A worker killed mid-run: its case is retried on the other one; every case recorded once.
        a = tmp_path / "a"
        run = campaign(a)
        procs.append(run)
        _wait(lambda: _lines(a / "results.jsonl") >= 3, 90, "the first results")
        workers[1].send_signal(signal.SIGKILL)
        assert _lines(a / "results.jsonl") < 16                          # killed mid-run
        out, _ = run.communicate(timeout=120)
        assert run.returncode == 0, out
        raw = [json.loads(x) for x in (a / "results.jsonl").read_text().splitlines() if '"case"' in x[:20]]
        assert sorted(r["index"] for r in raw) == list(range(16)), out
        assert all(r["status"] == "pass" for r in raw)

        # 2. The campaign itself killed, then resumed: the same set of cases as the uninterrupted run.
        b = tmp_path / "b"
        run = campaign(b)
        procs.append(run)
        _wait(lambda: _lines(b / "results.jsonl") >= 3, 90, "the first results of the second run")
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
        assert _lines(b / "results.jsonl") < 16
        run = campaign(b, "--resume")
        procs.append(run)
        out, _ = run.communicate(timeout=120)
        assert run.returncode == 0, out
        raw = [json.loads(x) for x in (b / "results.jsonl").read_text().splitlines() if '"case"' in x[:20]]
        assert sorted(r["index"] for r in raw) == list(range(16)), out
        assert {(c["index"], c["repr"]) for c in _cases(b)} == {(c["index"], c["repr"]) for c in _cases(a)}
        assert summarize(*load(str(b / "results.jsonl")))["runs"] == 2
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        logs.close()


_KILLER = '''
import os
import numpy as np

class Killer:
    params = {}

    def forward(self, x):
        os._exit(3)          # the worker process dies mid-case, every time

    def backward(self, dy):
        return dy
'''


@needs_dask
def test_a_case_that_keeps_killing_workers_is_recorded_as_a_crash(tmp_path):
    from gradverify.campaign.run import run_campaign

    (tmp_path / "killer.py").write_text(_KILLER)
    cfg = _cfg(tmp_path / "out", cases=1, workers=1, allowed_failures=0,
               target=str(tmp_path / "killer.py") + ":Killer", input_shape=(2,))
    start = time.time()
    s = run_campaign(cfg, show_progress=False)          # a LocalCluster of one worker process
    assert time.time() - start < 90
    (rec,) = _cases(tmp_path / "out")
    assert s["crashes"] == 1 and rec["status"] == "crash" and "KilledWorker" in rec["error"]
    assert rec["snippet"].startswith("gradverify check ") and "killer.py:Killer" in rec["snippet"]

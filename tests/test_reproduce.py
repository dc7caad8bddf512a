"""Every ``aevb reproduce`` command runs end to end at a tiny budget and writes its CSV and PNG.

The fast tests feed the commands a small synthetic data set of the right shape; the slow
one runs figure2 on the real Frey Face files when ``AEVB_DATA_DIR`` holds them.
"""

import csv
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from aevb.cli import cli
from aevb.data import Dataset, Split
from aevb.reproduce import figure2, figure3, iwae_table


def _fake(name, shape, n_train=300, n_test=60, binary=True, labels=False):
    g = torch.Generator().manual_seed(0)
    proto = torch.rand(4, *shape, generator=g)

    def split(n):
        y = torch.arange(n) % 4
        x = proto[y] * 0.8 + 0.1
        x = torch.bernoulli(x, generator=g) if binary else (x + 0.05 * torch.rand(n, *shape, generator=g)).clamp(0, 1)
        return Split(x, y if labels else None)

    return Dataset(name, split(n_train), split(n_test), split(n_test), binary=binary, num_classes=4 if labels else None)


@pytest.fixture
def fake_data(monkeypatch):
    def load_paper_data(dataset, data_dir=None):
        return _fake(dataset, (1, 28, 28) if dataset == "mnist" else (1, 28, 20), binary=dataset == "mnist")

    monkeypatch.setattr(figure2, "load_paper_data", load_paper_data)
    monkeypatch.setattr(figure3, "load_paper_data", load_paper_data)
    monkeypatch.setattr(iwae_table, "load_dataset", lambda cfg: _fake("mnist", (1, 28, 28), binary=False, labels=True))


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _invoke(args):
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output + repr(r.exception)
    return r.output


def test_figure2_end_to_end(fake_data, tmp_path):
    _invoke(["reproduce", "figure2", "--dataset", "frey_face", "--budget", "1000", "--nz", "2,3", "--lr", "0.02",
             "--points", "3", "--n-eval", "50", "--out", str(tmp_path)])
    rows = _rows(tmp_path / "figure2_frey_face.csv")
    assert {(r["nz"], r["algorithm"]) for r in rows} == {("2", "aevb"), ("2", "wake-sleep"), ("3", "aevb"),
                                                         ("3", "wake-sleep")}
    assert max(int(r["samples"]) for r in rows) == 1000
    assert (tmp_path / "figure2_frey_face.png").stat().st_size > 1000


def test_figure2_a_stopped_run_keeps_its_curve_so_far(fake_data, tmp_path):
    calls = []

    def stop_at_the_third_point(message):
        calls.append(message)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed in the middle of the first model

    with pytest.raises(KeyboardInterrupt):
        figure2.run("frey_face", tmp_path, budget=2000, nzs=(2,), lr=0.02, n_eval=20, points=6,
                    log=stop_at_the_third_point)
    rows = _rows(tmp_path / "figure2_frey_face.csv")
    assert len(rows) == 3 and {r["algorithm"] for r in rows} == {"aevb"}
    assert [int(r["samples"]) for r in rows] == sorted(int(r["samples"]) for r in rows)
    assert not list(tmp_path.glob("*.tmp"))


def test_figure2_chooses_paper_step_size(fake_data, tmp_path):
    _invoke(["reproduce", "figure2", "--dataset", "mnist", "--budget", "600", "--nz", "3", "--algorithms", "aevb",
             "--points", "2", "--n-eval", "20", "--out", str(tmp_path)])
    rows = _rows(tmp_path / "figure2_mnist.csv")
    assert float(rows[0]["lr"]) in (0.01, 0.02, 0.1)
    assert (tmp_path / "figure2_mnist.png").exists()


def test_figure3_end_to_end(fake_data, tmp_path):
    _invoke(["reproduce", "figure3", "--budget", "400", "--train-sizes", "100,300", "--k", "10", "--n-eval", "10",
             "--points", "2", "--out", str(tmp_path)])
    rows = _rows(tmp_path / "figure3.csv")
    assert {(r["n_train"], r["method"]) for r in rows} == {("100", "aevb"), ("100", "wake-sleep"), ("100", "mcem"),
                                                           ("300", "aevb"), ("300", "wake-sleep")}
    assert all(float(r["test_log_px"]) < 0 for r in rows)
    assert (tmp_path / "figure3.png").stat().st_size > 1000
    _invoke(["reproduce", "figure3", "--budget", "200", "--train-sizes", "300", "--no-mcem", "--k", "10",
             "--n-eval", "10", "--points", "1", "--out", str(tmp_path / "no-mcem")])
    assert {r["method"] for r in _rows(tmp_path / "no-mcem" / "figure3.csv")} == {"aevb", "wake-sleep"}


def test_mcem_hmc_adapts_and_learns():
    torch.manual_seed(0)
    data = _fake("mnist", (1, 28, 28), n_train=200)
    model = figure3.build(figure3.paper_model_config("mnist", 3, hidden=20), 0)
    x = data.train.x
    before = figure3.prior_log_likelihood(model, x[:50], 200).mean().item()
    figure3.train_mcem(model, x, steps=30, batch_size=50, record_at=[], on_record=None, lr=0.05)
    after = figure3.prior_log_likelihood(model, x[:50], 200).mean().item()
    assert after > before + 10


def test_iwae_table_end_to_end(fake_data, tmp_path):
    out = _invoke(["reproduce", "iwae-table", "--budget", "700", "--k", "20", "--n-test", "30", "--out", str(tmp_path)])
    row = _rows(tmp_path / "iwae_table.csv")[0]
    assert int(row["samples"]) == 700 and int(row["k"]) == 20 and float(row["reference_log_likelihood"]) == -86.76
    assert float(row["test_log_likelihood"]) < 0
    assert (tmp_path / "iwae_table.png").exists() and "86.76" in out


def test_iwae_schedule_matches_paper():
    stages = iwae_table.schedule_stages(60000)
    assert len(stages) == 8 and sum(s for s, _ in stages) == 3280 * 60000
    assert stages[0][1] == pytest.approx(1e-3) and stages[7][1] == pytest.approx(1e-4)


@pytest.mark.slow
@pytest.mark.skipif(not (os.environ.get("AEVB_DATA_DIR") and
                         (Path(os.environ.get("AEVB_DATA_DIR", ".")) / "frey_face").exists()),
                    reason="needs the Frey Face files in AEVB_DATA_DIR")
def test_figure2_real_frey_face(tmp_path):
    _invoke(["reproduce", "figure2", "--dataset", "frey_face", "--budget", "2000", "--nz", "2", "--lr", "0.02",
             "--points", "2", "--n-eval", "100", "--out", str(tmp_path)])
    rows = _rows(tmp_path / "figure2_frey_face.csv")
    aevb = [r for r in rows if r["algorithm"] == "aevb"]
    first, last = aevb[0], aevb[-1]
    assert float(last["train_bound"]) > float(first["train_bound"])


def test_merge_curves_later_file_wins_and_sorts_numerically(tmp_path):
    from aevb.reproduce.common import merge_curves, write_csv

    a = write_csv(tmp_path / "a.csv", [{"nz": 10, "algorithm": "aevb", "samples": 1, "b": 1.0},
                                       {"nz": 2, "algorithm": "aevb", "samples": 1, "b": 2.0}])
    b = write_csv(tmp_path / "b.csv", [{"nz": 10, "algorithm": "aevb", "samples": 1, "b": 3.0},
                                       {"nz": 10, "algorithm": "aevb", "samples": 2, "b": 4.0}])
    rows = merge_curves([a, b], ("nz", "algorithm"))
    assert [(r["nz"], r["samples"], r["b"]) for r in rows] == [("2", "1", "2.0"), ("10", "1", "3.0"), ("10", "2", "4.0")]

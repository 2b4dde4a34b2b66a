"""bench/scale.py (GPU speed at CIFAR-10 scale) in its CPU smoke form: every method's passes are counted."""

import importlib
import re
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_scale_bench_smoke_counts_every_method_s_passes(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(BENCH))  # as `python bench/scale.py` runs it: bench/ first on the path
    try:
        assert importlib.import_module("scale").main(["--smoke"]) == 0
    finally:
        for name in ("scale", "train"):
            sys.modules.pop(name, None)
    out = capsys.readouterr().out
    assert "CIFAR-shaped random tensors 3x32x32" in out
    rows = {match[0]: match[1:] for match in re.findall(r"^(\S+)\s+[\d.]+\s+1\s+\d+\s+-\s+([\d.]+)\s+([\d.]+)\s+"
                                                         r"(\S+)", out, re.MULTILINE)}
    # forwards/backwards per image, attack+train: E-AT one 10-step attack; RAMP two sharing their start, then two
    # train-mode forwards; MAX three; the reference style two separate attacks and three train-mode forwards (of
    # which two or three take a backward: f(x_r) only does when some point is kept for the pairing loss)
    reference = rows.pop("ramp-reference")
    assert rows == {"e-at": ("12.0", "11.0", "11+1/10+1"), "max": ("32.0", "29.0", "31+1/28+1"),
                    "ramp": ("23.0", "21.0", "21+2/19+2")}
    assert reference[0] == "25.0" and reference[2] in ("22+3/20+2", "22+3/20+3")
    assert re.search(r"^ramp / e-at s/epoch: [\d.]+x", out, re.MULTILINE)
    assert re.search(r"^ramp throughput / ramp-reference throughput: [\d.]+x", out, re.MULTILINE)
    assert re.search(r"^ramptool --union-only\s+[\d.]+\s+[\d.]+\s+[\d.]+", out, re.MULTILINE)
    assert list(tmp_path.iterdir()) == []

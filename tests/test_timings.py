"""The times the README states are the ones `python benchmarks/timings.py --write docs/timings.json` measured
(issue 18: every stated time is what a user gets), rendered into one block that a test keeps in step."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "docs" / "timings.json"


def _timings():
    spec = importlib.util.spec_from_file_location("timings", ROOT / "benchmarks" / "timings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_block_is_the_record():
    tm = _timings()
    assert tm.render_readme(RECORD) == (ROOT / "README.md").read_text(encoding="utf-8"), \
        "README's timings block differs from docs/timings.json: run python benchmarks/timings.py --render docs/timings.json"


def test_record_times_every_command_the_readme_names():
    tm = _timings()
    rows = json.loads(RECORD.read_text())["rows"]
    assert [r["name"] for r in rows] == list(tm.LABELS)
    for r in rows:
        assert r["seconds"] > 0 and r["cpus"] >= 1 and r["load_before"] >= 0 and re.fullmatch(r"\d{4}-\d\d-\d\d",
                                                                                               r["measured"])
    setup = rows[0]
    assert 0 < setup["cuda_libraries_gb"] < setup["venv_gb"]


def test_no_other_time_is_stated_for_the_timed_commands():
    """Outside the block, no line of the README or docs/ that names a timed command also states a time in seconds
    or minutes."""
    commands = ("make demo", "make test", "make setup", "analysis.hspace --quick", "analysis.naturalness --quick",
                "analysis.hprobe --quick")
    time_pattern = re.compile(r"\b\d+(\.\d+)? ?(s|sec|seconds|min|minutes)\b")
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        name, text = path.name, path.read_text(encoding="utf-8")
        text = re.sub(r"<!-- timings:start -->.*<!-- timings:end -->", "", text, flags=re.S)
        for line in text.splitlines():
            if any(c in line for c in commands):
                assert not time_pattern.search(line), f"{name} states a time outside the timings block: {line}"


def test_write_record_merges_rows_by_name_in_readme_order(tmp_path):
    tm = _timings()
    path = tmp_path / "t.json"
    row = {"seconds": 1.0, "load_before": 0.1, "cpus": 2}
    tm.write_record(path, [dict(row, name="test"), dict(row, name="demo (empty cache)")])
    tm.write_record(path, [dict(row, name="setup (fresh venv)", venv_gb=6.6, cuda_libraries_gb=3.2),
                           dict(row, name="test", seconds=2.0)])
    doc = json.loads(path.read_text())
    assert [(r["name"], r["seconds"]) for r in doc["rows"]] == [("setup (fresh venv)", 1.0),
                                                                 ("demo (empty cache)", 1.0), ("test", 2.0)]
    assert not list(tmp_path.glob("*.tmp"))
    block = tm.render_block(doc)
    assert "run it first) | 1 s; 6.6 GB, 3.2 GB of it CUDA libraries | 0.10, - |" in block
    assert "| `make test` (`python -m pytest`) | 2 s | 0.10, - |" in block


def test_bad_paths_are_one_line_before_anything_is_measured(tmp_path, monkeypatch, capsys):
    import pytest

    tm = _timings()
    monkeypatch.setattr(tm, "run_commands", lambda *a, **k: pytest.fail("measured before checking --write"))
    monkeypatch.setattr(tm, "README", tmp_path / "README.md")     # never the real one
    (tmp_path / "bad.json").write_text("not json")
    cases = [(["--render", str(tmp_path / "missing.json")], "not a record of --write (FileNotFoundError"),
             (["--render", str(tmp_path / "bad.json")], "not a record of --write (JSONDecodeError"),
             (["--write", str(tmp_path / "no" / "x.json"), "--only", "demo"], "not a writable file path"),
             (["--write", str(tmp_path / "bad.json"), "--only", "demo"], "exists and is not a record of --write")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            tm.main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and "Traceback" not in err, (argv, err)

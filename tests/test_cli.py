"""The command line: lazy subcommands, a clear line for a missing one, errors not masked."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stream_app import cli
from tests.support.paths import REPO


def test_all_contract_commands_are_registered():
    assert set(cli.COMMANDS) == {"worker", "topics", "replay", "generate", "demo", "rules", "queue", "report"}
    assert cli.COMMANDS["worker"][0] == "stream_app.streaming.worker"


def test_missing_module_prints_one_line_and_returns_2(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "demo", ("stream_app.no_such_module", "demo"))
    assert cli.main(["demo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "`demo` is not available yet: stream_app.no_such_module missing"


def test_missing_subpackage_counts_as_missing(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "worker", ("stream_app.no_pkg.worker", "w"))
    assert cli.main(["worker"]) == 2
    assert "stream_app.no_pkg.worker missing" in capsys.readouterr().err


def test_import_error_inside_existing_module_is_not_masked(monkeypatch, tmp_path):
    (tmp_path / "cc_broken_cmd.py").write_text("import cc_dependency_that_is_absent\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.COMMANDS, "generate", ("cc_broken_cmd", "g"))
    with pytest.raises(ModuleNotFoundError) as info:
        cli.main(["generate"])
    assert info.value.name == "cc_dependency_that_is_absent"


def test_command_module_gets_settings_flags(monkeypatch, tmp_path, capsys):
    (tmp_path / "cc_fake_cmd.py").write_text(
        "from stream_app.config import settings_from_args\n"
        "def add_arguments(parser):\n"
        "    parser.add_argument('--n', type=int, default=1)\n"
        "def run(args):\n"
        "    s = settings_from_args(args, environ={})\n"
        "    print(s.broker, s.topic('x'), args.n)\n"
        "    return 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.COMMANDS, "replay", ("cc_fake_cmd", "r"))
    argv = ["replay", "--n", "5", "--broker", "kafka://b:1", "--topic-prefix", "p."]
    assert cli.main(argv) == 3
    assert capsys.readouterr().out.strip() == "kafka://b:1 p.x 5"


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2


def test_python_dash_m_and_help():
    out = subprocess.run(
        [sys.executable, "-m", "stream_app", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0
    for command in cli.COMMANDS:
        assert command in out.stdout


def test_global_option_value_as_separate_word_still_finds_the_command(tmp_path):
    """`chargecap --log-level INFO replay FILE` (value as its own word) must load replay's
    arguments, not stop at INFO."""
    from stream_app.cli import _find_command

    assert _find_command(["--log-level", "INFO", "replay", "x.ndjson"]) == "replay"
    assert _find_command(["--log-level=INFO", "worker", "--broker", "kafka://x:1"]) == "worker"
    assert _find_command(["INFO"]) is None

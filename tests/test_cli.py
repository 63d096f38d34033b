"""Command-line habits shared by every verb: --quiet/--debug after the verb, one --device choice and
default, flags a verb does not use are not offered, logs without a terminal are plain lines, the old
`sample.cfg` key refused with the keys that exist (guidance among them)."""
import subprocess
import sys

import pytest

from elt.apps.cli import build_parser, main
from elt.choices import DEVICES
from conftest import TINY

VERBS_WITH_DEVICE = ("train", "sample", "evaluate", "schedules", "serve", "demo", "bench", "extract", "fid", "fvd")


def _subparsers(parser):
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


def test_every_verb_that_runs_a_network_has_the_same_device_option():
    verbs = _subparsers(build_parser())
    for name in VERBS_WITH_DEVICE:
        opt = next(a for a in verbs[name]._actions if "--device" in a.option_strings)
        assert tuple(opt.choices) == DEVICES and opt.default == "auto", name


def test_quiet_and_debug_after_the_verb():
    parser = build_parser()
    args = parser.parse_args(["presets", "--quiet", "--debug"])
    assert args.quiet and args.debug
    args = parser.parse_args(["--quiet", "presets"])
    assert args.quiet and not args.debug
    args = parser.parse_args(["presets"])
    assert not args.quiet and not args.debug


def test_extract_offers_only_the_flags_it_uses():
    verbs = _subparsers(build_parser())
    flags = {s for a in verbs["extract"]._actions for s in a.option_strings}
    assert not flags & {"--steps", "--objective", "--resume"}


def test_extract_rejects_a_training_flag():
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["extract", "--config", "digits-maskgit", "--out", "x", "--steps", "3"])
    assert e.value.code == 2


def test_evaluate_help_says_where_it_writes(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "RUN/anytime.json" in text and "RUN/anytime.png" in text


def test_training_log_without_a_terminal_has_no_control_codes(tmp_path):
    sets = sum((["--set", s] for s in TINY), [])
    proc = subprocess.run([sys.executable, "-m", "elt", "train", "--config", "digits-maskgit", "--out",
                           str(tmp_path / "run"), "--steps", "4", *sets], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "training done" in proc.stderr  # the log is there, as plain lines
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr


def test_old_config_key_cfg_is_refused_naming_guidance(tmp_path):
    from elt.config import ConfigError, apply_overrides
    from elt.presets import get_preset, load_config

    old = tmp_path / "config.yaml"
    old.write_text("framework: masked\nsample:\n  cfg: 1.0\n")
    with pytest.raises(ConfigError, match=r"unknown config key sample\.cfg .*guidance"):
        load_config(str(old))
    with pytest.raises(ConfigError, match=r"unknown config key sample\.cfg .*guidance"):
        apply_overrides(get_preset("digits-maskgit"), ["sample.cfg=1"])

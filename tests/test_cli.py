"""The console scripts: every `[project.scripts]` entry resolves, `--help` lists the flags, `--config` takes a
packaged name as well as a path (with `--config.x=y` overrides), the CLIs are quiet by default — and, slow, a
non-editable install into a fresh venv trains the demo config from an unrelated directory."""

import ast
import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import sysconfig
import tomllib

import pytest
from absl import flags, logging

from beltcrack_jax.cli.config_flag import define_config_flag
from beltcrack_jax.cli.logs import quiet_absl_logging
from beltcrack_jax.configs import load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_script_resolves(script):
    # Read, not imported: two absl CLIs in one process would define --config twice.
    module, _, func = SCRIPTS[script].partition(":")
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, module
    tree = ast.parse(pathlib.Path(spec.origin).read_text())
    assert func in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, SCRIPTS[script]


@pytest.mark.parametrize("argv", [["train.py"], ["evaluate.py"], ["-m", "beltcrack_jax.convert"]])
def test_help_lists_config_flag(argv):
    out = subprocess.run([sys.executable, *argv, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode in (0, 1), out.stderr     # absl's --help exits 1, argparse's 0
    assert "--config" in out.stdout and "demo" in out.stdout


def _parse(argv, monkeypatch):
    fv = flags.FlagValues()
    holder = define_config_flag("config", "test", flag_values=fv)
    monkeypatch.setattr(sys, "argv", argv)   # ml_collections finds the --config.x overrides in sys.argv
    fv(argv)
    return holder.value


def test_config_flag_takes_name_or_path(monkeypatch):
    by_name = _parse(["prog", "--config", "demo", "--config.train.num_train_steps=2"], monkeypatch)
    by_path = _parse(["prog", f"--config={ROOT / 'configs' / 'demo.py'}", "--config.train.num_train_steps=2"],
                     monkeypatch)
    assert by_name.train.num_train_steps == by_path.train.num_train_steps == 2
    assert by_name.to_dict() == by_path.to_dict()
    assert by_name.data.name == "beltcrack/synthetic_demo"
    assert _parse(["prog", "--config=scaling:256"], monkeypatch).train.batch_size == 256


def test_load_config_name_or_path():
    assert load_config("tiny").to_dict() == load_config(str(ROOT / "configs" / "tiny.py")).to_dict()
    assert load_config("scaling:128").train.batch_size == 128


def test_quiet_by_default():
    before = logging.get_verbosity()
    try:
        logging.set_verbosity(logging.INFO)
        quiet_absl_logging()
        assert logging.get_verbosity() == logging.WARNING
    finally:
        logging.set_verbosity(before)


def _fresh_install(tmp_path) -> pathlib.Path:
    """A non-editable install of this tree into a fresh venv that borrows the dependencies of the current one."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = pathlib.Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    # A plain path line: this venv's packages become importable, but their own .pth files (the editable
    # install's finder) are not run, so `beltcrack_jax` can only come from the new install.
    (site / "base_env.pth").write_text(sysconfig.get_path("purelib") + "\n")
    src = tmp_path / "src"          # a copy: building in place would leave build/ and *.egg-info in the repo
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (src / name).write_bytes((ROOT / name).read_bytes())
    subprocess.run(["cp", "-r", str(ROOT / "beltcrack_jax"), str(src)], check=True)
    # --ignore-installed: never touch the current venv's (editable) beltcrack-jax; build isolation fetches the
    # build backend (setuptools>=68 with bdist_wheel), the runtime dependencies are borrowed.
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps",
                    "--ignore-installed", str(src)], check=True, timeout=600)
    return venv


@pytest.mark.slow
def test_installed_console_script_trains_demo(tmp_path):
    venv = _fresh_install(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # As a user's shell: no PYTHONPATH, and not the 4 simulated CPU devices of conftest.py.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import beltcrack_jax; print(beltcrack_jax.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(venv)), where
    run = subprocess.run(
        [str(venv / "bin" / "beltcrack-train"), "--config", "demo", "--workdir", "W",
         "--config.data.name=beltcrack/synthetic_tiny", "--config.data.data_dir=tfds",
         "--config.data.image_size=64", "--config.train.batch_size=2", "--config.eval.batch_size=2",
         "--config.train.num_train_steps=2", "--config.train.eval_every_epochs=0",
         "--config.train.log_every_steps=1"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-4000:]
    assert (elsewhere / "W" / "checkpoints").is_dir(), sorted(p.name for p in (elsewhere / "W").iterdir())
    info = [line for line in run.stderr.splitlines() if re.match(r"I\d{4} ", line)]   # absl: I<mmdd> <time> ...
    assert not info, f"absl INFO lines, not quiet: {info[:3]}"

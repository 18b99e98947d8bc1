"""A non-editable install: build the wheel, install it into a fresh virtual environment and run
the packaged presets from an unrelated folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None,
        timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with backlm installed from its wheel; its dependencies come from this
    interpreter's site-packages (a .pth line), so nothing is downloaded."""
    tmp = tmp_path_factory.mktemp("install")
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                 "-q", "-w", str(tmp / "dist"), str(REPO)], cwd=tmp)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp / "dist").glob("backlm-*.whl"))
    venv = tmp / "venv"
    made = run([sys.executable, "-m", "venv", str(venv)], cwd=tmp)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
               cwd=tmp).stdout.strip()
    # plain path lines: the deps are found, this environment's editable backlm is not
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "_backlm_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    done = run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                str(wheel)], cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


def tiny_pydocs(home: Path) -> None:
    """A small stand-in for the embedded corpus (train, val and ood splits, tokenizer), so the
    test does not spend half a minute building the real one."""
    from backlm.data.shards import write_shard
    from backlm.data.vocab import tokenizer_dir
    from backlm.tokenizer import Tokenizer
    from tests.conftest import make_docs

    folder = home / "data" / "pydocs"
    docs = make_docs(900, seed=1)
    long = [" ".join(docs[i:i + 6]) for i in range(0, 300, 6)]  # 5CAT wants 40+ token docs
    write_shard(folder / "train_00000.parquet", docs[:600])
    write_shard(folder / "val_00000.parquet", long[:25] + docs[600:700])
    write_shard(folder / "ood_00000.parquet", long[25:] + docs[700:800])
    Tokenizer.train(docs, vocab_size=300).save(tokenizer_dir(folder))


def test_wheel_runs_the_presets_from_an_unrelated_folder(installed, tmp_path):
    tiny_pydocs(tmp_path / "home")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, BACKLM_HOME=str(tmp_path / "home"), WANDB_MODE="disabled",
               PYTHONPATH="")
    env.pop("BACKLM_EXPERIMENTS", None)
    backlm = str(installed / "bin" / "backlm")
    where = run([str(installed / "bin" / "python"), "-c", "import backlm; print(backlm.__file__)"],
                cwd=elsewhere, env=env)
    assert str(installed) in where.stdout, where  # the wheel's copy, not the source tree

    train = run([backlm, "train", "--config", "cpu-tiny", "--max-steps", "2"], cwd=elsewhere,
                env=env)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]
    (exp,) = (elsewhere / "experiments").iterdir()
    meta = json.loads((exp / "metadata.json").read_text())
    assert meta["status"] == "finished" and meta["results"]["step"] == 2
    config = (exp / "config.yaml").read_text()
    assert "seq_len: 256" in config and "depth: 4" in config  # the packaged cpu-tiny preset

    fivecat = run([backlm, "5cat", exp.name, "--max-samples", "6"], cwd=elsewhere, env=env)
    assert fivecat.returncode in (0, 1), fivecat.stdout[-2000:] + fivecat.stderr[-2000:]
    assert "5CAT" in fivecat.stdout and "Traceback" not in fivecat.stderr
    results = list((exp / "evaluations" / "base" / "fivecat").glob("step_*.json"))
    assert len(results) == 1
    # the thresholds came from the packaged fivecat.yaml
    spec = json.loads(results[0].read_text())["spec"]
    assert spec.startswith(str(installed)) and spec.endswith("fivecat.yaml")

    # the chat page ships as package data; chat and serve run from the wheel
    chat = run([backlm, "chat", "--model", exp.name, "-p", "hello", "-t", "0",
                "--max-tokens", "4"], cwd=elsewhere, env=env)
    assert chat.returncode == 0, chat.stdout[-2000:] + chat.stderr[-2000:]
    serve = subprocess.Popen([backlm, "serve", "--model", exp.name, "--port", "0"],
                             cwd=elsewhere, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        line = serve.stdout.readline()
        url = line.split(" at ")[1].split()[0]
        import urllib.request

        page = urllib.request.urlopen(url + "/", timeout=30).read().decode()
        assert "<html" in page.lower() and "/v1/chat/completions" in page
    finally:
        serve.send_signal(2)
        assert serve.wait(timeout=30) == 0


def test_the_wheel_ships_the_remote_code_exports_copy(installed, tmp_path):
    """backlm/hub/remote/*.py are package data: ``backlm export`` copies them into every folder."""
    code = ("from importlib import resources; r = resources.files('backlm.hub.remote'); "
            "print(all(r.joinpath(n).is_file() for n in "
            "('configuration_backlm.py', 'modeling_backlm.py')), r)")
    env = dict(os.environ, PYTHONPATH="")
    done = run([str(installed / "bin" / "python"), "-c", code], cwd=tmp_path, env=env)
    assert done.stdout.startswith("True") and str(installed) in done.stdout, done

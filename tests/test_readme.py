"""README's examples run as written (at small sizes), so they cannot drift: every ```python block runs in a
fresh process, every ```bash block line by line in one shell, in a scratch folder that sees the repository's
examples/. The only changes are the size substitutions below, each of which must still match, and the
blocks that are not run say why (install and set-up commands)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```", README, flags=re.S | re.M)

# Smaller runs of the same commands (the README's sizes take minutes on 2 cores).
SMALL = {
    "python -m bertfast pretrain\n": "python -m bertfast pretrain --steps 30 --batch-size 8\n",
    "--out checkpoints/sentiment\n": "--out checkpoints/sentiment --epochs 1\n",
}
# Blocks not run here, and why: they install or set up (the environment the test runs in is theirs).
NOT_RUN = {
    "pip install": "installs packages (the test environment is what they install)",
    "bash scripts/main.sh": "creates .venv and builds; its two commands (info, compare) run in test_quick_start",
}


def not_run(code):
    return next((why for marker, why in NOT_RUN.items() if marker in code), None)


def test_the_readme_has_the_blocks_this_test_expects():
    kinds = [(lang, not_run(code) is None) for lang, code in BLOCKS]
    assert kinds.count(("python", True)) == 3 and kinds.count(("bash", True)) == 2, kinds
    assert sum(not run for _, run in kinds) == 3, kinds  # the install line, the install options, the quick start
    for old in SMALL:
        assert sum(code.count(old) for _, code in BLOCKS) == 1, old


@pytest.fixture
def scratch(tmp_path):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    return tmp_path


def env():
    return {**os.environ, "TRITON_INTERPRET": "0", "BERTFAST_BACKEND": "auto", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1"}


def small(code):
    for old, new in SMALL.items():
        code = code.replace(old, new)
    return code


@pytest.mark.parametrize("index", [i for i, (lang, code) in enumerate(BLOCKS) if lang == "python" and not not_run(code)])
def test_python_example_runs(index, scratch):
    code = BLOCKS[index][1]
    probe = {0: "\nprint(tuple(embeddings.shape))", 1: "\nprint(tuple(out.last_hidden_state.shape))"}
    position = [i for i, (lang, c) in enumerate(BLOCKS) if lang == "python"].index(index)
    out = subprocess.run([sys.executable, "-c", code + probe.get(position, "")], capture_output=True, text=True,
                         cwd=scratch, env=env(), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    expected = {0: "(2, 384)", 1: "(2, 5, 384)"}  # [CLS] a longer sentence [SEP]
    if position in expected:
        assert out.stdout.strip().splitlines()[-1] == expected[position], out.stdout[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("index", [i for i, (lang, code) in enumerate(BLOCKS) if lang == "bash" and not not_run(code)])
def test_shell_example_runs(index, scratch):
    script = "set -euo pipefail\n" + small(BLOCKS[index][1])
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=scratch, env=env(), timeout=900)
    assert out.returncode == 0, (script, out.stdout[-2000:], out.stderr[-3000:])
    if "predict" in script:
        assert "[MASK] 1:" in out.stdout and "->" in out.stdout, out.stdout
        assert (scratch / "checkpoints" / "pretrain" / "model.safetensors").is_file()
    if "finetune" in script:
        assert "epoch 1: accuracy" in out.stdout, out.stdout[-2000:]
        assert (scratch / "checkpoints" / "sentiment" / "model.safetensors").is_file()


def test_quick_start(scratch):
    """What scripts/main.sh runs once its environment exists, and what the README says it prints and passes on."""
    info = subprocess.run([sys.executable, "-m", "bertfast", "info"], capture_output=True, text=True, env=env())
    assert info.returncode == 0, info.stderr
    out = subprocess.run([sys.executable, "-m", "bertfast", "compare", "--device", "cpu", "--repeats", "1"],
                         capture_output=True, text=True, env=env(), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    diff = float(re.search(r"last_hidden_state ([0-9.e+-]+)", out.stdout).group(1))
    assert diff <= 1e-4 and "ms/forward" in out.stdout, out.stdout
    assert "bash scripts/main.sh" in README and "bash scripts/test.sh" in README
    assert "python -m bertfast info" in (ROOT / "scripts" / "main.sh").read_text()
    assert "python -m bertfast compare" in (ROOT / "scripts" / "main.sh").read_text()

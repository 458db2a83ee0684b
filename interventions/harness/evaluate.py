"""``interventions eval``: score one intervention (a spec file, or a plugin's protocols or combine
functions) against silent, skyline and the three controls, with one command."""

from __future__ import annotations

from pathlib import Path

from ..combine import COMBINES
from ..errors import PluginError
from .experiment import build_experiment
from .plugins import load_plugin
from .protocols import PROTOCOLS
from .runner import RESULTS_FILE, report, run_experiment

CONTROLS = ("random", "mismatched", "zero")


def _registered_by(registry, module) -> list[str]:
    where = getattr(module, "__file__", None) or module.__name__
    return [name for name in registry.names() if registry.origin(name).split(":")[0] == where]


def channel_entries(target: str, k, j) -> tuple[list[dict], list[str]]:
    """Protocol entries for what ``target`` names, and the plugins to load."""
    if Path(target).suffix in (".yaml", ".yml", ".json"):
        return [{"kind": "intervention", "spec": target}], []
    module = load_plugin(target)
    entries = [{"kind": name} for name in _registered_by(PROTOCOLS, module)]
    entries += [{"kind": "ac", "combine": name, "k": k, "j": j} for name in _registered_by(COMBINES, module)]
    if not entries:
        raise PluginError(f"{target} registered no protocol and no combine function; decorate a function with "
                          "@interventions.protocol(name) or @interventions.register_combine(name)")
    return entries, [target]


def with_controls(entries: list[dict]) -> list[dict]:
    out = []
    for entry in entries:
        out.append(entry)
        if "control" in PROTOCOLS.get(entry["kind"]).model_fields:
            out += [{**entry, "control": control} for control in CONTROLS]
    return out


def evaluate(target: str, task: str, pair: tuple[str, str], n: int, out: Path | None = None,
             backend: str = "torch", k=8, j=8, seed: int = 0, max_new_tokens: int = 12, progress: bool = True):
    entries, plugins = channel_entries(target, k, j)
    name = f"eval_{Path(target).stem}"
    data = {"name": name, "description": f"{target} against silent, skyline and controls",
            "seed": seed, "backend": backend, "max_new_tokens": max_new_tokens, "baseline": "silent",
            "pairs": [{"A": pair[0], "B": pair[1]}], "tasks": [{"name": task, "n": n}], "plugins": plugins,
            "protocols": [{"kind": "silent"}, {"kind": "skyline"}, *with_controls(entries)]}
    experiment = build_experiment(data, f"eval {target}")
    out = Path(out) if out else Path("out") / name
    rows = run_experiment(experiment, out, progress=progress)
    files = report(experiment, out)
    return experiment, rows, out, files


def eval_cli(args) -> None:
    pair = tuple(args.pair.split(","))
    if len(pair) != 2:
        raise PluginError(f"--pair takes two model names separated by a comma (A,B), got {args.pair!r}")
    _, rows, out, _ = evaluate(args.target, args.task, pair, args.n, args.out, args.backend, args.k, args.j,
                               args.seed, args.max_new_tokens)
    print(f"\n{len(rows)} rows in {out / RESULTS_FILE}; report in {out / 'summary.md'}\n")
    print((out / "summary.md").read_text().split("## Plots")[0])

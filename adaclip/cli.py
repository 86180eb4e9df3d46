"""The ``adaclip`` program: one subcommand per job, each imported only when it runs.

Keeping imports lazy lets ``adaclip --help`` start fast and keeps the model package free
of Ray, Qdrant and the web stack until a subcommand needs them.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module, function, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "init-checkpoint": (
        "adaclip.commands",
        "init_checkpoint_main",
        "write an untrained AdaCLIP checkpoint folder",
    ),
    "index": ("pipelines.index", "main", "bulk-index videos (s3://, folder, manifest) into Qdrant"),
    "ls": ("pipelines.ls", "main", "list the videos of an index (uri, etag, duration, model)"),
    "demo": ("demo.run", "main", "synthesise, train, index and search end to end (a few minutes)"),
    "synth": ("adaclip.commands", "synth_main", "generate a synthetic captioned video set"),
    "prepare": ("adaclip.prepare", "prepare_main", "build split files from original annotations"),
    "train": ("train.run", "main", "train AdaCLIP with Ray Train (DDP, elastic, fault tolerant)"),
    "eval": ("train.inference", "main", "retrieval metrics of a checkpoint on a split"),
    "serve": ("serve.cli", "serve_main", "run the HTTP search API (Ray Serve) over an index"),
    "search": ("serve.cli", "search_main", "query a running search server (or the index, --local)"),
}


def usage() -> str:
    lines = ["usage: adaclip <command> [options]", "", "commands:"]
    width = max(len(name) for name in SUBCOMMANDS)
    lines += [f"  {name.ljust(width)}  {desc}" for name, (_, _, desc) in SUBCOMMANDS.items()]
    lines += ["", "Run `adaclip <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a subcommand's ``main(argv)``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"adaclip: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, func_name, _ = SUBCOMMANDS[name]
    func = getattr(importlib.import_module(module_name), func_name)
    result = func(rest)
    return int(result or 0)


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()

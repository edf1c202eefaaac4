"""The `ccr` command: `ccr run`, `ccr sweep`, `ccr analyze`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ccr.config import ConfigError, load_config
from ccr.data import DataError

log = logging.getLogger("ccr")


def setup_logging(out: Path | None, verbose: bool = False) -> None:
    root = logging.getLogger("ccr")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               for h in root.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(fmt)
        root.addHandler(h)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(out / "log.txt")
        fh.setFormatter(fmt)
        root.addHandler(fh)


def cmd_run(args: argparse.Namespace) -> int:
    from ccr.report import render
    from ccr.study import Study

    cfg = load_config(args.config, args.set)
    out = Path(args.out)
    study = Study(cfg, out, progress=not args.quiet)  # all input checks happen here
    setup_logging(out, args.verbose)
    if cfg.train.workers > 1 or cfg.train.use_ray:
        from ccr.distributed.train import run_distributed

        res = run_distributed(cfg, out, progress=not args.quiet, study=study)
    else:
        res = study.run()
    print(render(res))
    print(f"\nresults: {out / 'results.json'}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from ccr.distributed.tune import run_sweep

    setup_logging(None, args.verbose)
    return run_sweep(args.sweep, overrides=args.set, out=args.out, resume=args.resume)


def cmd_analyze(args: argparse.Namespace) -> int:
    from analysis.report import analyze

    setup_logging(None, args.verbose)
    out = analyze(args.path, args.out)
    print(f"analysis written to {out}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ccr", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run one study (embedded default without a config)")
    r.add_argument("config", nargs="?", help="YAML config (default: the embedded default)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (dotted path, value parsed as YAML); repeatable")
    r.add_argument("--out", default="runs/default", help="output folder (resumes if it holds a study)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("-v", "--verbose", action="store_true")
    r.set_defaults(fn=cmd_run)
    s = sub.add_parser("sweep", help="run a Ray Tune sweep of studies")
    s.add_argument("sweep", help="sweep YAML (see sweeps/)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base-config key for every trial")
    s.add_argument("--out", default=None, help="storage path (default runs/sweeps)")
    s.add_argument("--resume", action="store_true", help="resume an interrupted sweep")
    s.add_argument("-v", "--verbose", action="store_true")
    s.set_defaults(fn=cmd_sweep)
    a = sub.add_parser("analyze", help="aggregate results into tables, plots and a report")
    a.add_argument("path", help="a sweep's storage folder or any folder of ccr run outputs")
    a.add_argument("--out", default=None, help="output folder (default PATH/analysis)")
    a.add_argument("-v", "--verbose", action="store_true")
    a.set_defaults(fn=cmd_analyze)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, DataError) as e:
        print(f"ccr: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

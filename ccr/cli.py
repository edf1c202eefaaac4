"""The `ccr` command: `ccr run`, `ccr sweep`, `ccr analyze`, `ccr data`."""

from __future__ import annotations

import argparse
import logging
import sys

# only the error classes at start-up (ccr.errors imports nothing): `ccr --help` and a config error
# must not wait for torch; each command imports what it uses
from ccr.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DivergedError,
    LockedError,
    StorageError,
    StorageWriteError,
)
from ccr.io.redact import SafeFormatter, safe

log = logging.getLogger("ccr")


class _Stderr(logging.StreamHandler):
    """A handler on whatever `sys.stderr` is at the time of each message (tests and notebooks swap it)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """ccr's messages to stderr (a study adds its log.txt, see `Study.logging_to_store`, which keeps every
    INFO line whatever the console shows); `quiet`: only warnings and errors on the console."""
    root = logging.getLogger("ccr")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    fmt = SafeFormatter()
    console = [h for h in root.handlers
               if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    if not console:
        console = [_Stderr()]
        console[0].setFormatter(fmt)
        root.addHandler(console[0])
    for h in console:
        h.setLevel(logging.WARNING if quiet else logging.NOTSET)


def cmd_run(args: argparse.Namespace) -> int:
    from ccr.study.configure import load_config

    cfg = load_config(args.config, args.set)  # a config error is reported before torch is imported

    from ccr.measure.tables import render
    from ccr.notebook import run_config

    setup_logging(args.verbose, args.quiet)
    study, res = run_config(cfg, args.out, progress=not args.quiet)
    print(render(res))
    print(f"\nresults: {study.store.display('results.json')}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    """The dataset card; exit 0 when the dataset is valid (a problem raises: exit 2 with one line)."""
    import json

    from ccr.study.configure import load_config

    cfg = load_config(args.config, args.set)
    if args.clean:
        from ccr.io.staging import clean

        setup_logging(args.verbose)
        removed, freed = clean(cfg.data.cache_dir)
        print(f"removed {removed} staged copies and leftovers no process reads ({freed / 1e6:.1f} MB)")
        return 0
    from ccr.data.card import card, render

    setup_logging(args.verbose, quiet=not args.verbose)
    from ccr.models import pixels_for

    c = card(cfg, pixels_for(cfg))
    print(json.dumps(c, indent=1) if args.json else render(c))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from ccr.distributed.tune import run_sweep

    setup_logging(args.verbose)
    return run_sweep(args.sweep, overrides=args.set, out=args.out, resume=args.resume, quiet=args.quiet)


def cmd_analyze(args: argparse.Namespace) -> int:
    from ccr.analysis.html_report import analyze
    from ccr.io.storage import Storage

    setup_logging(args.verbose)
    scale = _scale(args)
    source = Storage(args.path)
    try:
        if not source.exists():
            raise StorageError(f"nothing to analyse: {source.display()} does not exist")
        out = analyze(args.path, args.out, scale=scale)
    except OSError as e:  # wrong credentials, an endpoint that does not answer: one line, not pyarrow's traceback
        raise StorageError(f"cannot read {source.display()}: {str(e).splitlines()[0][:300]}") from e
    dest = Storage(args.out) if args.out else source.child("analysis")
    if dest.is_file("summary.md"):  # the tables a user came for: recall, forgetting, cost, θ0 and the effects
        print(console_summary(dest.read_text("summary.md")))
    print(f"analysis written to {out} (report.html: the same tables with plots and explanations)")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Measure the study's model on this device; write the record `ccr analyze --calibration` reads."""
    import json

    from ccr.study.configure import load_config

    cfg = load_config(args.config, args.set)
    if args.seconds <= 0 or args.index_vectors < 1 or args.rounds < 1:
        raise ConfigError(f"--seconds must be above 0, --index-vectors and --rounds at least 1, got "
                          f"{args.seconds:g}, {args.index_vectors} and {args.rounds}")
    from ccr.io.redact import redact
    from ccr.io.storage import Storage
    from ccr.study.calibrate import calibrate

    setup_logging(args.verbose)
    where = Storage(args.out)  # a file or an object (a URI's options, after '?', stay with it)
    rec = calibrate(cfg, args.seconds, args.index_vectors, args.rounds)
    where.write_text("", json.dumps(rec, indent=1))
    e, i = rec["embedding"], rec["index"]
    print(f"{rec['device_name']} ({rec['device']}, {rec['threads']} threads), eval batch {rec['eval_batch_size']}:")
    for m in ("images", "captions"):
        c = e[m]["call_per_second"]
        rounds = e[m]["rounds"]
        spread = (f"; the median of {len(rounds)} rounds, {min(rounds):,.0f} to {max(rounds):,.0f}/s"
                  if len(rounds) > 1 else "")
        print(f"  {m}: {e[m]['per_second']:,.1f}/s over {e[m]['seconds']:.1f} s ({e[m]['calls']} calls of "
              f"{e[m]['call_items']:,} items: {c['min']:,.0f} to {c['max']:,.0f}/s{spread})")
    print(f"  index ({i['kind']}, {i['dim']} dims): training {i['train_seconds']:.2f} s on {i['train_vectors']:,} "
          f"vectors, adding {i['add_seconds_per_million']:.2f} s per million vectors")
    print(f"calibration written to {redact(where.display())}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ccr.io.redact import redact
    from ccr.study.export import export

    setup_logging(args.verbose)
    out = export(args.run, args.task, args.dir)
    print(f"the model after task {args.task} of {redact(args.run)} written to {out} (ccr_export.json says how to "
          "load it)")
    return 0


def _scale(args: argparse.Namespace):
    """--gallery-size and the options that go with it, checked before anything is read."""
    from ccr.analysis.economics import Scale

    given = [o for o in ("device_hour_price", "images_per_second", "captions_per_second", "calibration")
             if getattr(args, o)]
    if args.gallery_size is None:
        if given:
            raise ConfigError(f"--{given[0].replace('_', '-')} needs --gallery-size N (the gallery to cost)")
        return None
    # Scale checks the values themselves: the same checks for ccr.analyze() from Python
    from ccr.analysis.economics import read_calibrations

    return Scale(args.gallery_size, args.device_hour_price, args.images_per_second, args.captions_per_second,
                 read_calibrations(args.calibration))


def console_summary(md: str) -> str:
    """summary.md for a terminal: the run counts, then every table at the smallest K (and the paired effects),
    each under its title; the paragraphs that explain them stay in report.html."""
    out: list[str] = []
    keep, first_k = True, None
    for line in md.splitlines():
        if line.startswith("#"):
            title = line.lstrip("# ")
            k = title.rsplit("K=", 1)[-1].split(" ")[0] if "K=" in title else None
            first_k = first_k or k
            keep = k is None or k == first_k
            if keep:
                out += ["", title]
        elif keep and (line.startswith("|") or (line[:1].isdigit() and len(out) <= 2)):
            out.append(line)
    return "\n".join(out).strip()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ccr", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run one study (embedded default without a config)")
    r.add_argument("config", nargs="?", help="YAML config (default: the embedded default)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (dotted path, value parsed as YAML); repeatable")
    r.add_argument("--out", default="runs/default",
                   help="output folder or storage URI, e.g. s3://bucket/prefix (default runs/default; resumes if "
                        "it holds the same study)")
    r.add_argument("--quiet", action="store_true", help="log only warnings and errors to the console")
    r.add_argument("-v", "--verbose", action="store_true")
    r.set_defaults(fn=cmd_run)
    s = sub.add_parser("sweep", help="run a Ray Tune sweep of studies")
    s.add_argument("sweep", help="sweep YAML (see sweeps/)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base-config key for every trial")
    s.add_argument("--out", default=None, help="storage: a folder shared by all nodes, or a URI such as "
                   "s3://bucket/prefix?endpoint_override=HOST:PORT (default runs/sweeps/NAME)")
    s.add_argument("--resume", action="store_true", help="resume an interrupted sweep")
    s.add_argument("--quiet", action="store_true", help="no progress lines (for scripts)")
    s.add_argument("-v", "--verbose", action="store_true")
    s.set_defaults(fn=cmd_sweep)
    d = sub.add_parser("data", help="check a config's dataset and print its card (exit 0: valid, 2: the first "
                       "problem)")
    d.add_argument("config", nargs="?", help="YAML config (default: the embedded default)")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    d.add_argument("--json", action="store_true", help="the card as JSON")
    d.add_argument("--clean", action="store_true", help="remove this node's staged copies of data and weights that "
                   "no running process reads, and what killed stagings left (the card is not printed)")
    d.add_argument("-v", "--verbose", action="store_true")
    d.set_defaults(fn=cmd_data)
    a = sub.add_parser("analyze", help="aggregate results into tables, plots and a report")
    a.add_argument("path", help="a sweep's storage (folder or URI) or any folder of ccr run outputs")
    a.add_argument("--out", default=None, help="output folder or URI (default PATH/analysis)")
    a.add_argument("--gallery-size", type=int, default=None, metavar="N",
                   help="also write what each policy costs for a gallery of N images (cost_at_scale.csv/.md), "
                        "at the embedding throughput the runs measured on their device")
    a.add_argument("--device-hour-price", type=float, default=None, metavar="USD",
                   help="with --gallery-size: the price of a device-hour, for the cost in money")
    a.add_argument("--images-per-second", type=float, default=None,
                   help="with --gallery-size: your own image embedding throughput (e.g. from bench/), as well")
    a.add_argument("--captions-per-second", type=float, default=None,
                   help="with --gallery-size: your own caption embedding throughput, as well")
    a.add_argument("--calibration", action="append", default=[], metavar="FILE",
                   help="with --gallery-size: a record `ccr calibrate` wrote (file or URI; repeatable, one per model "
                        "and device): the runs of that model and device are priced at its throughput and index rates")
    a.add_argument("-v", "--verbose", action="store_true")
    a.set_defaults(fn=cmd_analyze)
    c = sub.add_parser("calibrate", help="measure the study's model on this device (embedding throughput, index "
                       "rates), for `ccr analyze --calibration`")
    c.add_argument("config", nargs="?", help="YAML config (default: the embedded default)")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (dotted path, value parsed as YAML); repeatable")
    c.add_argument("--out", default="calibration.json", help="file or URI to write (default calibration.json)")
    c.add_argument("--seconds", type=float, default=10.0, help="seconds of embedding per modality after a warm-up "
                   "(default 10)")
    c.add_argument("--index-vectors", type=int, default=200_000, metavar="N",
                   help="random unit vectors added to the configured index to time it (default 200000)")
    c.add_argument("--rounds", type=int, default=1, metavar="R",
                   help="measure images and captions in turn R times; each rate is the median (default 1)")
    c.add_argument("-v", "--verbose", action="store_true")
    c.set_defaults(fn=cmd_calibrate)
    e = sub.add_parser("export", help="write the model after one task of a run as a folder transformers loads "
                       "(LoRA merged)")
    e.add_argument("run", help="the run's folder or URI (its --out)")
    e.add_argument("--task", type=int, required=True, metavar="N", help="after which task, counted from 1")
    e.add_argument("dir", help="the folder to write")
    e.add_argument("-v", "--verbose", action="store_true")
    e.set_defaults(fn=cmd_export)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except (CheckpointError, DivergedError, LockedError, StorageWriteError) as e:  # runtime, not usage
        print(f"ccr: error: {safe(e)}", file=sys.stderr)
        return 1
    except (ConfigError, DataError, StorageError) as e:
        print(f"ccr: error: {safe(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

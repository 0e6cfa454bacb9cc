"""The ``fedsilo`` command line: run federations, make demo data."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedsilo.errors import FedsiloError

EXIT_USER_ERROR = 2
EXIT_BUSY = 75  # EX_TEMPFAIL: another run of the federation holds its lock


def _final_table(summary: dict[str, Any], history: list[Any], elapsed: float) -> str:
    lines = [
        f"run {summary['run_id']}  ({elapsed:.1f}s)",
        f"checkpoints {summary['run_path']}",
    ]
    if history:
        names = sorted(history[-1].metrics)
        header = f"{'round':>5}  " + "  ".join(f"{n:>9}" for n in names)
        lines.append(header)
        for result in history:
            cells = "  ".join(
                f"{result.metrics.get(n, float('nan')):>9.4f}" for n in names
            )
            lines.append(f"{result.round:>5}  {cells}")
    return "\n".join(lines)


def _spec_from_args(args: argparse.Namespace) -> Any:
    """Load ``args.spec`` with ``--rounds`` and ``--checkpoints`` applied, validated."""
    from fedsilo.spec import load_spec, with_changes

    return with_changes(
        load_spec(args.spec),
        args.spec,
        rounds=args.rounds,
        checkpoints=args.checkpoints,
    )


def cmd_run(args: argparse.Namespace) -> int:
    """Train the federation a spec describes (or continue one of its runs)."""
    spec = _spec_from_args(args)
    run_id = args.run_id
    if run_id is not None:  # before any silo is read or cluster started
        from tasks.store.checkpoints import check_run_id

        check_run_id(run_id)
    if args.resume:
        from fedsilo.resume import check_same_federation, latest_run, locate_run

        if run_id is None:
            run_id = latest_run(spec.checkpoints, spec.name, spec.storage_options)
            if run_id is None:
                raise FedsiloError(
                    f"{spec.checkpoints}: federation {spec.name!r} has no run with "
                    "a complete round to resume"
                )
            print(f"resuming run {run_id}", flush=True)
        elif not _has_rounds(spec, run_id):  # a cron line's first night
            print(f"run {run_id} has no complete round yet: starting it", flush=True)
            return _train(spec, run_id, True, args.spec)
        store = locate_run(spec.checkpoints, run_id, spec.name, spec.storage_options)
        check_same_federation(spec, store)
        if _already_done(spec, store, args.rounds):
            return 0
    return _train(spec, run_id, args.resume, args.spec)


def _has_rounds(spec: Any, run_id: str) -> bool:
    """Return whether ``run_id`` of the spec's federation has a complete round."""
    from tasks.store.checkpoints import federations_of_run

    found = federations_of_run(
        spec.checkpoints, run_id, storage_options=spec.storage_options
    )
    return spec.name in found


def _already_done(spec: Any, store: Any, asked: int | None) -> bool:
    """Say so when a run to resume has its rounds; refuse --rounds below them."""
    latest = store.latest_complete_round() or 0
    if asked is not None and asked < latest:
        raise FedsiloError(
            f"--rounds {asked}: run {store.run_id} already has {latest} complete rounds"
        )
    if latest >= spec.rounds:
        print(f"run {store.run_id} already has its {latest} rounds; nothing to do")
        return True
    return False


def cmd_resume(args: argparse.Namespace) -> int:
    """Continue a run from its last complete checkpoint, with its recorded spec."""
    from fedsilo.resume import check_same_federation, locate_run, recorded_spec
    from fedsilo.spec import load_spec, with_changes

    given = None if args.spec is None else load_spec(args.spec)
    root = args.checkpoints or (given.checkpoints if given else "./checkpoints")
    options = given.storage_options if given else {}
    store = locate_run(root, args.run_id, args.federation, options)
    base = given if given is not None else recorded_spec(store)
    spec = with_changes(base, "fedsilo resume", checkpoints=root, rounds=args.rounds)
    if given is not None:
        check_same_federation(spec, store)
    if _already_done(spec, store, args.rounds):
        return 0
    latest = store.latest_complete_round()
    print(f"resuming run {args.run_id} of {spec.name} after round {latest}", flush=True)
    return _train(spec, args.run_id, True, args.spec)


def _preflight(spec: Any, spec_path: str | None) -> None:
    """Check the silos' sources the coordinator may read, before anything starts."""
    from fedsilo.preflight import preflight

    preflight(spec, spec_path)


def _train(
    spec: Any, run_id: str | None, resume: bool, spec_path: str | None = None
) -> int:
    """Run the training flow under the federation's lock, printing progress."""
    _preflight(spec, spec_path)
    from fedsilo.prefect_env import warm_up

    warmed = warm_up(embedded_cluster=spec.cluster.address is None)
    from fedsilo.locking import federation_lock
    from fedsilo.prefect_env import quiet_dask_logs, unwatched_heartbeats_off
    from fedsilo.progress import RoundProgress
    from flows.training import federated_training
    from tasks import run_state
    from tasks.store.checkpoints import new_run_id

    quiet_dask_logs()
    history: list[Any] = []
    progress = RoundProgress()  # a bar on a terminal, a line a round otherwise

    def listener(result: Any, state: Any) -> None:
        history.append(result)
        progress(result, state)

    run_id = run_id or new_run_id()
    started = time.perf_counter()
    with federation_lock(spec.name, spec.checkpoints, run_id):
        warmed()
        try:
            with unwatched_heartbeats_off(), run_state.listening(listener):
                summary = federated_training(spec, run_id=run_id, resume=resume)
        finally:
            progress.close()
    print(_final_table(summary, history, time.perf_counter() - started))
    if summary.get("stopped"):
        print(summary["stopped"])
    if summary.get("tracking"):
        print(summary["tracking"])
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Train federated, personalized, local-only and centralized models; report."""
    import shlex

    spec = _spec_from_args(args)
    if args.personalize_epochs < 1:
        raise FedsiloError("--personalize-epochs must be at least 1")
    _preflight(spec, args.spec)
    from fedsilo.locking import federation_lock
    from fedsilo.prefect_env import quiet_dask_logs, unwatched_heartbeats_off
    from flows.compare import federated_comparison
    from tasks.reports import comparison
    from tasks.reports.compare_report import (
        metric_table,
        report_data,
        text_table,
    )
    from tasks.reports.compare_report import traffic_table as traffic
    from tasks.store.checkpoints import new_run_id

    quiet_dask_logs()
    compare_id = new_run_id()
    words = ["fedsilo", "compare", args.spec]
    if args.rounds is not None:
        words += ["--rounds", str(args.rounds)]
    if args.checkpoints is not None:
        words += ["--checkpoints", args.checkpoints]
    if args.personalize_epochs != 1:
        words += ["--personalize-epochs", str(args.personalize_epochs)]
    if args.no_centralized:
        words.append("--no-centralized")
    started = time.perf_counter()
    with (
        federation_lock(spec.name, spec.checkpoints, compare_id),
        unwatched_heartbeats_off(),
    ):
        result = federated_comparison(
            spec,
            compare_id=compare_id,
            personalize_epochs=args.personalize_epochs,
            centralized=not args.no_centralized,
            command=shlex.join(words),
        )
    frame, notes = comparison.read_comparison(result["directory"], spec.storage_options)
    data = report_data(frame, notes)
    print(f"comparison {compare_id}  ({time.perf_counter() - started:.1f}s)")
    print(f"final test {notes['metric']} per silo:")
    print(text_table(*metric_table(data, notes["metric"])))
    print("bytes over the run:")
    print(text_table(*traffic(data)))
    for variant, why in sorted(result["skipped"].items()):
        print(f"{variant}: not run: {why}")
    print(f"table  {result['comparison']}")
    print(f"report {result['report']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a run's model as a skops, ONNX or XGBoost JSON file."""
    from fedsilo.resume import locate_run
    from tasks.export import export_model

    store = locate_run(args.checkpoints, args.run_id, args.federation)
    done = export_model(store, args.format, path=args.out, round_number=args.round)
    print(
        f"{done.path}  ({done.format}; round {done.round} of run {store.run_id}, "
        f"{done.kind}, {len(done.features)} input columns)"
    )
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Describe the silos' rows with federated statistics (no row moves)."""
    from fedsilo.spec import load_spec

    spec = load_spec(args.spec)
    if args.min_count is not None and args.min_count < 1:
        raise FedsiloError(f"--min-count {args.min_count}: give at least 1")
    if args.bins is not None and not 2 <= args.bins <= 1000:
        raise FedsiloError(f"--bins {args.bins}: give 2 to 1000")
    _preflight(spec, args.spec)
    from fedsilo.prefect_env import quiet_dask_logs, unwatched_heartbeats_off
    from flows.stats import federated_stats
    from tasks.statistics.report import text_report

    quiet_dask_logs()
    with unwatched_heartbeats_off():
        result = federated_stats(
            spec, min_count=args.min_count, bins=args.bins, store=args.out
        )
    print(text_report(result.stats, spec.target))
    print(f"\ntables {result.path}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    """List the runs of a checkpoint store: rounds done, last metrics, status."""
    from fedsilo.catalog import format_runs, store_runs

    entries = store_runs(args.checkpoints, args.federation)
    if not entries:
        where = f" of federation {args.federation!r}" if args.federation else ""
        print(f"{args.checkpoints}: no run{where} with a complete round")
        return 0
    print(format_runs(entries))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Bring a checkpoint store written by an earlier fedsilo to today's layout."""
    from tasks.store.checkpoints import migrate_store

    changed = migrate_store(args.checkpoints)
    for run, written in changed.items():
        print(f"{run}: wrote {len(written)} file(s)")
    print(f"{args.checkpoints}: {len(changed)} run(s) migrated; the rest were current")
    return 0


def cmd_datasets_split(args: argparse.Namespace) -> int:
    """Split a bundled data set over silos and write files plus a spec."""
    from datasets.writer import write_federation

    try:
        spec_path = write_federation(
            args.name,
            n_silos=args.silos,
            partition=args.partition,
            out=Path(args.out),
            seed=args.seed,
            alpha=args.alpha,
            rounds=args.rounds,
            n_samples=args.n_samples,
            test_fraction=args.test_fraction,
            model_kind=args.model,
            overwrite=args.overwrite,
        )
    except (ValueError, FileExistsError) as error:  # the writer's argument checks
        raise FedsiloError(str(error)) from None
    print(f"wrote {spec_path}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Serve one silo: a Dask worker named after it, holding its data config."""
    import asyncio
    import re

    from connectors.silo_config import load_silo_config
    from fedsilo.silo import serve_silo_worker
    from fedsilo.spec import NAME_PATTERN

    if re.match(NAME_PATTERN, args.silo) is None:
        raise FedsiloError(
            f"--silo {args.silo!r}: use letters, digits, '.', '_' and '-' only"
        )
    config = load_silo_config(args.data)
    # Load the silo-side code (pandas, scikit-learn) before joining, so that the
    # federation's first task is not slowed down by imports.
    import tasks.silo.data  # noqa: F401

    if not args.verbose:
        from fedsilo.prefect_env import quiet_dask_logs

        quiet_dask_logs()

    def ready(address: str) -> None:
        print(
            f"fedsilo worker: silo {args.silo!r} serving at {address}, "
            f"scheduler {args.scheduler}",
            flush=True,
        )

    import dask

    # The worker builds its distributed.Security from Dask's config.
    with dask.config.set(_worker_tls_config(args)):
        why = asyncio.run(
            serve_silo_worker(
                args.scheduler,
                args.silo,
                config,
                host=args.host,
                port=args.port,
                timeout=args.timeout,
                insecure_plain_tcp=args.insecure_plain_tcp,
                on_ready=ready,
            )
        )
    if why == "closed":
        print(
            f"fedsilo worker: silo {args.silo!r}: the scheduler closed the connection",
            file=sys.stderr,
        )
        return 1
    return 0


def _worker_tls_config(args: argparse.Namespace) -> dict[str, Any]:
    """Return the Dask config of a worker's mutual TLS; empty for plain TCP."""
    files = (args.tls_ca_file, args.tls_cert, args.tls_key)
    tls_address = args.scheduler.startswith("tls://")
    if not any(files):
        if tls_address:
            raise FedsiloError(
                f"--scheduler {args.scheduler}: a tls:// scheduler needs "
                "--tls-ca-file, --tls-cert and --tls-key"
            )
        return {}
    if not all(files):
        raise FedsiloError("give all of --tls-ca-file, --tls-cert and --tls-key")
    if not tls_address:
        raise FedsiloError(
            f"--scheduler {args.scheduler}: with TLS files, give the scheduler's "
            "tls:// address"
        )
    from fedsilo.certs import tls_security

    tls_security(*files)  # checks the files now, so a bad one is one clear line
    ca_file, cert, key = (str(Path(f).resolve()) for f in files)
    return {
        "distributed.comm.require-encryption": True,
        "distributed.comm.tls.ca-file": ca_file,
        "distributed.comm.tls.worker.cert": cert,
        "distributed.comm.tls.worker.key": key,
    }


def cmd_certs_init(args: argparse.Namespace) -> int:
    """Create the federation's CA: DIR/ca.pem and DIR/ca-key.pem."""
    from fedsilo.certs import init_ca

    made = init_ca(args.dir, days=args.days, force=args.force)
    print(
        f"wrote {made.cert} (CA certificate: give it to every silo and the "
        f"coordinator) and {made.key} (CA key, mode 0600: keep it with the "
        f"operator); valid until {made.not_after:%Y-%m-%d}"
    )
    return 0


def cmd_certs_issue(args: argparse.Namespace) -> int:
    """Sign a certificate for a silo worker, the coordinator or the scheduler."""
    from fedsilo.certs import DEFAULT_HOSTS, SILO, Role, default_role, issue_cert

    role = default_role(args.name)
    if args.role is not None:
        role = Role(SILO, args.name) if args.role == SILO else Role(args.role)
    made = issue_cert(
        args.dir,
        args.name,
        days=args.days,
        hosts=args.host or DEFAULT_HOSTS,
        role=role,
        force=args.force,
    )
    names = ", ".join([*made.dns_names, *made.ip_addresses])
    print(
        f"wrote {made.cert} and {made.key} (mode 0600) for {args.name!r}: role "
        f"{role}; names {names}; valid until {made.not_after:%Y-%m-%d}"
    )
    return 0


def _spec_arguments(parser: argparse.ArgumentParser, *, overrides: bool) -> None:
    """Add the spec's path and, with ``overrides``, what ``_spec_from_args`` applies."""
    parser.add_argument("spec", help="path of the federation spec (YAML)")
    if overrides:
        parser.add_argument("--rounds", type=int, help="override the spec's rounds")
        parser.add_argument(
            "--checkpoints", help="override the spec's checkpoint store"
        )


def _flow_command(
    parser: argparse.ArgumentParser, handler: Callable[[argparse.Namespace], int]
) -> None:
    """Give a subcommand that runs a flow its ``--verbose`` and its handler."""
    parser.add_argument(
        "--verbose", action="store_true", help="show Prefect's and Dask's logs"
    )
    parser.set_defaults(handler=handler)


def _version() -> str:
    """Return fedsilo's version and those of the libraries a run depends on."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from fedsilo import __version__

    parts = []
    for name in ("prefect", "distributed", "scikit-learn", "xgboost"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} missing")
    libraries = ", ".join(parts)
    return f"fedsilo {__version__} ({libraries}; Python {platform.python_version()})"


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="fedsilo", description=__doc__)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train a federation described by a YAML spec")
    _spec_arguments(run, overrides=True)
    run.add_argument("--run-id", help="name the run (default: time + random)")
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue --run-id (default: the federation's newest run) from its "
        "last complete round; a --run-id with no complete round yet starts",
    )
    _flow_command(run, cmd_run)

    stats = sub.add_parser(
        "stats",
        help="federated statistics of the silos' rows: summaries, histograms, "
        "labels, heterogeneity (docs/statistics.md)",
    )
    _spec_arguments(stats, overrides=False)
    stats.add_argument(
        "--min-count",
        type=int,
        help="withhold cells counting fewer rows (default: spec statistics.min_count)",
    )
    stats.add_argument(
        "--bins", type=int, help="histogram bins (default: spec statistics.bins)"
    )
    stats.add_argument(
        "--out", help="store root for the tables (default: the spec's checkpoints)"
    )
    _flow_command(stats, cmd_stats)

    resume = sub.add_parser(
        "resume",
        help="continue a run from its last complete checkpoint",
        description="Continue RUN from its last complete round, with the spec "
        "recorded in its checkpoints (or --spec, needed when the spec holds "
        "credentials or SQL URLs the checkpoints do not keep).",
    )
    resume.add_argument("run_id", metavar="RUN", help="the run id to continue")
    resume.add_argument(
        "--checkpoints", help="the store holding the run (default ./checkpoints)"
    )
    resume.add_argument("--federation", help="the run's federation, if ambiguous")
    resume.add_argument("--spec", help="the run's spec file, not the recorded one")
    resume.add_argument("--rounds", type=int, help="train up to this round instead")
    _flow_command(resume, cmd_resume)

    runs = sub.add_parser(
        "runs",
        help="list the runs of a checkpoint store: federation, run, rounds done, "
        "last global test metrics, status",
    )
    runs.add_argument(
        "checkpoints",
        metavar="STORE",
        nargs="?",
        default="./checkpoints",
        help="the store's path or URL (default ./checkpoints)",
    )
    runs.add_argument("--federation", help="list this federation's runs only")
    runs.set_defaults(handler=cmd_runs)

    migrate = sub.add_parser(
        "migrate",
        help="bring a checkpoint store written by an earlier fedsilo to the "
        "current layout (trees.parquet, manifest.parquet; docs/checkpoints.md)",
    )
    migrate.add_argument("checkpoints", metavar="STORE", help="the store's path or URL")
    migrate.set_defaults(handler=cmd_migrate)

    compare = sub.add_parser(
        "compare",
        help="should we federate? federated vs personalized, local-only and "
        "centralized models on the same silos, with an HTML report",
    )
    _spec_arguments(compare, overrides=True)
    compare.add_argument(
        "--personalize-epochs",
        type=int,
        default=1,
        metavar="K",
        help="local epochs (extra trees for xgboost) of fine-tuning at each silo "
        "(default 1)",
    )
    compare.add_argument(
        "--no-centralized",
        action="store_true",
        help="skip the centralized (pooled rows) upper bound",
    )
    _flow_command(compare, cmd_compare)

    export = sub.add_parser(
        "export",
        help="write a run's model as a file stock tools load: skops, ONNX or "
        "XGBoost JSON (docs/export.md)",
    )
    export.add_argument("run_id", metavar="RUN", help="the run id")
    export.add_argument(
        "--format",
        required=True,
        choices=["skops", "onnx", "xgboost-json"],
        help="skops (every kind), onnx (averaged kinds), xgboost-json (xgboost)",
    )
    export.add_argument(
        "--round", type=int, help="the round to export (default: the latest complete)"
    )
    export.add_argument(
        "--out",
        help="file path or fsspec URL (default: FEDERATION-RUN-rNNNNN.<suffix> here)",
    )
    export.add_argument(
        "--checkpoints",
        default="./checkpoints",
        help="the store holding the run (default ./checkpoints)",
    )
    export.add_argument("--federation", help="the run's federation, if ambiguous")
    export.set_defaults(handler=cmd_export)

    datasets = sub.add_parser("datasets", help="bundled and synthetic data sets")
    dsub = datasets.add_subparsers(dest="datasets_command", required=True)
    split = dsub.add_parser(
        "split", help="split a data set over silos into files and a spec"
    )
    split.add_argument(
        "name",
        help="breast_cancer, wine, digits, diabetes, synthetic-classification, "
        "synthetic-regression",
    )
    split.add_argument("--silos", type=int, default=4)
    split.add_argument(
        "--partition",
        default="iid",
        choices=["iid", "dirichlet", "quantity", "feature"],
    )
    split.add_argument(
        "--alpha",
        type=float,
        default=0.5,
        help="Dirichlet concentration (dirichlet, quantity)",
    )
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--rounds", type=int, default=20)
    split.add_argument(
        "--n-samples", type=int, default=None, help="rows of a synthetic data set"
    )
    split.add_argument("--test-fraction", type=float, default=0.2)
    split.add_argument("--model", default=None, help="model kind written into the spec")
    split.add_argument(
        "--out", required=True, help="directory for silo files and federation.yaml"
    )
    split.add_argument("--overwrite", action="store_true")
    split.set_defaults(handler=cmd_datasets_split)

    worker = sub.add_parser(
        "worker",
        help="serve one silo: a Dask worker that reads the silo's data where it is",
        description="Start a single-threaded Dask worker named after the silo. Its "
        "data sources (paths, URLs, credentials) come from SILO_CONFIG on this "
        "machine; the central spec names the silo only.",
    )
    worker.add_argument(
        "--scheduler", required=True, help="Dask scheduler address, tcp://HOST:PORT"
    )
    worker.add_argument(
        "--silo", required=True, help="the silo's name, as the central spec has it"
    )
    worker.add_argument(
        "--data",
        required=True,
        metavar="SILO_CONFIG",
        help="YAML: train, test (path, fsspec URL or {url, table|query}), "
        "test_fraction, storage_options",
    )
    worker.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    worker.add_argument(
        "--port", type=int, default=0, help="port to listen on (default: any free)"
    )
    worker.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the scheduler at start (default 60)",
    )
    worker.add_argument(
        "--tls-ca-file",
        metavar="PEM",
        help="the federation's CA certificate (mutual TLS; needs a tls:// scheduler)",
    )
    worker.add_argument(
        "--tls-cert", metavar="PEM", help="this silo's certificate, signed by the CA"
    )
    worker.add_argument(
        "--tls-key", metavar="PEM", help="this silo's private key (mode 0600)"
    )
    worker.add_argument(
        "--insecure-plain-tcp",
        action="store_true",
        help="serve over plain TCP beyond loopback: neither encrypted nor "
        "authenticated (default: refused)",
    )
    worker.add_argument("--verbose", action="store_true", help="show Dask's logs")
    worker.set_defaults(handler=cmd_worker)

    certs = sub.add_parser(
        "certs",
        help="a CA and certificates for mutual TLS between scheduler, workers "
        "and coordinator",
    )
    csub = certs.add_subparsers(dest="certs_command", required=True)
    init = csub.add_parser(
        "init", help="create the federation's CA (DIR/ca.pem, DIR/ca-key.pem)"
    )
    init.add_argument("--dir", required=True, help="directory for the CA's files")
    init.add_argument(
        "--days", type=int, default=3650, help="validity in days (default 3650)"
    )
    init.add_argument(
        "--force",
        action="store_true",
        help="replace an existing CA (its certificates stop being trusted)",
    )
    init.set_defaults(handler=cmd_certs_init)
    issue = csub.add_parser(
        "issue",
        help="sign a certificate for a silo, the coordinator or the scheduler "
        "(DIR/NAME.pem, DIR/NAME-key.pem)",
    )
    issue.add_argument("name", help="a silo's name, 'coordinator' or 'scheduler'")
    issue.add_argument("--dir", required=True, help="directory holding the CA")
    issue.add_argument(
        "--role",
        choices=("coordinator", "scheduler", "silo"),
        help="the role the certificate grants (default: coordinator and scheduler "
        "by name, any other NAME the silo NAME)",
    )
    issue.add_argument(
        "--days", type=int, default=365, help="validity in days (default 365)"
    )
    issue.add_argument(
        "--host",
        action="append",
        metavar="HOST",
        help="an IP address or DNS name the holder is reached at, repeatable "
        "(default 127.0.0.1); NAME and localhost are always included",
    )
    issue.add_argument(
        "--force", action="store_true", help="replace NAME's existing certificate"
    )
    issue.set_defaults(handler=cmd_certs_issue)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user mistakes print one line and exit with code 2."""
    args = build_parser().parse_args(argv)
    from fedsilo.prefect_env import apply_defaults

    apply_defaults(quiet=not getattr(args, "verbose", False))
    try:
        return int(args.handler(args))
    except FedsiloError as error:
        from fedsilo.locking import FederationBusyError

        print(f"fedsilo: error: {error.reason}", file=sys.stderr)
        return EXIT_BUSY if isinstance(error, FederationBusyError) else EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("fedsilo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

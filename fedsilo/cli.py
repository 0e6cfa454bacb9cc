"""The ``fedsilo`` command line: run federations, make demo data."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedsilo.errors import FedsiloError

EXIT_USER_ERROR = 2
EXIT_BUSY = 75  # EX_TEMPFAIL: another run of the federation holds its lock


def _print_progress(result: Any, state: Any) -> None:
    metrics = " ".join(f"{k} {v:.4f}" for k, v in sorted(result.metrics.items()))
    total = len(result.selected)
    rounds = state.spec.rounds
    print(
        f"round {result.round:>4}/{rounds}  silos {len(result.silos)}/{total}"
        f"  {metrics}  {result.seconds:.2f}s",
        flush=True,
    )


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


def cmd_run(args: argparse.Namespace) -> int:
    """Train the federation a spec describes."""
    from fedsilo.spec import load_spec

    spec = load_spec(args.spec)
    if args.rounds is not None:
        spec = spec.model_copy(update={"rounds": args.rounds})
    if args.checkpoints is not None:
        spec = spec.model_copy(update={"checkpoints": args.checkpoints})
    from fedsilo.flows.training import federated_training
    from fedsilo.prefect_env import quiet_dask_logs
    from fedsilo.tasks import run_state

    quiet_dask_logs()

    history: list[Any] = []

    def listener(result: Any, state: Any) -> None:
        history.append(result)
        _print_progress(result, state)

    from fedsilo.locking import federation_lock
    from fedsilo.tasks.checkpoint_store import new_run_id

    if args.resume and not args.run_id:
        raise FedsiloError("--resume needs --run-id (the run to continue)")
    run_id = args.run_id or new_run_id()
    run_state.listeners.append(listener)
    started = time.perf_counter()
    try:
        with federation_lock(spec.name, spec.checkpoints, run_id):
            summary = federated_training(spec, run_id=run_id, resume=args.resume)
    finally:
        run_state.listeners.remove(listener)
    print(_final_table(summary, history, time.perf_counter() - started))
    return 0


def cmd_datasets_split(args: argparse.Namespace) -> int:
    """Split a bundled data set over silos and write files plus a spec."""
    from fedsilo.datasets.writer import write_federation

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

    from fedsilo.connectors.silo_config import load_silo_config, serve_silo_worker
    from fedsilo.spec import NAME_PATTERN

    if re.match(NAME_PATTERN, args.silo) is None:
        raise FedsiloError(
            f"--silo {args.silo!r}: use letters, digits, '.', '_' and '-' only"
        )
    config = load_silo_config(args.data)
    # Load the silo-side code (pandas, scikit-learn) before joining, so that the
    # federation's first task is not slowed down by imports.
    import fedsilo.tasks.silo  # noqa: F401

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
    from fedsilo.certs import DEFAULT_HOSTS, issue_cert

    made = issue_cert(
        args.dir,
        args.name,
        days=args.days,
        hosts=args.host or DEFAULT_HOSTS,
        force=args.force,
    )
    names = ", ".join([*made.dns_names, *made.ip_addresses])
    print(
        f"wrote {made.cert} and {made.key} (mode 0600) for {args.name!r}: "
        f"names {names}; valid until {made.not_after:%Y-%m-%d}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="fedsilo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train a federation described by a YAML spec")
    run.add_argument("spec", help="path of the federation spec (YAML)")
    run.add_argument("--rounds", type=int, help="override the spec's rounds")
    run.add_argument("--checkpoints", help="override the spec's checkpoint store")
    run.add_argument("--run-id", help="name the run (default: time + random)")
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue --run-id from its last complete round",
    )
    run.add_argument(
        "--verbose", action="store_true", help="show Prefect's and Dask's logs"
    )
    run.set_defaults(handler=cmd_run)

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

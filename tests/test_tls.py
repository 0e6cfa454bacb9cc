"""Mutual TLS: the federation's CA, its certificates, and Dask peers that use them.

Certificates are made with the CLI (`fedsilo certs init/issue`). The integration
tests start a TLS-only `dask scheduler` and `fedsilo worker` processes on
127.0.0.1: a worker whose certificate another CA signed never joins, and with
the federation's certificates a run completes over tls://.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from fedsilo.certs import CertError, tls_security
from fedsilo.cli import main
from fedsilo.errors import ClusterError, SpecError
from fedsilo.spec import FederationSpec, TlsSpec, load_spec, parse_spec
from tasks import run_state

SILOS = ("silo-0", "silo-1")
NAMES = ("scheduler", "coordinator", *SILOS)


def cli(*args: str) -> int:
    return main(list(args))


def make_pki(directory: Path, names: tuple[str, ...] = NAMES) -> Path:
    assert cli("certs", "init", "--dir", str(directory)) == 0
    for name in names:
        assert cli("certs", "issue", name, "--dir", str(directory)) == 0
    return directory


def read_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def tls_files(pki: Path, name: str, ca: Path | None = None) -> dict[str, str]:
    return {
        "ca_file": str(ca or pki / "ca.pem"),
        "cert_file": str(pki / f"{name}.pem"),
        "key_file": str(pki / f"{name}-key.pem"),
    }


# --- certificates -------------------------------------------------------------


def test_issued_certificate_chains_to_the_ca_with_both_usages_and_names(
    tmp_path: Path,
) -> None:
    pki = tmp_path / "pki"
    assert cli("certs", "init", "--dir", str(pki)) == 0

    code = cli(
        "certs", "issue", "silo-0", "--dir", str(pki),
        "--host", "127.0.0.1", "--host", "10.0.1.7", "--host", "clinic.example.org",
    )  # fmt: skip

    assert code == 0
    ca, cert = read_cert(pki / "ca.pem"), read_cert(pki / "silo-0.pem")
    cert.verify_directly_issued_by(ca)  # raises unless the CA's key signed it
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    leaf = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert not leaf.ca
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [
        "silo-0",
        "localhost",
        "clinic.example.org",
    ]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == [
        "127.0.0.1",
        "10.0.1.7",
    ]
    assert cert.not_valid_after_utc <= ca.not_valid_after_utc
    # OpenSSL accepts the pair as a client identity that trusts this CA.
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    context.load_cert_chain(pki / "silo-0.pem", pki / "silo-0-key.pem")


def test_key_files_are_private_and_certificates_public(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", ("silo-0",))

    modes = {p.name: p.stat().st_mode & 0o777 for p in pki.iterdir()}

    assert modes == {
        "ca.pem": 0o644,
        "ca-key.pem": 0o600,
        "silo-0.pem": 0o644,
        "silo-0-key.pem": 0o600,
    }
    assert pki.stat().st_mode & 0o777 == 0o700


def test_init_refuses_to_overwrite_a_ca_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = tmp_path / "pki"
    assert cli("certs", "init", "--dir", str(pki)) == 0
    before = (pki / "ca.pem").read_bytes(), (pki / "ca-key.pem").read_bytes()
    capsys.readouterr()

    refused = cli("certs", "init", "--dir", str(pki))
    (line,) = capsys.readouterr().err.splitlines()
    forced = cli("certs", "init", "--dir", str(pki), "--force")

    assert refused == 2
    assert line.startswith("fedsilo: error: ") and "use --force" in line
    assert forced == 0
    after = (pki / "ca.pem").read_bytes(), (pki / "ca-key.pem").read_bytes()
    assert after[0] != before[0] and after[1] != before[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("issue", "silo-9", "--dir", "{empty}"), "no CA in"),
        (("issue", "bad name", "--dir", "{pki}"), "certificate name 'bad name'"),
        (("issue", "ca", "--dir", "{pki}"), "would clash"),
        (("issue", "silo-0", "--dir", "{pki}"), "use --force"),
        (("issue", "silo-9", "--dir", "{pki}", "--host", "a b"), "--host 'a b'"),
        (("issue", "silo-9", "--dir", "{pki}", "--days", "0"), "--days 0"),
        (("init", "--dir", "{pki}/new", "--days", "-1"), "--days -1"),
    ],
)
def test_certs_errors_are_one_line_and_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    message: str,
) -> None:
    pki = make_pki(tmp_path / "pki", ("silo-0",))
    (tmp_path / "empty").mkdir()
    capsys.readouterr()
    argv = [a.format(pki=pki, empty=tmp_path / "empty") for a in args]

    code = cli("certs", *argv)

    assert code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("fedsilo: error: ") and message in line


def test_tls_security_checks_its_files(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", ("silo-0", "silo-1"))

    security = tls_security(pki / "ca.pem", pki / "silo-0.pem", pki / "silo-0-key.pem")

    assert security.require_encryption
    for role in ("client", "scheduler", "worker"):
        assert security.get_tls_config_for_role(role)["cert"] == str(pki / "silo-0.pem")
    with pytest.raises(CertError, match="no such file"):
        tls_security(pki / "ca.pem", pki / "nope.pem", pki / "silo-0-key.pem")
    with pytest.raises(CertError, match="cannot use TLS files"):
        tls_security(pki / "ca.pem", pki / "silo-0.pem", pki / "silo-1-key.pem")


# --- the spec -----------------------------------------------------------------


def spec_data(**cluster: Any) -> dict[str, Any]:
    return {
        "name": "tls",
        "task": "classification",
        "target": "label",
        "rounds": 1,
        "silos": [{"name": s} for s in SILOS],
        "cluster": cluster,
    }


def test_spec_tls_paths_resolve_against_the_spec_file(tmp_path: Path) -> None:
    path = tmp_path / "fed" / "federation.yaml"
    path.parent.mkdir()
    tls = {"ca_file": "../pki/ca.pem", "cert_file": "c.pem", "key_file": "/k.pem"}
    path.write_text(yaml.safe_dump(spec_data(tls=tls)))

    spec = load_spec(path)

    assert spec.cluster.tls == TlsSpec(
        ca_file=str(tmp_path / "pki" / "ca.pem"),
        cert_file=str(tmp_path / "fed" / "c.pem"),
        key_file="/k.pem",
    )
    assert parse_spec(spec_data()).cluster.tls is None


@pytest.mark.parametrize(
    ("cluster", "message"),
    [
        (
            {"address": "tcp://10.0.0.5:8786", "tls": tls_files(Path("p"), "c")},
            "cluster: address 'tcp://10.0.0.5:8786': with tls set",
        ),
        ({"tls": {"ca_file": "ca.pem", "cert_file": "c.pem"}}, "cluster.tls.key_file"),
        ({"tls": {**tls_files(Path("p"), "c"), "ciphers": "x"}}, "unknown key"),
    ],
)
def test_spec_refuses_inconsistent_tls(cluster: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message.replace(".", r"\.")):
        parse_spec(spec_data(**cluster), source="spec.yaml")


def test_worker_tls_options_are_checked_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = make_pki(tmp_path / "pki", ("silo-0",))
    (tmp_path / "t.parquet").touch()
    (tmp_path / "silo.yaml").write_text("train: t.parquet\n")
    files = [
        "--tls-ca-file", str(pki / "ca.pem"),
        "--tls-cert", str(pki / "silo-0.pem"),
        "--tls-key", str(pki / "silo-0-key.pem"),
    ]  # fmt: skip
    base = ["worker", "--silo", "silo-0", "--data", str(tmp_path / "silo.yaml")]
    cases = [
        (["--scheduler", "tcp://127.0.0.1:9", *files], "give the scheduler's tls://"),
        (["--scheduler", "tls://127.0.0.1:9"], "needs --tls-ca-file"),
        (["--scheduler", "tls://127.0.0.1:9", *files[:4]], "give all of"),
        (
            ["--scheduler", "tls://127.0.0.1:9", *files[:5], str(pki / "x.pem")],
            "no such file",
        ),
    ]
    capsys.readouterr()
    for extra, message in cases:
        assert main([*base, *extra]) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert message in line, line


# --- a TLS-only scheduler and silo workers, each its own process -------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The federation's CA and certificates, and a rogue CA's silo-1 certificate."""
    root = tmp_path_factory.mktemp("pki")
    make_pki(root / "rogue", ("silo-1",))
    return make_pki(root / "federation")


@pytest.fixture(scope="module")
def two_silos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Breast cancer split iid over two silos, with its federation.yaml."""
    from datasets.writer import write_federation

    out = tmp_path_factory.mktemp("breast-cancer-2") / "iid"
    write_federation("breast_cancer", n_silos=2, partition="iid", out=out, rounds=2)
    return out


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """Terminate every process, then wait (and kill what outlives 10 s)."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@dataclass
class Processes:
    """Processes started by a test, with their logs, all ended at teardown."""

    directory: Path
    started: list[subprocess.Popen[bytes]]

    def start(self, name: str, *command: str) -> subprocess.Popen[bytes]:
        with (self.directory / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, *command],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.started.append(process)
        return process

    def log(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text()

    def worker(
        self, address: str, silo: str, data: Path, pki: Path, *, timeout: float = 60
    ) -> subprocess.Popen[bytes]:
        config = self.directory / f"{silo}.yaml"
        config.write_text(yaml.safe_dump({"train": str(data / "train.parquet")}))
        return self.start(
            f"{silo}-{pki.name}",
            "-m", "fedsilo.cli", "worker",
            "--scheduler", address, "--silo", silo, "--data", str(config),
            "--tls-ca-file", str(pki.parent / "federation" / "ca.pem"),
            "--tls-cert", str(pki / f"{silo}.pem"),
            "--tls-key", str(pki / f"{silo}-key.pem"),
            "--timeout", f"{timeout:g}",
        )  # fmt: skip


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Start processes; end every one of them (workers before the scheduler)."""
    run = Processes(tmp_path / "processes", [])
    run.directory.mkdir()
    try:
        yield run
    finally:
        _stop(run.started[1:])
        _stop(run.started[:1])


@pytest.fixture
def tls_scheduler(processes: Processes, pki: Path) -> str:
    """A `dask scheduler` on 127.0.0.1, mutual TLS only, with fedsilo's rules."""
    scheduler_file = processes.directory / "scheduler.json"
    process = processes.start(
        "scheduler",
        "-m", "distributed.cli.dask_scheduler",
        "--protocol", "tls", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
        "--tls-ca-file", str(pki / "ca.pem"),
        "--tls-cert", str(pki / "scheduler.pem"),
        "--tls-key", str(pki / "scheduler-key.pem"),
        "--scheduler-file", str(scheduler_file),
        "--preload", "fedsilo.scheduler",
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not scheduler_file.exists() or not scheduler_file.read_text().strip():
        assert process.poll() is None, processes.log("scheduler")
        assert time.monotonic() < deadline, "the scheduler did not start"
        time.sleep(0.1)
    return str(json.loads(scheduler_file.read_text())["address"])


def worker_names(address: str, pki: Path) -> dict[str, str]:
    """Return {name: address} of the scheduler's workers, asked as the coordinator."""
    from distributed import Client

    from fedsilo.cluster import silo_workers

    security = tls_security(**_tls_args(pki, "coordinator"))
    with Client(address, timeout=30, security=security) as client:
        return silo_workers(client)


def _tls_args(pki: Path, name: str) -> dict[str, Path]:
    return {
        "ca_file": pki / "ca.pem",
        "cert_file": pki / f"{name}.pem",
        "key_file": pki / f"{name}-key.pem",
    }


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_peers_without_a_certificate_from_the_ca_cannot_join(
    tls_scheduler: str, processes: Processes, pki: Path, two_silos: Path
) -> None:
    from fedsilo.cluster import silo_cluster

    rogue = pki.parent / "rogue"
    assert tls_scheduler.startswith("tls://")

    # A silo-1 impostor: it trusts the federation's CA, but another CA signed
    # its own certificate, so the scheduler refuses the handshake.
    impostor = processes.worker(
        tls_scheduler, "silo-1", two_silos / "silo-1", rogue, timeout=5
    )
    # A peer with no certificate at all.
    host, port = tls_scheduler.removeprefix("tls://").rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    context.check_hostname = False
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with context.wrap_socket(raw) as tls:
            # The server aborts the handshake: OpenSSL reports it as a missing
            # certificate or, depending on timing, as an EOF mid-protocol.
            with pytest.raises(
                ssl.SSLError, match=r"CERTIFICATE_REQUIRED|EOF occurred|UNEXPECTED_EOF"
            ):
                tls.sendall(b"hello")
                tls.recv(1)
    # A coordinator holding the impostor's certificate cannot attach either.
    with pytest.raises(ClusterError, match="cannot reach the Dask scheduler"):
        with silo_cluster(
            SILOS,
            tls_scheduler,
            3.0,
            TlsSpec(**tls_files(rogue, "silo-1", pki / "ca.pem")),
        ):
            pass  # pragma: no cover

    assert impostor.wait(timeout=120) == 2
    log = processes.log("silo-1-rogue")
    assert "cannot join the Dask scheduler at tls://" in log, log
    assert worker_names(tls_scheduler, pki) == {}
    assert "certificate verify failed" in processes.log("scheduler")


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_a_federation_runs_over_tls_with_certified_silo_workers(
    tls_scheduler: str,
    processes: Processes,
    pki: Path,
    two_silos: Path,
    tmp_path: Path,
    prefect_api: None,
) -> None:
    from flows.training import federated_training

    for silo in SILOS:
        processes.worker(tls_scheduler, silo, two_silos / silo, pki)
    spec = FederationSpec.model_validate(
        {
            **spec_data(
                address=tls_scheduler, timeout=120, tls=tls_files(pki, "coordinator")
            ),
            "rounds": 2,
            "strategy": {"kind": "fedavg", "min_silos": 2},
            "checkpoints": str(tmp_path / "store"),
        }
    )
    seen: list[tuple[Any, str, dict[str, str]]] = []

    def listener(result: Any, state: run_state.Run) -> None:
        seen.append((result, state.cluster.address, dict(state.cluster.workers)))

    with run_state.listening(listener):
        summary = federated_training(spec)

    assert summary["rounds"] == [1, 2]
    assert summary["final_metrics"]["accuracy"] > 0.85
    for result, address, workers in seen:
        assert address.startswith("tls://")
        assert all(w.startswith("tls://") for w in workers.values())
        assert result.fit_workers == {s: s for s in SILOS}
    assert sorted(worker_names(tls_scheduler, pki)) == list(SILOS)


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_an_embedded_cluster_with_tls_listens_on_tls_only(
    pki: Path, two_silos: Path, tmp_path: Path, prefect_api: None
) -> None:
    from flows.training import federated_training

    data = yaml.safe_load((two_silos / "federation.yaml").read_text())
    data["cluster"] = {
        "tls": {
            "ca_file": os.path.relpath(pki / "ca.pem", two_silos),
            "cert_file": os.path.relpath(pki / "coordinator.pem", two_silos),
            "key_file": os.path.relpath(pki / "coordinator-key.pem", two_silos),
        }
    }
    data["checkpoints"] = str(tmp_path / "store")
    path = two_silos / "federation-tls.yaml"
    path.write_text(yaml.safe_dump(data))
    spec = load_spec(path)
    seen: list[tuple[str, dict[str, str], bool]] = []

    def listener(result: Any, state: run_state.Run) -> None:
        cluster = state.cluster
        seen.append((cluster.address, dict(cluster.workers), cluster.embedded))

    with run_state.listening(listener):
        summary = federated_training(spec)

    assert summary["rounds"] == [1, 2]
    assert len(seen) == 2
    for address, workers, embedded in seen:
        assert embedded and address.startswith("tls://127.0.0.1:")
        assert sorted(workers) == list(SILOS)
        assert all(w.startswith("tls://127.0.0.1:") for w in workers.values())


def test_boosting_exchanges_reach_the_workers_over_tls(
    pki: Path, two_silos: Path, tmp_path: Path, prefect_api: None
) -> None:
    from flows.training import federated_training
    from tasks.store.checkpoints import CheckpointStore

    data = yaml.safe_load((two_silos / "federation.yaml").read_text())
    data["cluster"] = {"tls": tls_files(pki, "coordinator")}
    data["model"] = {
        "kind": "xgboost",
        "trees_per_round": 2,
        "params": {"objective": "binary:logistic", "max_depth": 3, "max_bin": 16},
    }
    data["rounds"] = 1
    data["checkpoints"] = str(tmp_path / "store")
    path = two_silos / "federation-tls-xgboost.yaml"  # silo paths are relative
    path.write_text(yaml.safe_dump(data))
    spec = load_spec(path)

    summary = federated_training(spec)

    # The per-level exchanges went over each TLS worker's channel (mutual TLS
    # with the federation's certificates, opened through the TLS Dask comm).
    assert summary["trees"] == 2
    assert set(summary["traffic"]) == set(SILOS)
    store = CheckpointStore(spec.checkpoints, spec.name, summary["run_id"])
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(bytearray((store.read_model_json(1) or "").encode()))
    assert booster.num_boosted_rounds() == 2

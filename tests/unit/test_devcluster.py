"""Unit tests for the pure parts of the local control plane (no etcd, no kube-apiserver)."""

from __future__ import annotations

import argparse
import base64
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tandem_operator.cli.cluster import add_cluster_parsers, cluster_down, default_cluster_dir
from tandem_operator.devcluster import tools as tools_mod
from tandem_operator.devcluster.controlplane import (
    CLUSTER_NAME,
    SERVICE_ACCOUNT_ISSUER,
    ControlPlaneState,
    Ports,
    ProcessRecord,
    apiserver_flags,
    etcd_flags,
    find_free_ports,
    pid_alive,
    port_is_free,
    render_kubeconfig,
    tail_text,
)
from tandem_operator.devcluster.pki import (
    ADMIN_GROUP,
    ADMIN_USER,
    ClientCredentials,
    ensure_pki,
    issue_client_cert,
)
from tandem_operator.devcluster.session import unique_namespace_name
from tandem_operator.devcluster.tools import ToolPaths, default_bin_dir, pinned_versions


def _flag_map(flags: list[str]) -> dict[str, str]:
    result = {}
    for flag in flags:
        assert flag.startswith("--"), flag
        key, _, value = flag[2:].partition("=")
        assert key not in result, f"duplicate flag {key}"
        result[key] = value
    return result


# ------------------------------------------------------------------------------ ports


def test_find_free_ports_are_distinct_and_bindable() -> None:
    ports = find_free_ports(5)
    assert len(set(ports)) == 5
    assert all(port_is_free(p) for p in ports)


def test_port_is_free_is_false_for_a_listening_socket() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert not port_is_free(sock.getsockname()[1])


# ------------------------------------------------------------------------------ flags


def test_etcd_flags_use_the_given_ports_and_data_dir(tmp_path: Path) -> None:
    flags = _flag_map(etcd_flags(data_dir=tmp_path / "etcd", ports=Ports(2001, 2002, 2003)))
    assert flags["data-dir"] == str(tmp_path / "etcd")
    assert flags["listen-client-urls"] == "http://127.0.0.1:2001"
    assert flags["advertise-client-urls"] == "http://127.0.0.1:2001"
    assert flags["listen-peer-urls"] == "http://127.0.0.1:2002"
    assert flags["initial-cluster"] == f"{flags['name']}=http://127.0.0.1:2002"
    assert "2003" not in " ".join(flags.values())


def test_apiserver_flags(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path / "certs")
    flags = _flag_map(apiserver_flags(etcd_url="http://127.0.0.1:2001", secure_port=6443, pki=pki))
    assert flags["etcd-servers"] == "http://127.0.0.1:2001"
    assert flags["bind-address"] == "127.0.0.1"
    assert flags["advertise-address"] == "127.0.0.1"
    assert flags["secure-port"] == "6443"
    assert flags["cert-dir"] == str(tmp_path / "certs")
    assert flags["authorization-mode"] == "RBAC"
    assert flags["service-cluster-ip-range"] == "10.0.0.0/24"
    assert flags["service-account-issuer"] == SERVICE_ACCOUNT_ISSUER
    assert flags["api-audiences"] == SERVICE_ACCOUNT_ISSUER
    assert flags["disable-admission-plugins"] == "ServiceAccount"
    for key in (
        "tls-cert-file",
        "tls-private-key-file",
        "client-ca-file",
        "service-account-key-file",
        "service-account-signing-key-file",
    ):
        assert Path(flags[key]).is_file(), key


# ------------------------------------------------------------------------------ kubeconfig


def test_render_kubeconfig_with_client_certificate() -> None:
    creds = ClientCredentials(cert_pem=b"CERT", key_pem=b"KEY")
    config = yaml.safe_load(
        render_kubeconfig(server="https://127.0.0.1:1234", ca_pem=b"CA", credentials=creds)
    )
    assert config["current-context"] == CLUSTER_NAME == "tandem-local"
    (cluster,) = config["clusters"]
    assert cluster["name"] == CLUSTER_NAME
    assert cluster["cluster"]["server"] == "https://127.0.0.1:1234"
    assert base64.b64decode(cluster["cluster"]["certificate-authority-data"]) == b"CA"
    assert "insecure-skip-tls-verify" not in cluster["cluster"]
    (user,) = config["users"]
    assert base64.b64decode(user["user"]["client-certificate-data"]) == b"CERT"
    assert base64.b64decode(user["user"]["client-key-data"]) == b"KEY"
    (context,) = config["contexts"]
    assert context["context"] == {"cluster": CLUSTER_NAME, "user": user["name"]}


def test_render_kubeconfig_with_token() -> None:
    config = yaml.safe_load(
        render_kubeconfig(server="https://h:1", ca_pem=b"CA", token="abc.def", user_name="bob")
    )
    assert config["users"] == [{"name": "bob", "user": {"token": "abc.def"}}]


@pytest.mark.parametrize("kwargs", [{}, {"token": "t", "credentials": ClientCredentials(b"", b"")}])
def test_render_kubeconfig_needs_exactly_one_identity(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        render_kubeconfig(server="https://h:1", ca_pem=b"CA", **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ state


def test_state_round_trips_through_json(tmp_path: Path) -> None:
    state = ControlPlaneState(
        directory=tmp_path,
        tools=ToolPaths.in_dir(tmp_path / "bin"),
        ports=Ports(1, 2, 3),
        etcd=ProcessRecord(pid=10, start_time=99),
        apiserver=None,
    )
    assert ControlPlaneState.from_json(state.to_json()) == state


def test_state_rejects_unknown_versions() -> None:
    with pytest.raises(ValueError, match="version"):
        ControlPlaneState.from_json('{"version": 99}')


def test_pid_alive_checks_start_time_and_zombies() -> None:
    assert pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not pid_alive(child.pid)
    if Path("/proc").is_dir():
        assert not pid_alive(os.getpid(), start_time=-1)


def test_tail_text() -> None:
    assert tail_text("a\nb\nc\n", lines=2) == "b\nc"
    assert tail_text("", lines=3) == ""


# ------------------------------------------------------------------------------ pki


def test_pki_is_consistent_and_reused(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path)
    serving_ca = x509.load_pem_x509_certificate(pki.serving_ca_cert.read_bytes())
    client_ca = x509.load_pem_x509_certificate(pki.client_ca_cert.read_bytes())
    serving = x509.load_pem_x509_certificate(pki.serving_cert.read_bytes())
    admin = x509.load_pem_x509_certificate(pki.admin_cert.read_bytes())

    serving.verify_directly_issued_by(serving_ca)
    admin.verify_directly_issued_by(client_ca)
    with pytest.raises(ValueError, match="does not match"):  # serving CA does not vouch for clients
        admin.verify_directly_issued_by(serving_ca)

    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    eku = serving.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku

    assert admin.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == ADMIN_USER
    orgs = [a.value for a in admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert orgs == [ADMIN_GROUP]
    assert (pki.admin_key.stat().st_mode & 0o777) == 0o600
    assert (pki.service_account_key.stat().st_mode & 0o777) == 0o600

    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    ensure_pki(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_issue_client_cert_for_other_users(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path)
    creds = issue_client_cert(pki, user="alice", groups=["dev", "ops"])
    cert = x509.load_pem_x509_certificate(creds.cert_pem)
    orgs = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert orgs == ["dev", "ops"]
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)


def test_pki_works_for_mutual_tls_with_hostname_checks(tmp_path: Path) -> None:
    """What kubectl does with the kubeconfig: verify 127.0.0.1 and present the admin cert."""
    pki = ensure_pki(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.client_ca_cert))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_cert_chain(str(pki.serving_cert), str(pki.serving_key))
    client_ctx = ssl.create_default_context(cafile=str(pki.serving_ca_cert))
    client_ctx.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))

    seen: list[object] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def serve() -> None:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                seen.append(tls.getpeercert())
                tls.sendall(b"ok")

        thread = threading.Thread(target=serve)
        thread.start()
        with (
            socket.create_connection(listener.getsockname()) as raw,
            client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.recv(2) == b"ok"
        thread.join(5)
    subject = dict(x[0] for x in seen[0]["subject"])  # type: ignore[index]
    assert subject["commonName"] == ADMIN_USER


# ------------------------------------------------------------------------------ tools


def _fake_bin_dir(path: Path) -> Path:
    path.mkdir()
    for name in tools_mod.BINARY_NAMES:
        exe = path / name
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    return path


def test_tool_paths_missing(tmp_path: Path) -> None:
    tools = ToolPaths.in_dir(_fake_bin_dir(tmp_path / "bin"))
    assert tools.missing() == []
    tools.helm.unlink()
    assert tools.missing() == [tools.helm]


def test_ensure_binaries_prefers_a_complete_tools_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = _fake_bin_dir(tmp_path / "bin")
    monkeypatch.setenv("TANDEM_TOOLS_DIR", str(bin_dir))
    assert tools_mod.ensure_binaries() == ToolPaths.in_dir(bin_dir)


def test_default_bin_dir_matches_build_script_layout(tmp_path: Path) -> None:
    versions = pinned_versions()
    assert set(versions) >= {"KUBERNETES_VERSION", "ETCD_VERSION", "HELM_VERSION"}
    got = default_bin_dir(versions=versions, env={"XDG_CACHE_HOME": str(tmp_path)})
    expected_tag = (
        f"k8s-{versions['KUBERNETES_VERSION']}_etcd-{versions['ETCD_VERSION']}"
        f"_helm-{versions['HELM_VERSION']}_r{versions['BUILD_REVISION']}"
    )
    assert got == tmp_path / "tandem-operator" / "bin" / expected_tag
    script = (tools_mod.repo_root() / "hack" / "build-tools.sh").read_text()
    assert (
        'tag="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}_r${BUILD_REVISION}"'
        in script
    )


# ------------------------------------------------------------------------------ cli


def test_default_cluster_dir_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_cluster_dir() == tmp_path / "tandem-operator" / "cluster"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_cluster_dir() == Path.home() / ".local" / "state" / "tandem-operator" / "cluster"


def test_cluster_parsers(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="tandem-operator")
    add_cluster_parsers(parser.add_subparsers(dest="command", required=True))
    up = parser.parse_args(["cluster", "up", "--dir", str(tmp_path)])
    assert up.dir == tmp_path
    assert callable(up.func)
    down = parser.parse_args(["cluster", "down"])
    assert down.dir is None
    assert down.func is not up.func
    with pytest.raises(SystemExit):
        parser.parse_args(["cluster"])


def test_cluster_down_without_a_cluster_is_fine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_down(tmp_path)
    cluster_down(tmp_path / "never-created")
    out, err = capsys.readouterr()
    assert out == ""
    assert "No" in err


@pytest.mark.parametrize(
    "hint",
    ["test_simple", "test_param[Foo_BAR-1.5]", "x" * 200, "[]", "-a-"],
)
def test_unique_namespace_name_is_a_dns_label(hint: str) -> None:
    name = unique_namespace_name(hint)
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
    assert len(name) <= 63
    assert name.startswith("t-")
    assert unique_namespace_name(hint) != name

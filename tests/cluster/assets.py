"""Where the Kubernetes binaries come from.

Like controller-runtime's envtest (``KUBEBUILDER_ASSETS``): ``PODLB_K8S_ASSETS`` names a
directory holding ``kube-apiserver``, ``kube-controller-manager``, ``kube-scheduler``,
``kubelet`` and ``kube-proxy``. Without it, the archive ``PODLB_K8S_ARCHIVE`` (default
``../shared/k8s/kubernetes-v1.28.7-linux-amd64.tar.xz`` beside the repository) is unpacked
once into ``$XDG_CACHE_HOME/podlb/k8s/<archive digest>/`` and checked against its
``SHA256SUMS``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy")
REPO = Path(__file__).resolve().parents[2]
DEFAULT_ARCHIVE = REPO.parent / "shared" / "k8s" / "kubernetes-v1.28.7-linux-amd64.tar.xz"


class AssetsMissing(RuntimeError):
    """The Kubernetes binaries are not there; the message says where they were looked for."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "podlb"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sums(directory: Path) -> None:
    sums = directory / "SHA256SUMS"
    if not sums.exists():
        return
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        want, name = line.split()[:2]
        name = name.lstrip("*")
        got = _sha256(directory / name)
        if got != want:
            raise AssetsMissing(f"{directory / name}: sha256 {got}, SHA256SUMS says {want}")


def _unpack(archive: Path) -> Path:
    key = _sha256(archive)[:16]
    target = cache_dir() / "k8s" / key
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=target.parent))
    try:
        subprocess.run(["tar", "-xJf", str(archive), "-C", str(work)], check=True)
        # The archive may hold the binaries at its top or in one folder.
        found = next((p.parent for p in work.rglob("kube-apiserver")), None)
        if found is None:
            raise AssetsMissing(f"{archive} holds no kube-apiserver")
        _check_sums(found)
        (found / ".complete").touch()
        shutil.rmtree(target, ignore_errors=True)
        found.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def k8s_assets() -> Path:
    """The directory of the five binaries; raises AssetsMissing saying what was looked at."""
    named = os.environ.get("PODLB_K8S_ASSETS")
    if named:
        directory = Path(named)
    else:
        archive = Path(os.environ.get("PODLB_K8S_ARCHIVE") or DEFAULT_ARCHIVE)
        if not archive.exists():
            raise AssetsMissing(
                f"no Kubernetes binaries: {archive} does not exist "
                "(set PODLB_K8S_ASSETS to a directory of them, or PODLB_K8S_ARCHIVE)"
            )
        directory = _unpack(archive)
    missing = [b for b in BINARIES if not os.access(directory / b, os.X_OK)]
    if missing:
        raise AssetsMissing(f"{directory} lacks {', '.join(missing)}")
    return directory

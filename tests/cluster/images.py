"""Container images for the cluster, built here (no registry is reachable) and cached.

* ``podlb.test/pause`` — the sandbox image: busybox-static's ``sleep`` (the kubelet kills
  sandboxes with SIGKILL, so no signal handling is needed).
* ``podlb.test/python`` — a Debian bookworm base made with ``mmdebstrap`` from Debian's
  ``python3`` packages: it stands in for the public Python image (``PYTHON_IMAGE`` of our
  ``Dockerfile``), which cannot be pulled here. It trusts the build host's CA bundle, so pip
  inside the build reaches the package index the way the host does.
* ``podlb.test/podlb-agent`` — our ``Dockerfile``, built by ``buildah bud`` on that base.
* ``podlb.test/app`` — the base plus ``tests/testbed/app.py`` and ``curl`` (the README's exec
  hook recipe), the pod app of the tests.

Each is a docker-archive tarball under the cache directory, named by a digest of its inputs,
so an unchanged input is never built twice.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import subprocess
import tarfile
from pathlib import Path

from tests.cluster.assets import REPO, cache_dir

log = logging.getLogger(__name__)

PAUSE = "podlb.test/pause:1"
AGENT = "podlb.test/podlb-agent:test"
APP = "podlb.test/app:test"
BASE_PACKAGES = ("python3", "python3-pip", "python-is-python3", "ca-certificates", "curl")
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
DEBIAN_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def _tree_bytes(*paths: Path) -> bytes:
    out = io.BytesIO()
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            if "__pycache__" in f.parts:
                continue
            out.write(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes())
    return out.getvalue()


def _images_dir() -> Path:
    d = cache_dir() / "images"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _docker_archive(
    path: Path, tag: str, files: dict[str, tuple[bytes, int]], config: dict[str, object]
) -> None:
    """Write a one-layer docker-archive holding ``files`` (archive path -> (data, mode))."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        dirs = sorted({str(Path(name).parent) for name in files} - {"."})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, (data, mode) in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    image_config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    config_name = hashlib.sha256(image_config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [tag], "Layers": ["layer.tar"]}])
    tmp = path.with_suffix(".tmp")
    with tarfile.open(tmp, mode="w") as out:
        for name, data in (
            ("layer.tar", layer_bytes),
            (config_name, image_config),
            ("manifest.json", manifest.encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    tmp.rename(path)


def pause_image() -> Path:
    busybox = Path("/bin/busybox")
    data = busybox.read_bytes()
    path = _images_dir() / f"pause-{_digest(data)}.tar"
    if not path.exists():
        _docker_archive(
            path,
            PAUSE,
            {"bin/busybox": (data, 0o755)},
            {"Entrypoint": ["/bin/busybox", "sleep", "2147483647"]},
        )
    return path


class Buildah:
    """``buildah`` with its own storage under the cache directory (nothing in /var/lib)."""

    def __init__(self) -> None:
        root = cache_dir() / "buildah"
        self.flags = [
            "--root", str(root / "storage"),
            "--runroot", str(root / "run"),
            "--storage-driver", "vfs",
        ]  # fmt: skip

    def __call__(self, *args: str, cwd: Path | None = None) -> str:
        argv = ["buildah", *self.flags, *args]
        done = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
            )
        return done.stdout.strip()

    def exists(self, image: str) -> bool:
        argv = ["buildah", *self.flags, "inspect", "--type", "image", image]
        return subprocess.run(argv, capture_output=True).returncode == 0


def _sources() -> Path:
    for s in DEBIAN_SOURCES:
        if s.exists() and s.read_text().strip():
            return s
    raise RuntimeError("no apt sources on this host for mmdebstrap")


def _base(b: Buildah) -> str:
    """The Debian python3 base, as a buildah image name."""
    key = _digest(" ".join(BASE_PACKAGES).encode(), HOST_CA.read_bytes())
    name = f"localhost/podlb-python:{key}"
    if b.exists(name):
        return name
    rootfs = _images_dir() / f"base-{key}.tar"
    if not rootfs.exists():
        log.warning("building the Debian python3 base image with mmdebstrap (about a minute)")
        tmp = rootfs.with_suffix(".tmp")
        subprocess.run(
            [
                "mmdebstrap", "--quiet", "--variant=essential",
                "--include=" + ",".join(BASE_PACKAGES),
                "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/locale/*",
                "--format=tar", "bookworm", str(tmp), str(_sources()),
            ],
            check=True, capture_output=True, timeout=900,
        )  # fmt: skip
        tmp.rename(rootfs)
    c = b("from", "scratch")
    try:
        b("add", c, str(rootfs), "/")
        b("copy", c, str(HOST_CA), str(HOST_CA))
        # The public Python image lets pip install into the system; Debian's marks it
        # externally managed.
        b(
            "run",
            "--isolation",
            "chroot",
            c,
            "--",
            "rm",
            "-f",
            "/usr/lib/python3.11/EXTERNALLY-MANAGED",
        )
        b("config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", c)
        b("commit", "-q", c, name)
    finally:
        b("rm", c)
    rootfs.unlink()
    return name


def agent_image() -> Path:
    """Our Dockerfile, built on the Debian base; returns the docker-archive."""
    inputs = _tree_bytes(
        REPO / "Dockerfile", REPO / "requirements.lock", REPO / "pyproject.toml",
        REPO / "README.md", REPO / "agent",
    )  # fmt: skip
    key = _digest(inputs, " ".join(BASE_PACKAGES).encode(), HOST_CA.read_bytes())
    path = _images_dir() / f"podlb-agent-{key}.tar"
    if path.exists():
        return path
    b = Buildah()
    base = _base(b)
    log.warning("building the podlb image from the Dockerfile with buildah")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    b(
        "bud", "-q", "--isolation", "chroot", "--layers=false",
        "--build-arg", f"PYTHON_IMAGE={base}",
        "--build-arg", f"COMMIT={commit or 'unknown'}",
        "-t", AGENT, ".",
        cwd=REPO,
    )  # fmt: skip
    _push(b, AGENT, path)
    return path


def app_image() -> Path:
    source = REPO / "tests" / "testbed" / "app.py"
    key = _digest(source.read_bytes(), " ".join(BASE_PACKAGES).encode(), HOST_CA.read_bytes())
    path = _images_dir() / f"app-{key}.tar"
    if path.exists():
        return path
    b = Buildah()
    c = b("from", _base(b))
    try:
        b("copy", c, str(source), "/app/app.py")
        b("config", "--entrypoint", '["python", "/app/app.py"]', "--env", "PYTHONUNBUFFERED=1", c)
        b("commit", "-q", c, APP)
    finally:
        b("rm", c)
    _push(b, APP, path)
    return path


def _push(b: Buildah, image: str, path: Path) -> None:
    """Write the docker-archive, then drop the image (and the build stage's leftovers) from
    buildah's storage: the archive is the cache; vfs storage would grow by hundreds of MiB a
    build. The base stays."""
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    b("push", "-q", image, f"docker-archive:{tmp}:{image}")
    tmp.rename(path)
    b("rmi", "-f", image)
    b("rmi", "--prune")
    for old in path.parent.glob(path.name.split("-")[0] + "-*.tar"):
        if old != path and old.name.rsplit("-", 1)[0] == path.name.rsplit("-", 1)[0]:
            old.unlink()


def import_images(ctr_address: str, *archives: Path) -> None:
    for archive in archives:
        subprocess.run(
            ["ctr", "--address", ctr_address, "-n", "k8s.io", "images", "import", str(archive)],
            check=True,
            capture_output=True,
            timeout=600,
        )


def have_builders() -> list[str]:
    return [t for t in ("buildah", "mmdebstrap", "ctr") if shutil.which(t) is None]


__all__ = ["AGENT", "APP", "PAUSE", "agent_image", "app_image", "import_images", "pause_image"]

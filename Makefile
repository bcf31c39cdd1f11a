# podlb — every install step lives here, so a fresh Debian machine (root) needs only `make`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEB_PACKAGES := python3-venv haproxy iproute2 iptables nftables procps curl
# The real-cluster tier (tests/cluster/README.md): the node's runtime and the image builders.
CLUSTER_PACKAGES := etcd-server containerd runc containernetworking-plugins busybox-static \
  conntrack buildah mmdebstrap
PYTEST_ARGS ?=

.PHONY: demo test lint unit e2e-cluster bench deps sysdeps clean

## deps: Debian packages + the Python venv with the project and its test extra
deps: sysdeps $(VENV)/.installed

sysdeps: .sysdeps.stamp
.sysdeps.stamp: Makefile
	@missing=""; for p in $(DEB_PACKAGES) $(CLUSTER_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@touch $@

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

## demo: the main job, on real namespaces of this machine
demo: deps
	$(PY) -m tests.testbed.demo

## test: lint + the whole test suite (pytest exit 5 = no tests = failure)
test: deps lint
	$(PY) -m pytest --durations=15 $(PYTEST_ARGS)

unit: deps
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

## e2e-cluster: only the real-cluster tier; fails (not skips) without the Kubernetes binaries
## (PODLB_K8S_ASSETS, or the archive in ../shared/k8s/)
e2e-cluster: deps
	PODLB_REQUIRE_CLUSTER=1 $(PY) -m pytest tests/cluster $(PYTEST_ARGS)

lint: deps
	$(VENV)/bin/ruff check agent tests bench
	$(VENV)/bin/ruff format --check agent tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

## bench: every benchmark (a few minutes; each prints its figures and its baseline)
bench: deps
	$(PY) -m bench.inspect
	$(PY) -m bench.agent_footprint
	$(PY) -m bench.direct_vs_nodeport
	$(PY) -m bench.rolling_update
	$(PY) -m bench.rolling_update --modes podlb,sleep,observe --lb-delay 0
	$(PY) -m bench.reconcile

clean:
	rm -rf $(VENV) .sysdeps.stamp build *.egg-info .mypy_cache .ruff_cache .pytest_cache

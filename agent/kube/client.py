"""Build the Kubernetes API client: in-cluster config, a kubeconfig, or host + token."""

from __future__ import annotations

from dataclasses import dataclass

from kubernetes import client, config

from agent.errors import PermanentError


@dataclass(frozen=True, slots=True)
class KubeAccess:
    """How to reach the API server. With nothing set, the in-cluster service account is used."""

    kubeconfig: str | None = None
    context: str | None = None
    host: str | None = None  # with token: an explicit server (tests, the testbed)
    token: str | None = None
    timeout_s: float = 10.0  # per request (not watches)


def api_client(access: KubeAccess) -> client.ApiClient:
    cfg = client.Configuration()
    try:
        if access.host:
            cfg.host = access.host
            if access.token:
                cfg.api_key = {"authorization": access.token}
                cfg.api_key_prefix = {"authorization": "Bearer"}
        elif access.kubeconfig:
            config.load_kube_config(
                config_file=access.kubeconfig, context=access.context, client_configuration=cfg
            )
        else:
            config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException as exc:
        raise PermanentError(f"cannot configure the Kubernetes client: {exc}") from exc
    except OSError as exc:
        raise PermanentError(f"cannot read the kubeconfig {access.kubeconfig}: {exc}") from exc
    cfg.retries = 0  # retries are ours (bounded, classified), not urllib3's
    return client.ApiClient(cfg)

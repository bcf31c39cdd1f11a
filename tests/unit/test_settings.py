"""``podlb-agent run`` settings: LB providers and their credentials (agent/settings.py)."""

from __future__ import annotations

import pytest

from agent.cli import build_parser
from agent.settings import EnvDefaults, RunSettings, SettingError, finish_repeatables, run_settings

TENCENT = {"PODLB_TENCENT_SECRET_ID": "AKIDsecret", "PODLB_TENCENT_SECRET_KEY": "k3y-value"}


def parse(args: list[str], environ: dict[str, str] | None = None) -> RunSettings:
    env = EnvDefaults(environ or {})
    ns = build_parser(env).parse_args(
        ["run", "--node-name", "n1", "--kube-server", "http://127.0.0.1:1", *args]
    )
    finish_repeatables(ns)
    return run_settings(ns, env)


def test_providers_from_flags_or_env_and_credentials_never_described() -> None:
    s = parse(["--lb", "tencent-clb", "--tencent-region", "ap-guangzhou"], TENCENT)
    assert s.lb == ("tencent-clb",)
    assert s.credentials["PODLB_TENCENT_SECRET_KEY"] == "k3y-value"
    described = repr(s.describe()) + repr(s)
    assert "k3y-value" not in described and "AKIDsecret" not in described
    assert "PODLB_TENCENT_SECRET_KEY" in described  # which ones are set, not their values
    both = parse(
        [],
        {
            "PODLB_LB": "haproxy,baidu-blb",
            "PODLB_HAPROXY_RUNTIME": "unix:/run/haproxy.sock",
            "PODLB_BAIDU_ENDPOINT": "blb.bj.baidubce.com",
            "PODLB_BAIDU_ACCESS_KEY_ID": "ak",
            "PODLB_BAIDU_SECRET_ACCESS_KEY": "sk",
        },
    )
    assert (both.lb, both.baidu_max_backends) == (("haproxy", "baidu-blb"), 50)
    assert parse([]).lb == ()


@pytest.mark.parametrize(
    ("args", "environ", "needle"),
    [
        (["--lb", "tencent-clb"], TENCENT, "--tencent-region"),
        (["--lb", "tencent-clb", "--tencent-region", "r"], {}, "PODLB_TENCENT_SECRET_ID"),
        (["--lb", "baidu-blb"], {}, "--baidu-endpoint"),
        (["--lb", "baidu-blb", "--baidu-endpoint", "e"], {}, "PODLB_BAIDU_ACCESS_KEY_ID"),
        ([], {"PODLB_LB": "f5"}, "environment PODLB_LB"),
        (["--lb", "tencent-clb", "--tencent-region", "r", "--tencent-endpoint", "clb.x"],
         TENCENT, "http(s)://"),
        (["--lb", "haproxy"], {}, "--haproxy-runtime"),
        (["--lb", "baidu-blb", "--baidu-endpoint", "blb.bj/x y"], {}, "HOST[:PORT]"),
    ],
)  # fmt: skip
def test_a_provider_without_what_it_needs_is_refused(
    args: list[str], environ: dict[str, str], needle: str
) -> None:
    with pytest.raises(SettingError, match=None) as err:
        parse(args, environ)
    assert needle in str(err.value)

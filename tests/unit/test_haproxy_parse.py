# ruff: noqa: E501  (answers captured verbatim from HAProxy 2.6.12)
"""Pure parsing of HAProxy Runtime API answers, with texts captured from HAProxy 2.6.12.

The fixtures were produced by running the commands against the testbed HAProxy (servers in
every state: UP with sessions, no check, DOWN, maint, drain, just added, just enabled, IPv6).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace

import pytest

from agent.clock import Clock
from agent.errors import TransientError
from agent.lb.base import Action, AdminState, Health, Op, PoolNotFound, PoolState
from agent.lb.haproxy import (
    FAILURES,
    HAProxyProvider,
    PoolReader,
    ServerStateRow,
    action_steps,
    admin_of,
    build_pools,
    classify_answer,
    command_verb,
    format_address,
    health_of,
    parse_backends,
    parse_endpoint,
    parse_servers_state,
    parse_stat_csv,
    process_id,
    removal_blockers,
    retried_answer,
    rising,
    split_answers,
    split_batches,
    streams_by_server,
)
from agent.lb.haproxy_state import join_states, out_of_rotation_pools

# `show servers state be`: up (2 sessions), nochk (no `check`), dead (refused), maint
# (`set server .. state maint` after UP), drain, v6 (added, never enabled), fresh (enabled,
# first check not run yet: `UP 1/2`, INI).
STATE = """\
1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 be 1 up 127.0.0.1 2 0 4 4 2 15 3 3 6 0 0 0 - 51591 - 0 0 - - 0
3 be 2 nochk 127.0.0.1 2 0 2 2 2 1 0 0 0 0 0 0 - 51591 - 0 0 - - 0
3 be 3 dead 127.0.0.1 0 0 1 1 1 8 2 0 6 0 0 0 - 1 - 0 0 - - 0
3 be 4 maint 127.0.0.1 0 1 1 1 1 15 3 0 14 0 0 0 - 35325 - 0 0 - - 0
3 be 5 drain 127.0.0.1 2 8 1 1 1 15 3 3 6 0 0 0 - 35325 - 0 0 - - 0
3 be 6 v6 fd00::1 0 1 3 3 2 1 0 0 2 0 0 0 - 8080 - 0 0 - - 0
3 be 7 fresh 127.0.0.1 2 0 1 1 2 1 0 2 6 0 0 0 - 35325 - 0 0 - - 0

"""

STAT_ALL = """\
# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,conn_rate_max,conn_tot,intercepted,dcon,dses,wrew,connect,reuse,cache_lookups,cache_hits,srv_icur,src_ilim,qtime_max,ctime_max,rtime_max,ttime_max,eint,idle_conn_cur,safe_conn_cur,used_conn_cur,need_conn_est,uweight,agg_server_status,agg_server_check_status,agg_check_status,-,ssl_sess,ssl_reused_sess,ssl_failed_handshake,h2_headers_rcvd,h2_data_rcvd,h2_settings_rcvd,h2_rst_stream_rcvd,h2_goaway_rcvd,h2_detected_conn_protocol_errors,h2_detected_strm_protocol_errors,h2_rst_stream_resp,h2_goaway_resp,h2_open_connections,h2_backend_open_streams,h2_total_connections,h2_backend_total_streams,h1_open_connections,h1_open_streams,h1_total_connections,h1_total_streams,h1_bytes_in,h1_bytes_out,h1_spliced_bytes_in,h1_spliced_bytes_out,
fe_be,FRONTEND,,,2,2,9986,3,0,0,0,0,1,,,,,OPEN,,,,,,,,,1,2,0,,,,0,2,0,2,,,,0,0,0,1,0,0,,2,2,3,,,0,0,0,0,,,,,,,,,,,,,,,,,,,,,http,,2,2,3,0,0,0,0,,,0,0,,,,,,,0,,,,,,,,,-,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,2,2,3,2,164,207,0,0,
be,up,0,0,2,2,,2,0,0,,0,,0,0,0,0,UP,4,1,0,0,0,2,0,,1,3,1,,2,,2,2,,2,L7OK,200,0,0,0,0,0,0,0,,,,0,0,0,,,,,1,,,0,0,0,0,,,,Layer7 check passed,,2,2,3,,,,127.0.0.1:51591,,http,,,,,,,,0,2,0,,,0,0,0,0,0,0,0,0,0,2,3,4,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,
be,nochk,0,0,0,0,,0,0,0,,0,,0,0,0,0,no check,2,1,0,,,2,,,1,3,2,,0,,2,0,,0,,,,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,,,,,,,,,127.0.0.1:51591,,http,,,,,,,,0,0,0,,,0,0,0,0,0,0,0,0,0,0,0,2,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,
be,dead,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,1,1,0,1,1,1,1,,1,3,3,,0,,2,0,,0,L4CON,,0,0,0,0,0,0,0,,,,0,0,0,,,,,-1,Connection refused,,0,0,0,0,,,,Layer4 connection problem,,2,2,0,,,,127.0.0.1:1,,http,,,,,,,,0,0,0,,,0,0,0,0,0,0,0,0,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,
be,maint,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,1,1,0,0,1,1,1,,1,3,4,,0,,2,0,,0,,,,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,,,,,,,,,127.0.0.1:35325,,http,,,,,,,,0,0,0,,,0,0,0,0,0,0,0,0,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,
be,drain,0,0,0,0,,0,0,0,,0,,0,0,0,0,DRAIN,1,1,0,0,0,1,0,,1,3,5,,0,,2,0,,0,L7OK,200,0,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,Layer7 check passed,,2,2,3,,,,127.0.0.1:35325,,http,,,,,,,,0,0,0,,,0,0,0,0,0,0,0,0,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,
be,v6,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,1,1,0,,,2,,,1,3,6,,0,,2,0,,0,,,,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,,,,,,,,,[fd00::1]:8080,,http,,,,,,,,0,0,0,,,0,0,0,0,0,0,0,0,0,0,0,3,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,
be,fresh,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP 1/2,1,1,0,0,0,2,0,,1,3,7,,0,,2,0,,0,INI,,,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,Initializing,,2,2,2,,,,127.0.0.1:35325,,http,,,,,,,,0,0,0,,,0,0,0,0,0,0,0,0,0,0,0,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,
be,BACKEND,0,0,2,2,999,2,0,0,0,0,,0,0,0,0,UP,7,3,0,,0,2,0,,1,3,0,,2,,1,2,,2,,,,0,0,0,0,0,0,,,,0,0,0,0,0,0,0,1,,,0,0,0,0,,,,,,,,,,,,,,http,roundrobin,,,,,,,0,2,0,0,0,,,0,0,0,0,0,,,,,7,0,0,0,-,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,2,2,25,25,1494,564,0,0,
empty,BACKEND,0,0,0,0,1,0,0,0,0,0,,0,0,0,0,UP,0,0,0,,0,2,,,1,4,0,,0,,1,0,,0,,,,0,0,0,0,0,0,,,,0,0,0,0,0,0,0,-1,,,0,0,0,0,,,,,,,,,,,,,,http,roundrobin,,,,,,,0,0,0,0,0,,,0,0,0,0,0,,,,,0,0,0,0,-,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,

"""

STATE_EMPTY = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n\n"
# `add server be/s9 notanip:80` is accepted as an FQDN server without address.
STATE_FQDN_ROW = "3 be 6 s9 - 0 1 1 1 0 1 0 0 0 0 0 0 notanip 80 - 0 0 - - 0"
# The same `maint` server after `disable health`: check_state 14 -> 10 (not ENABLED).
STATE_MAINT_NO_HEALTH_ROW = "3 be 4 maint 127.0.0.1 0 1 1 1 0 15 3 0 10 0 0 0 - 47537 - 0 0 - - 0"
BACKENDS = "# name\nbe\nempty\n\n"
# One interactive (`prompt`) session: prompt, add, enable health, enable server, del (not in
# maint), del nope/s1, set weight abc, show servers state nope.
PROMPT_STREAM = (
    b"\n> New server registered.\n\n> \n> \n> Only servers in maintenance mode can be deleted.\n"
    b"> No such backend.\n> Empty weight string empty or preceded by garbage\n"
    b"> Can't find backend.\n\n> "
)


# -- show servers state ---------------------------------------------------------------------
def test_servers_state_rows() -> None:
    rows = {r.name: r for r in parse_servers_state(STATE)}
    assert list(rows) == ["up", "nochk", "dead", "maint", "drain", "v6", "fresh"]
    up = rows["up"]
    assert (up.backend, up.address, up.port, up.weight) == ("be", "127.0.0.1", 51591, 4)
    assert (up.op_state, up.admin_state, up.check_status, up.check_result) == (2, 0, 15, 3)
    assert (rows["v6"].address, rows["v6"].port, rows["v6"].weight) == ("fd00::1", 8080, 3)


@pytest.mark.parametrize(
    ("server", "admin", "health"),
    [
        ("up", AdminState.READY, Health.UP),
        ("nochk", AdminState.READY, Health.CHECKING),  # "no check": never a verdict
        ("dead", AdminState.READY, Health.DOWN),  # L4CON, "DOWN"
        ("maint", AdminState.MAINT, Health.UP),  # checks paused; the last one passed
        ("drain", AdminState.DRAIN, Health.UP),
        ("v6", AdminState.MAINT, Health.CHECKING),  # just added: maint, checks not enabled
        ("fresh", AdminState.READY, Health.CHECKING),  # RUNNING but INI: "UP 1/2"
    ],
)
def test_servers_state_admin_and_health(server: str, admin: AdminState, health: Health) -> None:
    row = {r.name: r for r in parse_servers_state(STATE)}[server]
    assert (admin_of(row.admin_state), health_of(row)) == (admin, health)


# A check in progress, captured from 2.6.12 (a server UP, `option httpchk` answered in 100 ms,
# then `mode tcp`): CHK_ST_INPROGRESS (0x01) set in srv_check_state, srv_check_result reset to
# unknown, srv_check_status still the last one (15 L7OK, 6 L4OK); srv_op_state unchanged.
STATE_CHECK_RUNNING_L7 = "3 be 1 s0 127.0.0.1 2 0 1 1 1 15 0 3 7 0 0 0 - 43815 - 0 0 - - 0"
STATE_CHECK_RUNNING_L4 = "3 be 1 s0 127.0.0.1 2 0 1 1 0 6 0 3 7 0 0 0 - 37071 - 0 0 - - 0"
# The first check of a new server in progress (status INI): still no verdict.
STATE_FIRST_CHECK_RUNNING = "3 be 1 s0 127.0.0.1 2 0 1 1 1 1 0 2 7 0 0 0 - 43815 - 0 0 - - 0"
# A DOWN server (12 L7TOUT: accepts, never answers) with its next check running.
STATE_DOWN_CHECK_RUNNING = "3 be 1 dead 127.0.0.1 0 0 1 1 0 12 0 0 7 0 0 0 - 35883 - 0 0 - - 0"


@pytest.mark.parametrize(
    ("row", "health"),
    [
        (STATE_CHECK_RUNNING_L7, Health.UP),
        (STATE_CHECK_RUNNING_L4, Health.UP),
        (STATE_FIRST_CHECK_RUNNING, Health.CHECKING),
        (STATE_DOWN_CHECK_RUNNING, Health.DOWN),
    ],
)
def test_a_check_in_progress_keeps_the_last_verdict(row: str, health: Health) -> None:
    """Issue 17 defect 12: a running check is no reason to take a pod out of rotation."""
    (parsed,) = parse_servers_state(STATE_EMPTY.rstrip("\n") + "\n" + row + "\n")
    assert health_of(parsed) is health


def test_checks_off_is_a_configured_check_switched_off() -> None:
    """Issue 17 defect 4: the plan re-enables a check an add cut short left off."""
    pools = build_pools(parse_servers_state(STATE), parse_stat_csv(STAT_ALL))
    off = {n for n, srv in pools["be"].servers.items() if srv.checks_off}
    assert off == {"v6"}  # added, never `enable health`; "nochk" has no check to switch on
    (maint,) = parse_servers_state(STATE_EMPTY.rstrip("\n") + "\n" + STATE_MAINT_NO_HEALTH_ROW)
    assert build_pools([maint], [])["be"].servers["maint"].checks_off


def test_servers_state_empty_fqdn_and_paused_health() -> None:
    assert parse_servers_state(STATE_EMPTY) == []
    (fqdn,) = parse_servers_state(STATE_EMPTY.rstrip("\n") + "\n" + STATE_FQDN_ROW + "\n")
    assert (fqdn.name, fqdn.address, fqdn.port) == ("s9", "notanip", 80)
    (maint,) = parse_servers_state(STATE_EMPTY.rstrip("\n") + "\n" + STATE_MAINT_NO_HEALTH_ROW)
    assert (admin_of(maint.admin_state), health_of(maint)) == (AdminState.MAINT, Health.CHECKING)


@pytest.mark.parametrize(
    "text",
    ["Can't find backend.\n\n", "", "2\n# be_id\n", "1\nno header\n", STATE_EMPTY + "3 be 1\n"],
)
def test_servers_state_rejects_other_answers(text: str) -> None:
    with pytest.raises(ValueError):
        parse_servers_state(text)


@pytest.mark.parametrize(
    ("flags", "admin"),
    [
        (0x00, AdminState.READY),
        (0x01, AdminState.MAINT),  # forced (set server state maint, disable server)
        (0x02, AdminState.MAINT),  # inherited from a tracked server
        (0x04, AdminState.MAINT),  # `disabled` in the configuration
        (0x20, AdminState.MAINT),  # resolution failure
        (0x08, AdminState.DRAIN),  # forced drain
        (0x10, AdminState.DRAIN),  # inherited drain
        (0x09, AdminState.MAINT),  # maint wins over drain
        (0x40, AdminState.READY),  # FQDN changed: not a state
    ],
)
def test_admin_flags(flags: int, admin: AdminState) -> None:
    assert admin_of(flags) is admin


def _row(op_state: int, admin: int = 0, status: int = 15, result: int = 3) -> ServerStateRow:
    return ServerStateRow("be", "s", "10.0.0.1", 80, op_state, admin, 1, status, result, 6)


@pytest.mark.parametrize(
    ("row", "health"),
    [
        (_row(2), Health.UP),
        (_row(1), Health.UP),  # starting (slowstart): takes traffic
        (_row(3, result=4), Health.DOWN),  # stopping: conditionally passed, wants no traffic
        (_row(0, result=2, status=8), Health.DOWN),
        (_row(0, admin=1, result=2, status=8), Health.DOWN),  # maint, last check failed
        (_row(2, status=1, result=0), Health.CHECKING),
    ],
)
def test_health(row: ServerStateRow, health: Health) -> None:
    assert health_of(row) is health


# `show sess` on 2.6.12 under load, a moment after the app behind `be/a` was killed: two
# streams still point to `a` (scb state 3 = TAR: waiting 1 s to retry the connection; `scur`
# of `a` is already 0), two are served by `b`, one is the CLI itself.
SESS = """\
0x55a726fd66b0: proto=tcpv4 src=127.0.0.1:42634 fe=fe_be be=be srv=b ts=00 epoch=0 age=0s calls=2 rate=0 cpu=0 lat=0 rq[f=49c40080h,i=0,an=8000h,rx=,wx=,ax=] rp[f=80400000h,i=0,an=1400000h,rx=29s,wx=,ax=] scf=[8,80h,fd=11] scb=[8,11h,fd=14] exp=1s rc=0 c_exp=
0x55a726ff23f0: proto=tcpv4 src=127.0.0.1:42648 fe=fe_be be=be srv=b ts=00 epoch=0 age=0s calls=2 rate=0 cpu=0 lat=0 rq[f=49c40080h,i=0,an=8000h,rx=,wx=,ax=] rp[f=80400000h,i=0,an=1400000h,rx=29s,wx=,ax=] scf=[8,80h,fd=15] scb=[8,11h,fd=16] exp=1s rc=0 c_exp=
0x55a726ea68c0: proto=unix_stream src=unix:1 fe=GLOBAL be=<NONE> srv=<none> ts=00 epoch=0 age=0s calls=1 rate=0 cpu=0 lat=0 rq[f=c08000h,i=0,an=00h,rx=,wx=,ax=] rp[f=80008002h,i=0,an=00h,rx=,wx=,ax=] scf=[8,200h,fd=21] scb=[8,1h,fd=-1] exp= rc=0 c_exp=
0x7fe2b00668f0: proto=tcpv4 src=127.0.0.1:42588 fe=fe_be be=be srv=a ts=00 epoch=0 age=0s calls=2 rate=1 cpu=0 lat=0 rq[f=4dc00000h,i=16309,an=8000h,rx=,wx=,ax=] rp[f=80000000h,i=0,an=00h,rx=,wx=,ax=] scf=[8,280h,fd=36] scb=[3,1h,fd=-1] exp=0s rc=1 c_exp=0s
0x7fe2b006b430: proto=tcpv4 src=127.0.0.1:42604 fe=fe_be be=be srv=a ts=00 epoch=0 age=0s calls=2 rate=1 cpu=0 lat=0 rq[f=4dc00000h,i=16309,an=8000h,rx=,wx=,ax=] rp[f=80000000h,i=0,an=00h,rx=,wx=,ax=] scf=[8,280h,fd=43] scb=[3,1h,fd=-1] exp=0s rc=1 c_exp=0s

"""


# -- removal: what still refers to a server (issue 17 defect 11) ------------------------------
def test_streams_by_server_counts_streams_of_one_backend() -> None:
    assert streams_by_server(SESS, "be") == {"a": 2, "b": 2}
    assert streams_by_server(SESS, "b") == {}  # a backend named like a server: no match
    assert streams_by_server("\n", "be") == {}


def test_removal_blockers_streams_sessions_and_connections() -> None:
    # STAT_ALL: `up` has 2 sessions on 2 connections in use; `dead` and `maint` nothing.
    sess = SESS.replace("srv=a ", "srv=dead ")
    assert removal_blockers("be", ["up", "dead", "maint", "ghost"], sess, STAT_ALL) == {
        "up": "2 sessions, 2 connections in use",
        "dead": "2 streams",
    }
    assert removal_blockers("be", ["maint"], SESS, STAT_ALL) == {}
    assert removal_blockers("other", ["up"], SESS, STAT_ALL) == {}  # another backend's server
    with pytest.raises(ValueError):
        removal_blockers("be", ["up"], SESS, "No such proxy.\n")


# -- show stat ----------------------------------------------------------------------------------
def test_stat_csv_servers_only() -> None:
    rows = {(r.backend, r.name): r for r in parse_stat_csv(STAT_ALL)}
    assert set(rows) == {
        ("be", n) for n in ("up", "nochk", "dead", "maint", "drain", "v6", "fresh")
    }
    assert {n: r.status for (_, n), r in rows.items()} == {
        "up": "UP",
        "nochk": "no check",
        "dead": "DOWN",
        "maint": "MAINT",
        "drain": "DRAIN",
        "v6": "MAINT",
        "fresh": "UP 1/2",
    }
    assert rows["be", "up"].sessions == 2
    assert rows["be", "dead"].sessions == 0


@pytest.mark.parametrize("text", ["No such proxy.\n\n", ""])
def test_stat_csv_rejects_other_answers(text: str) -> None:
    with pytest.raises(ValueError):
        parse_stat_csv(text)


def test_build_pools_joins_sessions_and_keeps_empty_backends() -> None:
    pools = build_pools(
        parse_servers_state(STATE), parse_stat_csv(STAT_ALL), parse_backends(BACKENDS)
    )
    assert set(pools) == {"be", "empty"}
    assert pools["empty"].servers == {}
    up = pools["be"].servers["up"]
    assert (up.address, up.port, up.weight, up.admin, up.health, up.sessions) == (
        "127.0.0.1",
        51591,
        4,
        AdminState.READY,
        Health.UP,
        2,
    )
    assert pools["be"].servers["v6"].address == "fd00::1"
    # A server in `show servers state` but not (yet) in `show stat`: 0 sessions.
    assert build_pools(parse_servers_state(STATE), [])["be"].servers["up"].sessions == 0


def test_the_pool_reader_reads_what_build_pools_does_and_rereads_what_changed() -> None:
    reader = PoolReader()
    backends = parse_backends(BACKENDS)
    plain = build_pools(parse_servers_state(STATE), parse_stat_csv(STAT_ALL), backends)
    assert reader.read(STATE, STAT_ALL, backends) == plain
    assert reader.read(STATE, STAT_ALL, backends) == plain
    kept = reader.read(STATE, STAT_ALL, backends)["be"].servers
    # a timer column that changes every second: the same server, not read again
    ticked = STATE.replace("3 be 1 up 127.0.0.1 2 0 4 4 2 ", "3 be 1 up 127.0.0.1 2 0 4 4 9 ")
    assert reader.read(ticked, STAT_ALL, backends)["be"].servers["up"] is kept["up"]
    # what a verdict reads changed: read again (drained; one session less; rising)
    drained = ticked.replace("3 be 1 up 127.0.0.1 2 0 ", "3 be 1 up 127.0.0.1 2 8 ")
    quieter = STAT_ALL.replace("be,up,0,0,2,2,", "be,up,0,0,1,2,")
    risen = STATE.replace(
        "3 be 3 dead 127.0.0.1 0 0 1 1 1 8 2 0 ", "3 be 3 dead 127.0.0.1 0 0 1 1 1 8 2 1 "
    )
    risen_stat = STAT_ALL.replace(",DOWN,1,1,0,1,1,", ",DOWN 1/2,1,1,0,1,1,")
    for state, stat in ((drained, STAT_ALL), (STATE, quieter), (risen, risen_stat)):
        want = build_pools(parse_servers_state(state), parse_stat_csv(stat), backends)
        assert reader.read(state, stat, backends) == want
    assert want["be"].servers["dead"].health is Health.CHECKING  # (the last case: rising)
    # a server only in `show servers state`: 0 sessions, as build_pools says
    assert reader.read(STATE, STAT_ALL.split("\nbe,")[0] + "\n")["be"].servers["up"].sessions == 0
    with pytest.raises(ValueError):
        reader.read("No such proxy.\n\n", STAT_ALL)


def test_reads_of_a_few_backends_and_of_all_share_what_the_reader_knows() -> None:
    """A leader reads a share of the backends each round and all of them only at a term's
    start: a few backends read one by one keep the servers of the others as they were known
    (not built again at the next read of all), and a backend gone is forgotten."""
    reader = PoolReader()
    backends = parse_backends(BACKENDS)
    whole = reader.read(STATE, STAT_ALL, backends)
    few = reader.read(STATE, STAT_ALL, ["be"], whole=False)
    assert few == {"be": whole["be"]}
    assert all(few["be"].servers[n] is s for n, s in whole["be"].servers.items())
    again = reader.read(STATE, STAT_ALL, backends)
    assert all(again["be"].servers[n] is s for n, s in whole["be"].servers.items())
    reader.drop(["be"])
    assert all(
        reader.read(STATE, STAT_ALL, backends)["be"].servers[n] is not s
        for n, s in whole["be"].servers.items()
    )


def test_the_pool_reader_asks_show_stat_only_of_backends_with_servers_out_of_rotation() -> None:
    """`show stat` is 4 MB at 10,000 servers, read every round for the few being drained: it is
    asked only of the backends with a server drained, in maintenance or down."""
    rows = STATE.splitlines()
    # backend "ok": the same servers as "up" and "fresh" (READY, running), nothing out
    ok_rows = [r.replace("3 be ", "4 ok ", 1) for r in rows if r.startswith(("3 be 1 ", "3 be 7 "))]
    state = "\n".join([*rows[:-1], *ok_rows, "", ""])
    asked: list[set[str]] = []

    def stat_of(pools: Collection[str]) -> list[str]:
        asked.append(set(pools))
        return [STAT_ALL]  # (more than asked: what was not asked is not read)

    got = PoolReader().read(state, stat_of, ["be", "ok", "empty"])
    assert asked == [{"be"}] == [out_of_rotation_pools(state)]
    # `show stat` of all (past the provider's limit of backends): "ok" is not read all the same
    up_row = next(r for r in STAT_ALL.splitlines() if r.startswith("be,up,"))
    with_ok = STAT_ALL.replace(up_row, f"{up_row}\n{up_row.replace('be,up,', 'ok,up,', 1)}")
    assert PoolReader().read(state, lambda _p: [with_ok])["ok"].servers["up"].sessions is None
    full = build_pools(parse_servers_state(state), parse_stat_csv(STAT_ALL), ["empty"])
    assert got["be"] == full["be"] and got["empty"] == PoolState("empty")
    assert got["be"].servers["up"].sessions == 2  # read: its backend has servers out
    assert {n: s.sessions for n, s in got["ok"].servers.items()} == {"up": None, "fresh": None}
    assert {n: replace(s, sessions=0) for n, s in got["ok"].servers.items()} == {
        n: replace(s, sessions=0) for n, s in full["ok"].servers.items()
    }
    # nothing out of rotation anywhere: no `show stat` at all
    all_in = "\n".join([*rows[:2], *ok_rows, "", ""])
    asked.clear()
    assert set(PoolReader().read(all_in, stat_of)) == {"ok"} and asked == []


# -- answers ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cmd", "text", "ok", "reason"),
    [
        (
            "add server be/s1 10.244.9.1:8080 check weight 5",
            "New server registered.\n\n",
            True,
            "ok",
        ),
        (
            "add server be/s1 10.244.9.1:8080 check",
            "Already exists a server with the same name in backend.\n\n",
            False,
            "exists",
        ),
        ("add server nope/s1 10.244.9.1:8080", "No such backend.\n", False, "no_backend"),
        ("add server be/s6 10.1.1.1:8080 bogus", "unknown keyword 'bogus'.\n\n", False, "rejected"),
        (
            "add server be/s7 10.1.1.1:8080 weight 999",
            "weight of server s7 is not within 0 and 256 (999)..\n\n",
            False,
            "rejected",
        ),
        ("add server be/s8 10.1.1.1:99999", "invalid port '99999'\n\n", False, "rejected"),
        (
            "add server be/bad$name 10.1.1.1:80",
            "character '$' is not permitted in server name 'bad$name'.\n\n",
            False,
            "rejected",
        ),
        (
            "add server be/x",
            "'server' expects <name> and <addr>[:<port>] as arguments.\n\n",
            False,
            "rejected",
        ),
        ("add server be/x 10.0.0.1:80", "Permission denied\n", False, "denied"),
        ("enable health be/s1", "\n", True, "ok"),
        ("enable health be/nosuch", "No such server.\n\n", False, "no_server"),
        ("enable health nope/s1", "No such backend.\n\n", False, "no_backend"),
        ("enable server be/s1", "\n", True, "ok"),
        ("enable server be/nosuch", "No such server.\n\n", False, "no_server"),
        ("set server be/s1 weight 7", "\n", True, "ok"),
        (
            "set server be/s1 weight 300",
            "Absolute weight can only be between 0 and 256 inclusive.\n\n",
            False,
            "rejected",
        ),
        (
            "set server be/s1 weight abc",
            "Empty weight string empty or preceded by garbage\n",
            False,
            "rejected",
        ),
        ("set server be/nosuch weight 7", "No such server.\n\n", False, "no_server"),
        ("set server nope/s1 weight 7", "No such backend.\n\n", False, "no_backend"),
        ("set server be/s1 state drain", "\n", True, "ok"),
        (
            "set server be/s1 state bogus",
            "'set server <srv> state' expects 'ready', 'drain' and 'maint'.\n\n",
            False,
            "rejected",
        ),
        ("set server be/nosuch state maint", "No such server.\n\n", False, "no_server"),
        ("set server be/s1 weight 3", "Permission denied\n", False, "denied"),
        (
            "del server be/s1",
            "Only servers in maintenance mode can be deleted.\n",
            False,
            "not_in_maint",
        ),
        (
            "del server be/s1",
            "Server still has connections attached to it, cannot remove it.\n",
            False,
            "has_connections",
        ),
        ("del server be/s1", "Server deleted.\n", True, "ok"),
        ("del server be/s1", "No such server.\n", False, "no_server"),
        ("del server nope/s1", "No such backend.\n", False, "no_backend"),
        ("show servers state nope", "Can't find backend.\n\n", False, "no_backend"),
        ("show stat nope 4 -1", "No such proxy.\n\n", False, "no_backend"),
        ("show servers state be", STATE, True, "ok"),
        (
            "bogus command",
            "Unknown command, but maybe one of the following ones is a better match:\n  add map [@<ver>] <map> <key> <val>      : add a map entry (payload supported instead of key/val)\n  quit                                    : disconnect\n\n",
            False,
            "unknown_command",
        ),
    ],
)
def test_classify_answer(cmd: str, text: str, ok: bool, reason: str) -> None:
    answer = classify_answer(cmd, text)
    assert (answer.ok, answer.reason) == (ok, reason)
    assert answer.text == text.strip()


def test_a_show_answer_fails_only_on_its_first_line() -> None:
    """A check's text inside `show stat` (``last_chk``, an agent's answer) can hold any words:
    a failure is what HAProxy says on the first line, and a 4 MB answer is not searched nine
    times."""
    row = STAT_ALL.splitlines()[2].replace("Layer7 check passed", "Permission denied")
    answer = classify_answer("show stat -1 4 -1", "\n".join([STAT_ALL.splitlines()[0], row]))
    assert (answer.ok, answer.reason) == (True, "ok")
    assert classify_answer("show stat nope 4 -1", "No such proxy.\n\n").reason == "no_backend"
    assert classify_answer("set server be/s1 state ready", "No such server.\n").reason == (
        "no_server"
    )


def test_failure_reasons_are_bounded() -> None:
    reasons = {r for _, r in FAILURES} | {"ok", "rejected"}
    assert len(reasons) <= 10
    assert (
        classify_answer("del server be/s1", "Server deleted.\n").describe() == "ok: Server deleted."
    )


@pytest.mark.parametrize(
    ("cmd", "verb"),
    [
        ("add server be/s1 10.0.0.1:80 check", "add server"),
        ("set server be/s1 state drain", "set server"),
        ("show servers state be", "show servers state"),
        ("show stat -1 4 -1", "show stat"),
    ],
)
def test_command_verb(cmd: str, verb: str) -> None:
    assert command_verb(cmd) == verb


def test_a_retried_add_or_delete_that_already_happened_is_a_success() -> None:
    exists = classify_answer(
        "add server be/s1 10.0.0.1:80", "Already exists a server with the same name in backend.\n"
    )
    gone = classify_answer("del server be/s1", "No such server.\n")
    assert not exists.ok and not gone.ok
    assert retried_answer("add server be/s1 10.0.0.1:80", exists).ok
    assert retried_answer("del server be/s1", gone).ok
    # Anything else keeps its verdict, retried or not.
    weight = classify_answer("set server be/s1 weight 5", "No such server.\n")
    assert retried_answer("set server be/s1 weight 5", weight) == weight


def test_split_answers_of_a_prompt_session() -> None:
    answers, used = split_answers(PROMPT_STREAM)
    assert used == len(PROMPT_STREAM)
    assert answers == [
        "",  # the `prompt` command itself
        "New server registered.\n",
        "",
        "",
        "Only servers in maintenance mode can be deleted.",
        "No such backend.",
        "Empty weight string empty or preceded by garbage",
        "Can't find backend.\n",
    ]
    # A chunk cut inside the delimiter: nothing after the last complete answer is consumed.
    cut = PROMPT_STREAM.index(b"Only") - 1
    partial, used = split_answers(PROMPT_STREAM[:cut])
    assert len(partial) == 3 and used == len(b"\n> New server registered.\n\n> \n> ")


# -- commands -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("addr", "port", "out"),
    [
        ("10.244.0.2", 8080, "10.244.0.2:8080"),
        ("fd00::1", 8080, "[fd00::1]:8080"),
        ("fd00:0:0::4", 80, "[fd00::4]:80"),  # compressed, as HAProxy prints it back
    ],
)
def test_format_address(addr: str, port: int, out: str) -> None:
    assert format_address(addr, port) == out


@pytest.mark.parametrize(("addr", "port"), [("notanip", 80), ("10.0.0.1", 0), ("[fd00::1]", 80)])
def test_format_address_rejects(addr: str, port: int) -> None:
    with pytest.raises(ValueError):
        format_address(addr, port)


OPTS = "check inter 1s fall 2 rise 2"


def test_action_steps() -> None:
    add = action_steps("be", Action(Op.ADD, "s1", "fd00::1", 8080, 5), OPTS)
    assert add == [
        ["add server be/s1 [fd00::1]:8080 check inter 1s fall 2 rise 2 weight 5"],
        ["enable health be/s1", "enable server be/s1"],
    ]
    assert action_steps("be", Action(Op.STAGE, "s1", "10.0.0.1", 80, 5), OPTS) == [
        [
            "add server be/s1 10.0.0.1:80 check inter 1s fall 2 rise 2 weight 5",
            "enable health be/s1",
            "set server be/s1 state drain",
        ]
    ]
    no_check = action_steps("be", Action(Op.ADD, "s1", "10.0.0.1", 80), "inter 1s")
    assert no_check == [["add server be/s1 10.0.0.1:80 inter 1s"], ["enable server be/s1"]]
    assert action_steps("be", Action(Op.SET_WEIGHT, "s1", weight=0), OPTS) == [
        ["set server be/s1 weight 0"]
    ]
    assert action_steps("be", Action(Op.ENABLE, "s1"), OPTS) == [
        ["enable health be/s1", "set server be/s1 state ready"]
    ]
    assert action_steps("be", Action(Op.ENABLE, "s1"), "inter 1s") == [
        ["set server be/s1 state ready"]
    ]
    assert action_steps("be", Action(Op.DRAIN, "s1"), OPTS) == [["set server be/s1 state drain"]]
    assert action_steps("be", Action(Op.REMOVE, "s1"), OPTS) == [
        ["set server be/s1 state maint"],
        ["del server be/s1"],
    ]


@pytest.mark.parametrize(
    "action",
    [
        Action(Op.ADD, "s1"),  # no address
        Action(Op.STAGE, "s1"),
        Action(Op.ADD, "s1", "web.example", 80),  # not an IP literal
        Action(Op.SET_WEIGHT, "s1"),  # no weight
        Action(Op.DRAIN, "s1\nshutdown sessions server be/s2"),  # would inject a command
        Action(Op.DRAIN, "a b"),
        Action(Op.DRAIN, "a;b"),
    ],
)
def test_action_steps_rejects(action: Action) -> None:
    with pytest.raises(ValueError):
        action_steps("be", action, OPTS)


def test_split_batches_names_each_server_once() -> None:
    a = [
        Action(Op.REMOVE, "s1"),
        Action(Op.ADD, "s2", "10.0.0.2", 80),
        Action(Op.ADD, "s1", "10.0.0.9", 80),
        Action(Op.DRAIN, "s3"),
    ]
    assert split_batches(a) == [a[:2], a[2:]]
    assert split_batches([]) == []


# -- endpoints and provider without HAProxy ---------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "path", "host", "port"),
    [
        ("unix:/run/haproxy/admin.sock", "/run/haproxy/admin.sock", None, None),
        ("tcp:127.0.0.1:9999", None, "127.0.0.1", 9999),
        ("tcp:[::1]:9999", None, "::1", 9999),
        ("tcp:lb.local:1", None, "lb.local", 1),
    ],
)
def test_parse_endpoint(raw: str, path: str | None, host: str | None, port: int | None) -> None:
    ep = parse_endpoint(raw)
    assert (ep.raw, ep.path, ep.host, ep.port) == (raw, path, host, port)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "/run/haproxy.sock",
        "unix:",
        "tcp:",
        "tcp:host",
        "tcp:host:0",
        "tcp::80",
        "tcp:h:x",
        "tcp:h:70000",
        "http://h:80",
        "udp:h:80",
    ],
)
def test_parse_endpoint_rejects(raw: str) -> None:
    with pytest.raises(ValueError, match="unix:/path/to/socket or tcp:HOST:PORT"):
        parse_endpoint(raw)


def test_provider_validates_settings() -> None:
    with pytest.raises(ValueError, match="bad HAProxy runtime endpoint"):
        HAProxyProvider(["unix:/a", "nope"])
    with pytest.raises(ValueError):
        HAProxyProvider("unix:/a")
    with pytest.raises(ValueError):
        HAProxyProvider([])
    with pytest.raises(ValueError):
        HAProxyProvider(["unix:/a"], server_options="check\nshutdown sessions server be/s")
    p = HAProxyProvider(["unix:/a", "tcp:127.0.0.1:1"])
    assert p.name == "haproxy"
    assert list(p.instances()) == ["unix:/a", "tcp:127.0.0.1:1"]
    with pytest.raises(ValueError, match="unknown HAProxy instance"):
        p.observe("unix:/b", "be")


class RecordingClock(Clock):
    def __init__(self) -> None:
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def test_unreachable_retries_with_backoff_then_transient(tmp_path: object) -> None:
    clock = RecordingClock()
    calls: list[tuple[str, str, str]] = []
    inst = f"unix:{tmp_path}/missing.sock"
    p = HAProxyProvider(
        [inst], retries=3, backoff_s=0.2, clock=clock, on_command=lambda *a: calls.append(a)
    )
    with pytest.raises(TransientError, match="after 4 attempts"):
        p.observe(inst, "be")
    assert clock.slept == pytest.approx([0.2, 0.4, 0.8])
    assert calls == [(inst, "show servers state", "error")] * 4
    with pytest.raises(TransientError):
        p.apply(inst, "be", [Action(Op.DRAIN, "s1")])


def test_no_io_for_invalid_input(tmp_path: object) -> None:
    inst = f"unix:{tmp_path}/missing.sock"
    p = HAProxyProvider([inst], retries=0)
    with pytest.raises(PoolNotFound):
        p.observe(inst, "bad pool")
    with pytest.raises(PoolNotFound):
        p.apply(inst, "be\nx", [Action(Op.DRAIN, "s1")])
    bad = Action(Op.ADD, "s1")
    result = p.apply(inst, "be", [bad])  # nothing valid to send: no connection needed
    assert result.done == 0
    assert result.failed == ((bad, "invalid: add needs an address and a port"),)
    assert p.apply(inst, "be", []).done == 0


def test_process_id_from_show_info() -> None:
    """HAProxy 2.6.12's ``show info`` (abridged): a restart changes the pid or, for pid 1 of a
    restarted container, the start time."""
    info = "Name: HAProxy\nVersion: 2.6.12-1+deb12u4\nPid: 12698\nUptime_sec: 0\n"
    info += "node: vm\nBuild info: 2.6.12-1+deb12u4\nStart_time_sec: 1796166739\nTainted: 0\n"
    assert process_id(info) == "12698@1796166739"
    assert process_id(info.replace("1796166739", "1796166800")) != process_id(info)
    assert process_id("Pid: 1\n") == "1@?"
    for bad in ("", "Unknown command.\n", "Pid: \n"):
        with pytest.raises(ValueError, match="show info"):
            process_id(bad)


@pytest.mark.parametrize(
    ("status", "going_up"),
    [("DOWN 1/2", True), ("DOWN 2/3", True), ("DOWN", False), ("UP 1/2", False), ("DRAIN", False)],
)
def test_rising(status: str, going_up: bool) -> None:
    assert rising(status) is going_up


def test_answers_of_several_backends_join_into_one() -> None:
    head, *servers = STATE.strip("\n").split("\n")[:2], *STATE.strip("\n").split("\n")[2:]
    first = "\n".join([*head, *servers[:2]]) + "\n\n"
    second = "\n".join([*head, *servers[2:]]) + "\n\n"
    empty = "\n".join(head) + "\n\n"
    assert parse_servers_state(join_states([first, empty, second])) == parse_servers_state(STATE)
    assert join_states([]) == ""
    with pytest.raises(ValueError, match="different formats"):
        join_states([first, "1\n# be_id be_name\n3 be\n"])

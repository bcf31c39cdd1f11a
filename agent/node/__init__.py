"""The node agent: datapath readiness, condition reporter, drain manager, node HTTP API."""

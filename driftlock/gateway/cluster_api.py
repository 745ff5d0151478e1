"""`GET /v1/cluster`: the operator's view of the cluster (what `driftlock cluster status
--json` prints) for tenant owners and admins. Node ids, partitions and sequence numbers
only: no tenant's data is in it."""

from typing import Any

from pydantic import BaseModel
from starlette.responses import JSONResponse, Response

from driftlock.cluster.status import cluster_status
from driftlock.gateway.roles import Permission
from driftlock.gateway.routing import Call, Endpoint


class ClusterStatus(BaseModel):
    members: list[dict[str, Any]]
    """id, address, live, draining, weight, started_at, heartbeat_age_s, partitions,
    active_actors"""
    partitions: list[dict[str, Any]]
    """partition, owner, last_applied_seq, lag, snapshot_seq, snapshot_age_s"""
    unowned: list[int]


async def get_cluster(call: Call) -> Response:
    s = call.gateway.settings
    status = await cluster_status(call.gateway.js, s.prefix, s.partitions, s.member_ttl_s)
    return JSONResponse(ClusterStatus.model_validate(status).model_dump())


ENDPOINTS = [
    Endpoint("GET", "/v1/cluster", get_cluster,
             "Members, partition owners, lag and snapshot age (operators)", "cluster",
             Permission.VIEW_CLUSTER, response=ClusterStatus),
]  # fmt: skip

"""The public gRPC port of ``stsun serve``: the inference service's client calls, bounded, forwarded
to Triton's internal gRPC port.

Triton 2.51 has no limit on gRPC message size (it takes up to 2 GiB and inflates compressed
messages itself) nor on concurrent calls: four small gzip messages took it from 0.3 to 3.1 GB.
This front receives at most ``max_message_bytes`` per message, counted after decompression by
gRPC itself, and at most ``max_calls`` calls at once (more: RESOURCE_EXHAUSTED before their
messages are read). It serves health, readiness, metadata, configuration, statistics and
``ModelInfer`` of the served models; other calls (repository, shared memory, logging, trace,
streaming) get PERMISSION_DENIED unless the control APIs were opened. An inference request is
checked before it is forwarded (model, inputs' names, datatypes and shapes, sizes of raw contents,
parameters: no shared-memory regions, no sequence ids, no probes). Readiness answers false while
the supervisor finds a model unhealthy or the server draining, as over HTTP. A client's
cancellation or deadline cancels the forwarded call.
"""
from __future__ import annotations

import grpc
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2 as pb

from stsun.errors import ServerError

from .requests import INT64_MAX, ModelLimits, Refused, request_id, tensor_bytes
from .server import ADMIN_HEADER

SERVICE = "/inference.GRPCInferenceService/"
PUBLIC = {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelConfig",
          "ModelStatistics", "ModelInfer"}
STREAMING = {"ModelStreamInfer"}
# Triton's restricted-protocol check reads this metadata key (its --grpc-restricted-protocol header)
GRPC_ADMIN_KEY = f"triton-grpc-protocol-{ADMIN_HEADER}"
REQUEST_PARAMETERS = {"timeout": "int64_param", "priority": "uint64_param"}


def check_infer(request: pb.ModelInferRequest, limits: ModelLimits) -> None:
    """Raises Refused with the reason for anything this server does not serve."""
    request_id(request.id)
    for key, value in request.parameters.items():
        field = REQUEST_PARAMETERS.get(key)
        if (field is None or value.WhichOneof("parameter_choice") != field
                or not 0 <= getattr(value, field) <= INT64_MAX):
            raise Refused(f"request parameter {key!r} is not accepted here (only a non-negative "
                          f"{' or '.join(REQUEST_PARAMETERS)})")
    if len(request.inputs) != len(limits.inputs):
        raise Refused(f"model '{request.model_name}' takes {len(limits.inputs)} input(s) {sorted(limits.inputs)}, "
                      f"got {len(request.inputs)}")
    if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
        raise Refused(f"{len(request.raw_input_contents)} raw input contents for {len(request.inputs)} inputs")
    for i, inp in enumerate(request.inputs):
        if inp.parameters:
            raise Refused(f"input '{inp.name}' parameters are not accepted here: {sorted(inp.parameters)}")
        if problem := limits.shape_problem(request.model_name, {"name": inp.name, "datatype": inp.datatype,
                                                                "shape": list(inp.shape)}):
            raise Refused(problem)
        if request.raw_input_contents:
            size = tensor_bytes(inp.datatype, inp.shape)
            if len(request.raw_input_contents[i]) != size:
                raise Refused(f"input '{inp.name}' has {len(request.raw_input_contents[i])} bytes of raw contents; "
                              f"{inp.datatype} of shape {list(inp.shape)} is {size} bytes")
    for out in request.outputs:
        if out.name not in limits.outputs:
            raise Refused(f"model '{request.model_name}' has no output {out.name!r}; its outputs are "
                          f"{sorted(limits.outputs)}")
        if out.parameters:
            raise Refused(f"output '{out.name}' parameters are not accepted here: {sorted(out.parameters)}")


class GrpcFront(grpc.GenericRpcHandler):
    """Listens on ``host``:``port`` (127.0.0.1 unless told) and forwards to Triton's internal gRPC endpoint at
    ``upstream``, adding the ``admin_key`` that endpoint requires. Runs on the fronts' event loop:
    ``start()`` and ``stop()`` are coroutines."""

    def __init__(self, upstream: str, admin_key: str, limits: dict[str, ModelLimits], port: int,
                 max_message_bytes: int, timeout_s: float = 60.0, open_control: bool = False,
                 max_calls: int = 32, host: str = "127.0.0.1") -> None:
        self.upstream, self.admin_key, self.limits, self.port = upstream, admin_key, limits, port
        self.max_message, self.timeout_s, self.open_control, self.max_calls = (max_message_bytes, timeout_s,
                                                                               open_control, max_calls)
        self.host = host
        self.draining = False
        self.unready: dict[str, str] = {}  # as the guard's: set by the supervisor
        self.in_flight = 0
        self._server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method
        name = method.removeprefix(SERVICE)
        if name in STREAMING:
            return grpc.stream_stream_rpc_method_handler(self._refuse_stream)
        if not method.startswith(SERVICE):
            return None  # UNIMPLEMENTED

        async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await self._handle(method, name, raw, context)

        return grpc.unary_unary_rpc_method_handler(handle)  # raw bytes in and out

    async def _refuse_stream(self, requests, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "streaming inference is not served here; use ModelInfer")

    async def _handle(self, method: str, name: str, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if name not in PUBLIC and not self.open_control:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"{name} is not served here: this port serves inference, health, metadata and "
                                f"statistics (the control APIs are closed; see stsun serve --open-control-api)")
        try:
            if name == "ServerReady" and (self.draining or self.unready):
                return pb.ServerReadyResponse(ready=False).SerializeToString()
            if name == "ModelReady":
                model = pb.ModelReadyRequest.FromString(raw).name
                if self.draining or model in self.unready:
                    return pb.ModelReadyResponse(ready=False).SerializeToString()
            if name != "ModelInfer":
                return await self._forward(method, raw, context)
            request = pb.ModelInferRequest.FromString(raw)
        except DecodeError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request cannot be parsed ({err})")
        limits = self.limits.get(request.model_name)
        if limits is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{request.model_name}'; this server "
                                                           f"serves {sorted(self.limits)}")
        if self.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                "the server is shutting down; send this request to another replica")
        if why := self.unready.get(request.model_name):
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"not ready: {why}; retry in a few seconds")
        try:
            check_infer(request, limits)
        except Refused as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        del request  # the raw bytes go upstream as they came
        self.in_flight += 1
        try:
            return await self._forward(method, raw, context)
        finally:
            self.in_flight -= 1

    async def _forward(self, method: str, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        remaining = context.time_remaining()
        timeout = self.timeout_s if remaining is None else min(self.timeout_s, remaining)
        call = self._channel.unary_unary(method)  # bytes pass through unparsed
        try:  # a cancelled client cancels this task, and so the upstream call
            return await call(raw, metadata=((GRPC_ADMIN_KEY, self.admin_key),), timeout=timeout)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and timeout == self.timeout_s:
                await context.abort(err.code(), f"the inference server did not answer within {self.timeout_s:g} s "
                                                f"(stsun serve --request-timeout)")
            await context.abort(err.code(), err.details() or "")

    async def start(self) -> None:
        # upstream answers are bounded by the models' outputs, not by this limit
        self._channel = grpc.aio.insecure_channel(self.upstream, options=[("grpc.max_receive_message_length", -1),
                                                                          ("grpc.max_send_message_length", -1)])
        self._server = grpc.aio.server(handlers=[self], maximum_concurrent_rpcs=self.max_calls,
                                       options=[("grpc.max_receive_message_length", self.max_message),
                                                ("grpc.max_send_message_length", -1)])
        try:
            self._server.add_insecure_port(f"{self.host}:{self.port}")
        except RuntimeError as err:
            await self._channel.close()
            raise ServerError(f"the gRPC front could not listen on {self.host}:{self.port}: {err}") from None
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop(grace=5.0)  # in-flight calls were drained before
        await self._channel.close()

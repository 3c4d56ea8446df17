"""Start and stop the Storage SCP on the configured AE title and port."""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from pacs_node.dicom.validation import ACCEPTED
from pacs_node.ingest import Receiver
from pacs_node.routing import Routing
from pacs_node.scp.handlers import handle_requested, handle_store
from pacs_node.settings import Settings
from pacs_node.sockets import CONNECTION_HANDLERS
from pacs_node.tls import server_context

logger = logging.getLogger(__name__)

# The uncompressed syntaxes and every compressed one the node decodes
# (pacs_node/dicom/codecs.py); instances are stored as received, byte for byte.
TRANSFER_SYNTAXES = list(ACCEPTED)


def build_ae(settings: Settings) -> AE:
    """An AE accepting Verification and every storage SOP class, in every transfer
    syntax the node can decode.

    Every storage class is accepted so that a whole study (secondary captures,
    structured reports, ...) can be sent without association failures: instances the
    node does not enhance are stored and their series recorded as SKIPPED with a reason.
    """
    ae = AE(ae_title=settings.ae_title)
    ae.require_called_aet = True
    ae.maximum_associations = settings.scp.maximum_associations
    ae.maximum_pdu_size = settings.scp.max_pdu_bytes
    ae.acse_timeout = settings.scp.acse_timeout_s
    ae.dimse_timeout = settings.scp.dimse_timeout_s
    ae.network_timeout = settings.scp.network_timeout_s
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
    return ae


class SharedPortServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, binding with ``SO_REUSEPORT``: several processes
    listen on one port and the kernel spreads new connections over them."""

    def server_bind(self) -> None:
        assert self.socket is not None  # made by the constructor, before binding
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def _check_port_free(address: tuple[str, int]) -> None:
    """Raise OSError (address in use) when something listens on ``address`` already.

    ``SO_REUSEPORT`` would let this node join another process's port (another node with
    receiver processes, or an old one still draining) and split the senders' associations
    between them without a word. A bind without it fails when anyone listens there.
    """
    with socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        probe.bind(address)


def _serve(
    ae: AE,
    address: tuple[str, int],
    handlers: list[Any],
    shared: bool,
    first: bool,
    **options: Any,
) -> ThreadedAssociationServer | None:
    """A server accepting on ``address`` in a background thread; on a port shared with
    other processes when ``shared`` (``first``: the node's own server, which finds the
    port free)."""
    if not shared:
        return ae.start_server(address, block=False, evt_handlers=handlers, **options)
    if first:
        _check_port_free(address)
    server = ae.make_server(address, evt_handlers=handlers, server_class=SharedPortServer,
                            **options)  # fmt: skip
    threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True).start()
    # As AE.start_server does: the AE's list of its servers, which server.shutdown() leaves.
    ae._servers.append(server)
    return server


class StorageServers:
    """The SCP's listening servers (plain, and TLS when configured); one AE, so the
    association limit counts both."""

    def __init__(self, servers: list[ThreadedAssociationServer]) -> None:
        self.servers = servers

    def shutdown(self) -> None:
        """Stop every server."""
        for server in self.servers:
            server.shutdown()


def start_scp(
    settings: Settings, receiver: Receiver, routing: Routing | None = None, first: bool = True
) -> StorageServers:
    """Start the SCP in background threads on its port, and on ``tls.port`` with TLS;
    ``shutdown()`` stops them. With ``scp.processes`` above 1 the ports are shared with
    the node's receiver processes (:func:`pacs_node.scp.process.receive`, which pass
    ``first=False``: the node's own server checks that nobody else listens there)."""
    ae = build_ae(settings)
    routes = routing or receiver.routing
    handlers: list[Any] = [
        (evt.EVT_REQUESTED, handle_requested, [routes]),
        (evt.EVT_C_STORE, handle_store, [receiver]),
        *CONNECTION_HANDLERS,
    ]
    address = settings.scp.bind_address
    shared = settings.scp.processes > 1
    servers = [_serve(ae, (address, settings.port), handlers, shared, first)]
    titles = ", ".join(routes.ae_titles)
    logger.info("Storage SCP %s listening on %s:%d", titles, address, settings.port)
    if settings.tls.port is not None:
        context = server_context(settings.tls)
        servers.append(_serve(ae, (address, settings.tls.port), handlers, shared, first,
                              ssl_context=context))  # fmt: skip
        verified = "client certificates required" if settings.tls.ca_file else "no client check"
        logger.info("Storage SCP %s listening with TLS on %s:%d (%s)", titles, address,
                    settings.tls.port, verified)  # fmt: skip
    return StorageServers([s for s in servers if s is not None])

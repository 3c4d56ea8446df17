"""Start and stop the Storage SCP on the configured AE title and port."""

from __future__ import annotations

import logging
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
    settings: Settings, receiver: Receiver, routing: Routing | None = None
) -> StorageServers:
    """Start the SCP in background threads on its port, and on ``tls.port`` with TLS;
    ``shutdown()`` stops them."""
    ae = build_ae(settings)
    routes = routing or receiver.routing
    handlers: list[Any] = [
        (evt.EVT_REQUESTED, handle_requested, [routes]),
        (evt.EVT_C_STORE, handle_store, [receiver]),
        *CONNECTION_HANDLERS,
    ]
    address = settings.scp.bind_address
    servers = [ae.start_server((address, settings.port), block=False, evt_handlers=handlers)]
    titles = ", ".join(routes.ae_titles)
    logger.info("Storage SCP %s listening on %s:%d", titles, address, settings.port)
    if settings.tls.port is not None:
        context = server_context(settings.tls)
        servers.append(ae.start_server((address, settings.tls.port), block=False,
                                       evt_handlers=handlers, ssl_context=context))  # fmt: skip
        verified = "client certificates required" if settings.tls.ca_file else "no client check"
        logger.info("Storage SCP %s listening with TLS on %s:%d (%s)", titles, address,
                    settings.tls.port, verified)  # fmt: skip
    return StorageServers([s for s in servers if s is not None])

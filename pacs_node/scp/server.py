"""Start and stop the Storage SCP on the configured AE title and port."""

from __future__ import annotations

import logging

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from pacs_node.dicom.validation import ACCEPTED
from pacs_node.ingest import Receiver
from pacs_node.routing import Routing
from pacs_node.scp.handlers import handle_requested, handle_store
from pacs_node.settings import Settings

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


def start_scp(
    settings: Settings, receiver: Receiver, routing: Routing | None = None
) -> ThreadedAssociationServer:
    """Start the SCP in background threads and return its server (``shutdown()`` stops it)."""
    ae = build_ae(settings)
    server = ae.start_server(
        (settings.scp.bind_address, settings.port),
        block=False,
        evt_handlers=[
            (evt.EVT_REQUESTED, handle_requested, [routing or receiver.routing]),
            (evt.EVT_C_STORE, handle_store, [receiver]),
        ],
    )
    assert server is not None
    logger.info(
        "Storage SCP %s listening on %s:%d",
        ", ".join((routing or receiver.routing).ae_titles),
        settings.scp.bind_address,
        settings.port,
    )
    return server

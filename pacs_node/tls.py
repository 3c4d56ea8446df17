"""TLS contexts for DICOM associations (PS3.15 B.1 Secure Transport Connection Profile,
with the BCP 195 floor of TLS 1.2): the node as server on its TLS port, and as client of
destinations reached over TLS."""

from __future__ import annotations

import ssl

from pacs_node.errors import ConfigError
from pacs_node.settings import TlsSettings


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    """The TLS port's context: the node's certificate, and with ``tls.ca_file`` a client
    certificate signed by that CA required of every caller."""
    if tls.cert_file is None or tls.key_file is None:
        raise ConfigError("tls.port needs tls.cert_file and tls.key_file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.ca_file is not None:
            context.load_verify_locations(tls.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls: cannot load the certificate, key or CA: {exc}") from exc
    context.verify_mode = ssl.CERT_REQUIRED if tls.ca_file is not None else ssl.CERT_NONE
    return context


def client_context(tls: TlsSettings) -> ssl.SSLContext:
    """The context of an outgoing TLS association: the peer's certificate checked against
    ``tls.ca_file`` (the system's CAs without one) and its host name; the node's own
    certificate presented when it has one."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context

# The PACS of the demo stack: Debian's Orthanc with its DICOMweb and web viewer plugins.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends orthanc orthanc-dicomweb orthanc-webviewer curl \
    && rm -rf /var/lib/apt/lists/* \
    && usermod --uid 10002 orthanc \
    && mkdir -p /var/lib/orthanc/db \
    && chown -R orthanc:orthanc /var/lib/orthanc /var/log/orthanc
COPY docker/orthanc.json /etc/orthanc/orthanc.json
# The package's orthanc user, given a fixed uid so that the host can resolve it.
USER 10002
EXPOSE 4242 8042
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["sh", "-c", "curl -fsS http://127.0.0.1:8042/system || exit 1"]
CMD ["Orthanc", "/etc/orthanc/orthanc.json"]

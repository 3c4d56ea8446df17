# The PACS of the demo stack: Debian's Orthanc with its DICOMweb and web viewer plugins.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends orthanc orthanc-dicomweb orthanc-webviewer curl \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/orthanc/db && chown -R orthanc:orthanc /var/lib/orthanc
COPY docker/orthanc.json /etc/orthanc/orthanc.json
USER orthanc
EXPOSE 4242 8042
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8042/system || exit 1
CMD ["Orthanc", "/etc/orthanc/orthanc.json"]

#!/usr/bin/env bash
# Install the real test peers from Debian packages when any is missing:
# dcmtk (storescu, echoscu), dicom3tools (dciodvfy), Orthanc with its DICOMweb and web viewer
# plugins, curl, Debian's chromium for the dashboard's browser tests (driven by Playwright),
# and docker-compose to validate docker/compose.yaml (no container engine is needed for that).
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
missing=0
for binary in storescu echoscu dciodvfy Orthanc curl chromium docker-compose; do
    command -v "$binary" >/dev/null 2>&1 || [ -x "/usr/sbin/$binary" ] || missing=1
done
ls /usr/share/orthanc/plugins*/libOrthancDicomWeb.so >/dev/null 2>&1 || missing=1
ls /usr/share/orthanc/plugins*/libOrthancWebViewer.so >/dev/null 2>&1 || missing=1
if [ "$missing" -eq 1 ]; then
    echo "installing test peers: dcmtk dicom3tools orthanc orthanc-dicomweb orthanc-webviewer curl chromium docker-compose"
    $SUDO apt-get update -qq
    # The Orthanc package tries to start its own service; the tests start their own instance.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        dcmtk dicom3tools orthanc orthanc-dicomweb orthanc-webviewer curl chromium \
        docker-compose >/dev/null
fi

#!/usr/bin/env bash
# Debian packages the test suite needs beyond Python: Chromium (the lineage report is rendered in
# headless Chromium), PostgreSQL (scripts/services.sh), OpenJPEG's libopenjp2 (glymur calls it to
# decode JPEG 2000 DICOM at a reduced resolution; without it ingest decodes in full) and Orthanc with
# its DICOMweb plugin (the PACS of `medimg serve`, started by scripts/services.sh). Installs only
# what is missing. Run by `scripts/services.sh start` and by `make test`.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
/sbin/ldconfig -p 2>/dev/null | grep 'libopenjp2\.so\.7' >/dev/null || missing+=(libopenjp2-7)
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || missing+=(orthanc)
ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so >/dev/null 2>&1 || missing+=(orthanc-dicomweb)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

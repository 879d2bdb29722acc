#!/usr/bin/env bash
# Install what a fresh Debian/Ubuntu machine lacks for whisper-askd, into ./.venv. Idempotent.
#   apt: FFmpeg 5.1 shared libraries (torchcodec decodes audio through them), espeak-ng + flite + sox (voices),
#        fortunes (the embedded corpus's sentence source), git, the Asterisk English prompts (test_real: real
#        human speech, 16 kHz G.722 audio + transcripts, CC-BY-SA 3.0).
#   pip: requirements.txt (exact pins) constrained by constraints.txt (the whole resolved set).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(libavcodec59 libavformat59 libavutil57 libavdevice59 libavfilter8 libswscale6 libswresample4
              espeak-ng flite sox fortunes fortunes-min git asterisk-core-sounds-en-g722 asterisk-core-sounds-en)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo ">> apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  echo ">> creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import components, prefect, dvc, transformers, piper, torchcodec" 2>/dev/null \
   || [ requirements.txt -nt .venv/.installed ] || [ constraints.txt -nt .venv/.installed ]; then
  echo ">> pip install -r requirements.txt"
  .venv/bin/python -m pip install -q -U pip
  .venv/bin/python -m pip install -q -r requirements.txt -c constraints.txt
  touch .venv/.installed
fi
echo ">> environment ready: $(.venv/bin/python --version), torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"

#!/usr/bin/env bash
# Create .venv and install corefm with its pinned dependencies, plus the Debian packages that
# hold the offline demo data (Fashion-MNIST, spoken digits, a speech synthesiser, an MP3
# encoder, WordNet 3.0 for CatLIP's caption labels) and the launchers the scale-out tests start
# for real (pdsh + an ssh server for DeepSpeed's hostfile launcher; SLURM's controller, node
# daemon, client and munge). Nothing is started here: the tests run their own daemons on private
# ports. Idempotent: a second call with nothing changed returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."
APT_PACKAGES=(dataset-fashion-mnist asterisk-core-sounds-en-wav espeak-ng lame wordnet-base
              pdsh openssh-server openssh-client slurmd slurmctld slurm-client munge)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "corefm: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.corefm-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ launch/setup.sh -nt "$stamp" ]; then
  echo "corefm: installing into .venv (torch, deepspeed, open_clip, transformers, lm-eval; a few minutes)"
  .venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "is ignored" || true
  # facenet-pytorch carries MTCNN's trained weights (the mtcnn-face pseudo-label expert); its own pins
  # ask for torch 2.2 and numpy < 2, so it comes without them and runs on the torch above
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps facenet-pytorch==2.6.0
  .venv/bin/python -c "import corefm, torch, deepspeed, open_clip, transformers, facenet_pytorch" \
    || { echo "corefm: the install failed (see pip's output above)"; exit 1; }
  touch "$stamp"
fi

#!/usr/bin/env bash
# Create .venv and install the whole toolkit into it (editable, with test extras).
# Idempotent: when nothing that affects the install changed, it returns in well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
stamp="$venv/.tbi-setup"
want=$(cat scripts/setup.sh pyproject.toml packages/*/pyproject.toml packages/merging/setup.py packages/merging/src/tbi_merging/*.c | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

# Debian packages: a Hangul font for the synthetic data (Pillow's default font draws boxes), and Java for
# the METEOR 1.5 and PTB-tokenizer jars that pycocoevalcap ships (the `coco` METEOR variant).
debs=()
[ -f /usr/share/fonts/truetype/nanum/NanumGothic.ttf ] || debs+=(fonts-nanum)
command -v java >/dev/null 2>&1 || debs+=(default-jre-headless)
command -v cc >/dev/null 2>&1 || debs+=(gcc)  # tbi-merging's C kernels are built at install
if [ ${#debs[@]} -gt 0 ]; then
    echo "setup: installing Debian packages ${debs[*]}"
    sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${debs[@]}" >/dev/null
fi

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip="$venv/bin/python -m pip"
$pip install -q --upgrade "pip>=25.1"

# Without a GPU take the CPU build that lies on disk: a bare `torch` requirement pulls a multi-GB CUDA build.
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    $pip install -q "torch>=2.5"
else
    $pip install -q "torch==2.13.0"
fi

# All six packages at once so pip resolves tbi-train's dependencies on the other five locally.
# triton is installed for the kernel tests (interpreter mode on the CPU); deepspeed for the scale-out tests.
$pip install -q --group dev \
    -e "packages/vision-rope[test,triton,hf]" \
    -e "packages/projectors[test]" \
    -e "packages/merging[test]" \
    -e "packages/mole[test,hf]" \
    -e "packages/evalbench[test]" \
    -e "packages/train-cli[test,deepspeed]"

echo "$want" > "$stamp"
echo "setup: done ($venv)"

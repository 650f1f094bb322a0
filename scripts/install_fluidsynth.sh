#!/usr/bin/env bash
# FluidSynth and a General MIDI SoundFont, the composer's audio renderer (encore.composer.midi.render_wav):
# Debian's libfluidsynth3 and fluid-soundfont-gm (FluidR3_GM.sf2, MIT licence). Installs them where
# apt-get exists and may be used (as root, or through sudo without a password) and otherwise says
# what to run: without them every render comes from the built-in synthesiser. A no-op, in
# milliseconds, once they are installed. Used by `make install`, infra/docker/Dockerfile and cluster.yaml.
set -euo pipefail

PACKAGES=(libfluidsynth3 fluid-soundfont-gm)

if dpkg -s "${PACKAGES[@]}" >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    as_root=""
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as_root="sudo -n"
else
    as_root="cannot"
fi
if [ "$as_root" = cannot ] || ! command -v apt-get >/dev/null; then
    cat >&2 <<MESSAGE
note: FluidSynth is not installed, so the composer renders audio with its built-in synthesiser.
For instrument sounds, install libfluidsynth and a General MIDI SoundFont; on Debian or Ubuntu:
    sudo apt-get install --no-install-recommends ${PACKAGES[*]}
elsewhere libfluidsynth from the system's package manager, and ENCORE_SOUNDFONT naming a GM .sf2 file
(README.md, "MIDI and audio").
MESSAGE
    exit 0
fi
$as_root apt-get update -qq
$as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"

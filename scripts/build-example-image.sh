#!/usr/bin/env bash
# Builds the example challenge's container image locally, with no registry
# and nothing pulled: the `quiz-challenge` binary plus exactly the shared
# libraries `ldd` reports (and the dynamic loader) on an empty `FROM scratch`
# base, so CI machines without network access can still run real challenge
# containers on their Docker engine.
#
# Usage: scripts/build-example-image.sh [--release] [TAG]
#   TAG defaults to base.local/quiz-challenge:<crate version> (0.1.0).
#   --release builds with the release profile (default: the dev profile).
#
# The image runs as uid/gid 65534 (nobody) with /data owned by it, so a
# named volume mounted at /data (as Swarm does) starts out writable.
set -euo pipefail

die() { echo "build-example-image: $*" >&2; exit 1; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

profile_flag=()
profile_dir=debug
tag=""
for arg in "$@"; do
    case "$arg" in
        --release) profile_flag=(--release); profile_dir=release ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option '$arg' (try --help)" ;;
        *) [[ -z "$tag" ]] || die "more than one tag given"; tag="$arg" ;;
    esac
done

# The version the image reports in /version; labels and the default tag use it.
version="$(cargo pkgid -p quiz-challenge | sed 's/.*[#@]//')"
[[ -n "$version" ]] || die "cannot read the quiz-challenge version"
tag="${tag:-base.local/quiz-challenge:${version}}"

command -v docker >/dev/null || die "docker is not installed"
command -v ldd >/dev/null || die "ldd is not installed"

cargo build -p quiz-challenge "${profile_flag[@]}"
bin="${CARGO_TARGET_DIR:-$root/target}/${profile_dir}/quiz-challenge"
[[ -x "$bin" ]] || die "built binary not found at $bin"

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
rootfs="$ctx/rootfs"
# /data is added on its own so that it, not only its contents, gets the owner.
mkdir -p "$rootfs/usr/local/bin" "$rootfs/tmp" "$ctx/data"
chmod 1777 "$rootfs/tmp"
cp "$bin" "$rootfs/usr/local/bin/quiz-challenge"

# Every library ldd resolves ("name => /path (addr)") and the loader (a bare
# absolute path); the vDSO has no file. Copied with symlinks followed, at
# the path the binary and the loader look for them.
libs=()
while read -r line; do
    case "$line" in
        *"not found"*) die "unresolved library: $line" ;;
        *"=> /"*) libs+=("$(awk '{print $3}' <<<"$line")") ;;
        /*) libs+=("$(awk '{print $1}' <<<"$line")") ;;
    esac
done < <(ldd "$bin" 2>/dev/null || true)
for lib in "${libs[@]}"; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
done

cat >"$ctx/Dockerfile" <<EOF
FROM scratch
COPY rootfs/ /
COPY --chown=65534:65534 data /data
USER 65534:65534
WORKDIR /data
EXPOSE 8000
LABEL org.opencontainers.image.title="quiz-challenge" \\
      org.opencontainers.image.description="Example BASE challenge" \\
      org.opencontainers.image.version="${version}"
ENTRYPOINT ["/usr/local/bin/quiz-challenge"]
EOF

echo "build-example-image: ${#libs[@]} libraries: ${libs[*]:-none}" >&2
docker build --tag "$tag" "$ctx"
echo "$tag"

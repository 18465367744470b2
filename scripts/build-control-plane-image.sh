#!/usr/bin/env bash
# Builds the control-plane image locally, with no registry and nothing
# pulled: one static `base-server` executable (glibc with `crt-static`) on
# an empty `FROM scratch` base. The installer's master and broker services
# run it (`base-server master` / `base-server broker`). Prints the image ID,
# which is what `base master install --image` should be given (an ID pins
# the exact build; a tag can move).
#
# Usage: scripts/build-control-plane-image.sh [TAG]
#   TAG defaults to base.local/base-server:<crate version>.
#
# Debug profile (the one CI builds): only the final binary is relinked
# with the static flags, the workspace is not compiled a second time.
#
# Static glibc and DNS: getaddrinfo in a static glibc binary still tries to
# dlopen NSS modules for `hosts: files dns`; with no /etc/nsswitch.conf and
# no libnss_* in the image, glibc falls back to its built-in "dns [!UNAVAIL=return] files"
# order, which uses the resolver compiled into the binary and Docker's
# embedded DNS (127.0.0.11 from /etc/resolv.conf). NOT YET VERIFIED: no
# test has resolved a Swarm service name from this image (issue 14's
# end-to-end test is still open); if it fails, ship the ldd libraries as
# scripts/build-example-image.sh does. See docs/install.md.
set -euo pipefail

die() { echo "build-control-plane-image: $*" >&2; exit 1; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

tag=""
for arg in "$@"; do
    case "$arg" in
        -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option '$arg' (try --help)" ;;
        *) [[ -z "$tag" ]] || die "more than one tag given"; tag="$arg" ;;
    esac
done

version="$(cargo pkgid -p base-server | sed 's/.*[#@]//')"
[[ -n "$version" ]] || die "cannot read the base-server version"
tag="${tag:-base.local/base-server:${version}}"
command -v docker >/dev/null || die "docker is not installed"

cargo rustc --quiet -p base-server --bin base-server -- -C target-feature=+crt-static >&2
bin="${CARGO_TARGET_DIR:-$root/target}/debug/base-server"
[[ -x "$bin" ]] || die "built binary not found at $bin"
# A static-pie binary makes ldd answer "statically linked" with status 0;
# any resolved library ("=>") means it is dynamic.
if ldd "$bin" 2>/dev/null | grep -q '=>'; then
    die "$bin is not static"
fi

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/tmp" "$ctx/rootfs/etc"
chmod 1777 "$ctx/rootfs/tmp"
cp "$bin" "$ctx/rootfs/usr/local/bin/base-server"
# DNS first, then files: the order glibc would use anyway, written down so
# a reader of the image sees it.
printf 'hosts: dns files\n' >"$ctx/rootfs/etc/nsswitch.conf"

cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM scratch
COPY rootfs/ /
EXPOSE 18080 18082
LABEL org.opencontainers.image.title="base-server" \\
      org.opencontainers.image.description="BASE control plane (master, broker)" \\
      org.opencontainers.image.version="${version}"
ENTRYPOINT ["/usr/local/bin/base-server"]
DOCKERFILE

docker build --quiet --tag "$tag" "$ctx" >&2
docker image inspect --format '{{.Id}}' "$tag"

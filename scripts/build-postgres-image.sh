#!/usr/bin/env bash
# Builds BASE's PostgreSQL server image locally, with no registry and nothing
# pulled: Debian's postgresql-15 binaries, share files and extension modules,
# plus exactly the shared libraries `ldd` reports for them, and dash for the
# entrypoint (deploy/postgres/entrypoint.sh), on an empty `FROM scratch` base.
# The installer deploys it as the control-plane database when the operator
# gives no PostgreSQL URL (docs/postgres-image.md has the contract).
#
# Usage: scripts/build-postgres-image.sh [TAG]
#   TAG defaults to base.local/postgres:15.
#   Installs postgresql-15 with apt-get first if it is missing (needs root).
#
# The image runs as uid/gid 999 (postgres), keeps its cluster under the
# volume at /var/lib/postgresql/data, and prints its size when done.
set -euo pipefail

die() { echo "build-postgres-image: $*" >&2; exit 1; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tag=""
for arg in "$@"; do
    case "$arg" in
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option '$arg' (try --help)" ;;
        *) [[ -z "$tag" ]] || die "more than one tag given"; tag="$arg" ;;
    esac
done
tag="${tag:-base.local/postgres:15}"

command -v docker >/dev/null || die "docker is not installed"
command -v ldd >/dev/null || die "ldd is not installed"

pgbin=/usr/lib/postgresql/15/bin
pglib=/usr/lib/postgresql/15/lib
pgshare=/usr/share/postgresql/15
if [[ ! -x "$pgbin/postgres" ]]; then
    echo "build-postgres-image: postgresql-15 is not installed; installing it with apt-get" >&2
    [[ "$(id -u)" -eq 0 ]] || die "postgresql-15 is missing and installing it needs root (run: apt-get install postgresql-15)"
    apt-get install -y --no-install-recommends postgresql-15 >&2 || die "apt-get install postgresql-15 failed"
fi
version="$("$pgbin/postgres" --version | awk '{print $3}')"
[[ -n "$version" ]] || die "cannot read the PostgreSQL version"

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
rootfs="$ctx/rootfs"
mkdir -p "$rootfs$pgbin" "$rootfs$pglib" "$rootfs/usr/share/postgresql" \
    "$rootfs/usr/share/zoneinfo" "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp" \
    "$ctx/owned/var/run/postgresql" "$ctx/owned/var/lib/postgresql/data"
chmod 1777 "$rootfs/tmp"

# Only the programs the entrypoint and the health check run: the server,
# initdb (which runs the server itself) and pg_isready. Clients (psql,
# pg_dump) stay out: backups run them from the host or another container.
for prog in postgres initdb pg_isready; do
    cp -L "$pgbin/$prog" "$rootfs$pgbin/$prog"
done
# Extension modules and encoding conversions (initdb loads several), but not
# the LLVM JIT: llvmjit.so pulls in libLLVM (~100 MB) and JIT is off (jit = off).
for f in "$pglib"/*.so; do
    case "$(basename "$f")" in llvmjit*) continue ;; esac
    cp -L "$f" "$rootfs$pglib/"
done
cp -a "$pgshare" "$rootfs/usr/share/postgresql/"
# Debian builds PostgreSQL against the system time zone database; the
# right/ and posix/ duplicates are left out (2 MB instead of 6).
tar -C /usr/share/zoneinfo --exclude=./right --exclude=./posix -cf - . | tar -C "$rootfs/usr/share/zoneinfo" -xf -
cp -L /bin/dash "$rootfs/bin/sh"
cp -L /bin/rm /bin/mv "$rootfs/bin/"
mkdir -p "$rootfs/usr/local/bin"
cp "$root/deploy/postgres/entrypoint.sh" "$rootfs/usr/local/bin/base-postgres-entrypoint"
chmod 0755 "$rootfs/usr/local/bin/base-postgres-entrypoint"
# initdb and the server look up their own uid's name: they refuse to run
# without a passwd entry.
echo "postgres:x:999:999:PostgreSQL:/var/lib/postgresql:/bin/false" >"$rootfs/etc/passwd"
echo "postgres:x:999:" >"$rootfs/etc/group"

# Every library ldd resolves for every copied ELF file ("name => /path
# (addr)") and the loader (a bare absolute path); the vDSO has no file.
declare -A libs=()
while IFS= read -r -d '' elf; do
    while read -r line; do
        case "$line" in
            *"not found"*)
                # Extension modules resolve the server's own symbols at load
                # time, never as libraries; any other missing library is fatal.
                die "unresolved library for $elf: $line" ;;
            *"=> /"*) libs["$(awk '{print $3}' <<<"$line")"]=1 ;;
            /*) libs["$(awk '{print $1}' <<<"$line")"]=1 ;;
        esac
    done < <(ldd "$elf" 2>/dev/null || true)
done < <(find "$rootfs$pgbin" "$rootfs$pglib" "$rootfs/bin" -type f -print0)
for lib in "${!libs[@]}"; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
done

cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM scratch
COPY rootfs/ /
# The socket directory and the volume's mount point belong to the server's
# user; a new named volume copies this owner (and mode) on first mount.
COPY --chown=999:999 owned/ /
ENV PATH=$pgbin:/bin TZ=UTC LANG=C
USER 999:999
EXPOSE 5432
VOLUME /var/lib/postgresql/data
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \\
    CMD ["$pgbin/pg_isready", "--host=127.0.0.1", "--port=5432", "--username=base", "--dbname=base", "--quiet"]
LABEL org.opencontainers.image.title="base-postgres" \\
      org.opencontainers.image.description="PostgreSQL ${version} for the BASE control plane, built from Debian's packages" \\
      org.opencontainers.image.version="${version}"
ENTRYPOINT ["/usr/local/bin/base-postgres-entrypoint"]
DOCKERFILE

echo "build-postgres-image: PostgreSQL ${version}, ${#libs[@]} libraries" >&2
docker build --quiet --tag "$tag" "$ctx" >&2
size="$(docker image inspect --format '{{.Size}}' "$tag")"
echo "build-postgres-image: $tag is $((size / 1024 / 1024)) MB" >&2
echo "$tag"

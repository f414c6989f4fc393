#!/usr/bin/env bash
# Print, or write, the current digests of the base images the Dockerfile and compose file pin.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: bash deploy/pin-images.sh [--write]

deploy/Dockerfile and deploy/compose.yaml name every image as TAG@sha256:DIGEST: Docker
then uses exactly those bytes, whatever the tag points to later. This asks the registry what
each tag points to now (docker buildx imagetools inspect: the multi-platform index digest)
and prints the pins that differ; --write puts them into both files. Review the image's
release notes, rebuild, run the tests, then commit.

Examples:
  bash deploy/pin-images.sh            # what would change
  bash deploy/pin-images.sh --write    # move the pins to the tags' current digests
USAGE
}

write=no
case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    --write) write=yes ;;
    "") ;;
    *) echo "pin-images.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
esac

cd "$(dirname "$0")"
files=(Dockerfile compose.yaml)
command -v docker >/dev/null || { echo "pin-images.sh: docker is needed" >&2; exit 1; }
refs=$(grep -ohE '[a-z0-9./_-]+:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}' "${files[@]}" | sort -u)
changed=0
for ref in $refs; do
    tag=${ref%@*}
    digest=$(docker buildx imagetools inspect "$tag" --format '{{json .Manifest}}' \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["digest"])') \
        || { echo "pin-images.sh: cannot resolve $tag (registry reachable? logged in?)" >&2; exit 1; }
    [ "$ref" = "$tag@$digest" ] && continue
    changed=1
    echo "$ref -> $tag@$digest"
    [ "$write" = yes ] && sed -i "s|$ref|$tag@$digest|g" "${files[@]}"
done
[ "$changed" = 1 ] || echo "pin-images.sh: every pin is the tag's current digest"

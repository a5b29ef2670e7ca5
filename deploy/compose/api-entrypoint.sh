#!/bin/sh
# Entrypoint of the api service in docker-compose.yml: `api-entrypoint.sh fsfm serve`.
#
# In the container the service listens on 0.0.0.0, as publishing a port needs; who can reach it is
# decided by the address compose publishes the ports on, FSFM_PUBLISH_ADDRESS (default 127.0.0.1).
# - Published on loopback: this host only (and the compose network). Serving without API keys is the
#   local trial, so FSFM_ALLOW_NO_AUTH=1 is set for the service's own start-up check.
# - Published on any other address without FSFM_API_KEYS: refused (exit 78, EX_CONFIG) unless
#   FSFM_ALLOW_NO_AUTH is true (1/true/yes/on), the one documented opt-out (docs/scaling.md).
set -eu

truthy() {
  case "$1" in 1 | true | TRUE | True | yes | YES | on | ON) return 0 ;; *) return 1 ;; esac
}

address="${FSFM_PUBLISH_ADDRESS:-127.0.0.1}"
if [ -z "${FSFM_API_KEYS:-}" ]; then
  case "$address" in
    127.* | localhost | ::1 | "[::1]")
      export FSFM_ALLOW_NO_AUTH=1
      ;;
    *)
      if ! truthy "${FSFM_ALLOW_NO_AUTH:-}"; then
        echo "fsfm api: refusing to serve without API keys on $address (FSFM_PUBLISH_ADDRESS):" \
          "set FSFM_API_KEYS, publish on 127.0.0.1, or set FSFM_ALLOW_NO_AUTH=1 to serve unauthenticated" >&2
        exit 78
      fi
      ;;
  esac
fi
exec "$@"

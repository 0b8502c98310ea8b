#!/usr/bin/env bash
# Regenerates openapi/openapi.json from the document the service serves at /swagger/v1/swagger.json.
# The contract test (OperationsTests.Served_openapi_document_equals_the_checked_in_one) fails until
# the regenerated file is committed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BLOCKMIRROR_UPDATE_OPENAPI=1 dotnet test tests/BlockMirror.Api.Tests \
  --filter "FullyQualifiedName~Served_openapi_document_equals_the_checked_in_one" "$@"
echo "openapi/openapi.json regenerated"

"""orjson-rendered JSON responses (faster than the stdlib encoder on every answer we build by hand)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse

from gateway.errors import PROBLEM_MEDIA_TYPE


class FastJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class ProblemResponse(FastJSONResponse):
    media_type = PROBLEM_MEDIA_TYPE

"""The sandbox's fixed workspaces, projects and models, in the spec's shapes.

floraq only reads these (to check a key or show where runs go); they never change.
"""

from __future__ import annotations

from typing import Any

WORKSPACE_ID = "ws_sandbox01"
_CREATED = 1767225600000  # 2026-01-01T00:00:00Z, epoch ms

WORKSPACES: list[dict[str, Any]] = [
    {
        "workspace_id": WORKSPACE_ID,
        "name": "Sandbox Studio",
        "created_at": _CREATED,
        "role": "owner",
    },
]

PROJECTS: dict[str, list[dict[str, Any]]] = {
    WORKSPACE_ID: [
        {
            "project_id": "prj_sandbox01",
            "name": "Spring Campaign",
            "workspace_id": WORKSPACE_ID,
            "origin": "api",
            "last_modified": _CREATED + 86_400_000,
            "created_at": _CREATED,
        },
        {
            "project_id": "prj_sandbox02",
            "name": "Product Catalog",
            "workspace_id": WORKSPACE_ID,
            "origin": None,
            "last_modified": None,
            "created_at": _CREATED + 3_600_000,
        },
    ],
}

MODEL_TYPES = ("image", "video", "audio", "text")

MODELS: list[dict[str, Any]] = [
    {
        "model_id": "t2i-sandbox-pro",
        "name": "Sandbox Image Pro",
        "type": "image",
        "provider": "floraq sandbox",
        "capabilities": ["text-to-image", "image-to-image"],
        "estimated_credits": 4,
        "estimated_seconds": 12,
        "params": [
            {"name": "prompt", "type": "string", "required": True, "label": "Prompt"},
            {
                "name": "aspect_ratio",
                "type": "string",
                "required": False,
                "default": "1:1",
                "options": [
                    {"label": "Square", "value": "1:1"},
                    {"label": "Wide", "value": "16:9"},
                ],
            },
            {"name": "seed", "type": "seed", "required": False},
        ],
    },
    {
        "model_id": "t2i-sandbox-fast",
        "name": "Sandbox Image Fast",
        "type": "image",
        "provider": "floraq sandbox",
        "capabilities": ["text-to-image"],
        "estimated_credits": 1,
        "estimated_seconds": 4,
        "params": [{"name": "prompt", "type": "string", "required": True}],
        "beta": True,
    },
    {
        "model_id": "i2v-sandbox",
        "name": "Sandbox Video",
        "type": "video",
        "provider": "floraq sandbox",
        "capabilities": ["image-to-video"],
        "estimated_credits": 40,
        "estimated_seconds": 45,
        "params": [
            {"name": "prompt", "type": "string", "required": True},
            {
                "name": "duration",
                "type": "int",
                "required": False,
                "default": 5,
                "min": 2,
                "max": 10,
            },
        ],
    },
    {
        "model_id": "tts-sandbox",
        "name": "Sandbox Voice",
        "type": "audio",
        "provider": "floraq sandbox",
        "capabilities": ["text-to-speech"],
        "estimated_credits": 2,
        "estimated_seconds": 8,
        "params": [{"name": "text", "type": "string", "required": True}],
    },
]

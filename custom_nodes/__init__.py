"""The project's own ComfyUI node pack, installed on every pool server.

The walking skeleton needs no node of its own (its templates use core nodes only), so the pack
registers none yet; the parameter and MinIO nodes arrive with the MinIO issue.
"""

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

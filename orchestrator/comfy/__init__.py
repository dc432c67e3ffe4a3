"""Talking to ComfyUI servers: the HTTP/websocket client and the local worker process."""

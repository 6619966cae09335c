"""Sends one message through veilgate with the official Anthropic SDK.

usage: anthropic_messages.py BASE_URL [VEILGATE_TOKEN]
Prints the assistant's text. With a token, the SDK sends it in
x-veilgate-token (a client of veilgate's [[clients]]).
"""
import sys

import anthropic

headers = {"x-veilgate-token": sys.argv[2]} if len(sys.argv) > 2 else None
client = anthropic.Anthropic(
    base_url=sys.argv[1], api_key="sk-ant-test-key", max_retries=0, timeout=30, default_headers=headers
)
message = client.messages.create(
    model="claude-sonnet-4-5",
    max_tokens=64,
    messages=[{"role": "user", "content": "Say hello"}],
)
print(message.content[0].text)

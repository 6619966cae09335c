"""Sends one message through veilgate with the official Anthropic SDK.

usage: anthropic_messages.py BASE_URL [VEILGATE_TOKEN]
Prints the assistant's text. With a token, the SDK sends it in
x-veilgate-token (a client of veilgate's [[clients]]); with key:TOKEN, as
its API key (a preset whose keys veilgate holds).
"""
import sys

import anthropic

token = sys.argv[2] if len(sys.argv) > 2 else None
api_key = token[4:] if token and token.startswith("key:") else "sk-ant-test-key"
headers = {"x-veilgate-token": token} if token and not token.startswith("key:") else None
client = anthropic.Anthropic(base_url=sys.argv[1], api_key=api_key, max_retries=0, timeout=30, default_headers=headers)
message = client.messages.create(
    model="claude-sonnet-4-5",
    max_tokens=64,
    messages=[{"role": "user", "content": "Say hello"}],
)
print(message.content[0].text)

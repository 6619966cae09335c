"""Sends one message through veilgate with the official Anthropic SDK.

usage: anthropic_messages.py BASE_URL
Prints the assistant's text.
"""
import sys

import anthropic

client = anthropic.Anthropic(base_url=sys.argv[1], api_key="sk-ant-test-key", max_retries=0, timeout=30)
message = client.messages.create(
    model="claude-sonnet-4-5",
    max_tokens=64,
    messages=[{"role": "user", "content": "Say hello"}],
)
print(message.content[0].text)

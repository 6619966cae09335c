"""Streams one message through veilgate with the official Anthropic SDK.

usage: anthropic_stream.py BASE_URL [VEILGATE_TOKEN]
Prints the streamed text, then the final message's stop reason and output
tokens. With a token, the SDK sends it in x-veilgate-token; key:TOKEN as
its API key (veilgate_args.py).
"""
import sys

import anthropic
from veilgate_args import credentials

api_key, headers = credentials(sys.argv, "sk-ant-test-key")
client = anthropic.Anthropic(base_url=sys.argv[1], api_key=api_key, max_retries=0, timeout=30, default_headers=headers)
with client.messages.stream(
    model="claude-sonnet-4-5",
    max_tokens=64,
    messages=[{"role": "user", "content": "Write a line of poetry"}],
) as stream:
    text = "".join(stream.text_stream)
    final = stream.get_final_message()
print(text)
print(final.stop_reason, final.usage.output_tokens)

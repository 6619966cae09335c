"""Streams a chat completion through veilgate with the official OpenAI SDK,
as a client of veilgate's [[clients]], without asking for usage.

usage: openai_stream.py BASE_URL VEILGATE_TOKEN
Prints the text, then the number of chunks that carried usage. The SDK
sends the token in x-veilgate-token; key:TOKEN as its API key
(veilgate_args.py).
"""
import sys

import openai
from veilgate_args import credentials

api_key, headers = credentials(sys.argv, "sk-test-sdk-key")
client = openai.OpenAI(base_url=sys.argv[1], api_key=api_key, max_retries=0, timeout=30, default_headers=headers)
text, with_usage = [], 0
for chunk in client.chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "Say hello"}],
    stream=True,
):
    if chunk.usage is not None:
        with_usage += 1
    for choice in chunk.choices:
        if choice.delta.content:
            text.append(choice.delta.content)
print("".join(text))
print(with_usage)

"""Streams a chat completion through veilgate with the official OpenAI SDK,
as a client of veilgate's [[clients]], without asking for usage.

usage: openai_stream.py BASE_URL VEILGATE_TOKEN
Prints the text, then the number of chunks that carried usage.
"""
import sys

import openai

client = openai.OpenAI(
    base_url=sys.argv[1],
    api_key="sk-test-sdk-key",
    max_retries=0,
    timeout=30,
    default_headers={"x-veilgate-token": sys.argv[2]},
)
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

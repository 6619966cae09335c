"""Calls a chat completion through veilgate with the official OpenAI SDK.

usage: openai_chat.py BASE_URL [VEILGATE_TOKEN]
Prints the assistant's reply. With a token, the SDK sends it in
x-veilgate-token (a client of veilgate's [[clients]]).
"""
import sys

import openai

headers = {"x-veilgate-token": sys.argv[2]} if len(sys.argv) > 2 else None
client = openai.OpenAI(
    base_url=sys.argv[1], api_key="sk-test-sdk-key", max_retries=0, timeout=30, default_headers=headers
)
reply = client.chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "Say hello"}],
)
print(reply.choices[0].message.content)
